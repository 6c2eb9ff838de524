"""Findings generation training of HookedMaira2's projector and language model (teacher forcing).

The loss is next-token cross-entropy on the report positions only (what MAIRA-2 is trained to
write), weighted per token by :class:`DemoTrainingSet`. Logits are computed for those positions
only: the prompt is ~80 % of each sequence and its logits would be thrown away.

Both stages run the fixed-step AdamW loop of :mod:`sae_lens_maira.training.loop` (linear
warm-up, cosine decay on ``step / steps``, never elapsed time); what is MAIRA-2-specific stays
here: the losses, the parameter groups, the projector's initialisation and scale constraint.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import torch
import torch.nn.functional as F

from sae_lens_maira.demo.training_data import DemoTrainingSet, ReportStream
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.model.weight_conversion import ZERO_FILLED
from sae_lens_maira.training.loop import TrainingHistory, run_training

#: Frozen like MAIRA-2's RAD-DINO: never trained by these stages, kept in eval mode.
FROZEN = ("vision_tower",)


@torch.no_grad()
def init_projector(model: HookedMaira2, pixels: torch.Tensor, *, seed: int = 0) -> dict[str, float]:
    """Initialise the projector so image tokens start at the scale of text embeddings.

    With PyTorch's default init the projected features come out tens of times larger than the
    text embeddings (std 0.02), and the language model learns to treat image tokens as constant
    (the prototype's failure). Hidden layers get He init (signal-preserving through GELU); the
    last layer is then rescaled on real images so the projected tokens' RMS equals the RMS of
    the text embedding rows.
    """
    gen = torch.Generator().manual_seed(seed)
    linears = [m for m in model.multi_modal_projector.layers if isinstance(m, torch.nn.Linear)]
    for i, lin in enumerate(linears):
        gain = 2.0 if i < len(linears) - 1 else 1.0
        lin.weight.normal_(0.0, math.sqrt(gain / lin.in_features), generator=gen)
        lin.bias.zero_()
    was_training = model.training
    model.eval()
    projected = model.encode_images(pixels)
    text_rms = model.embed.W_E.pow(2).mean(-1).sqrt().mean()
    image_rms = projected.pow(2).mean(-1).sqrt().mean()
    scale = float(text_rms / image_rms.clamp(min=1e-8))
    linears[-1].weight.mul_(scale)
    model.train(was_training)
    return {"text_rms": float(text_rms), "image_rms_before": float(image_rms), "scale": scale}


class ImageScale:
    """Keep projected image tokens at the scale of the text embeddings during training.

    Under RMSNorm the scale of the image tokens barely changes what the language model computes,
    so Adam lets it drift (a random walk, to ~100x the text embeddings in a few hundred steps);
    image positions then dominate the residual stream, which would swamp an SAE's
    reconstruction loss. After every step the projector's last layer is rescaled so the image
    tokens of a fixed reference batch have the text embeddings' mean RMS (projected gradient
    descent onto that constraint). The tower is frozen, so its features are computed once.
    """

    def __init__(self, model: HookedMaira2, pixels: torch.Tensor) -> None:
        from sae_lens_maira.demo.vision_pretraining import tower_patch_features

        self.model = model
        with torch.no_grad():
            self.features = tower_patch_features(model, pixels)
        self.last = [
            m for m in model.multi_modal_projector.layers if isinstance(m, torch.nn.Linear)
        ][-1]

    @torch.no_grad()
    def __call__(self) -> float:
        image_rms = self.model.multi_modal_projector(self.features).pow(2).mean(-1).sqrt().mean()
        text_rms = self.model.embed.W_E.pow(2).mean(-1).sqrt().mean()
        scale = float(text_rms / image_rms.clamp(min=1e-12))
        self.last.weight.mul_(scale)
        self.last.bias.mul_(scale)
        return scale


def report_loss(model: HookedMaira2, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Weighted next-token loss on the scored (report) positions of a right-padded batch."""
    resid = model(
        batch["input_ids"],
        pixel_values=batch["pixel_values"],
        attention_mask=batch["attention_mask"],
        stop_at_layer=model.cfg.n_layers,
    )
    w = batch["target_weights"]
    keep = w > 0
    h = resid[:, :-1][keep]
    logits = model.unembed(model.ln_final(h[None]))[0]
    targets = batch["input_ids"][:, 1:][keep]
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    return (ce * w[keep]).sum() / w[keep].sum()


def _param_groups(
    model: HookedMaira2, lr: float, projector_lr: float, weight_decay: float,
    projector_weight_decay: float = 0.0,
) -> list[dict]:  # fmt: skip
    projector = list(model.multi_modal_projector.parameters())
    proj_ids = {id(p) for p in projector}
    tower_ids = {id(p) for p in model.vision_tower.parameters()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if ZERO_FILLED.search(name):
            # TransformerLens's bias slots do not exist in MAIRA-2 (LLaMA has no biases) and are
            # not saved: they must stay zero for the checkpoint to mean what was trained
            p.requires_grad_(False)
        if id(p) in proj_ids or id(p) in tower_ids or not p.requires_grad:
            continue
        # norms and biases are not decayed (the usual LLaMA recipe)
        (no_decay if p.ndim < 2 or name.endswith((".w", ".b")) else decay).append(p)
    return [
        {"params": decay, "lr": lr, "base_lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "base_lr": lr, "weight_decay": 0.0},
        # decayed: image-token scale is free under RMSNorm, and unchecked it drifts far above
        # the text embeddings (which would swamp an SAE's reconstruction loss)
        {
            "params": projector,
            "lr": projector_lr,
            "base_lr": projector_lr,
            "weight_decay": projector_weight_decay,
        },  # fmt: skip
    ]


def text_loss(model: HookedMaira2, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Next-token loss on every position of packed report text (no images, no padding)."""
    tokens = batch["input_ids"]
    # an explicit all-ones mask: packed text has no padding (EOS doubles as pad in our tokenizer)
    resid = model(tokens, attention_mask=torch.ones_like(tokens), stop_at_layer=model.cfg.n_layers)
    logits = model.unembed(model.ln_final(resid[:, :-1]))
    return F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())


def pretrain_on_reports(
    model: HookedMaira2,
    stream: ReportStream,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    warmup_steps: int = 10,
    weight_decay: float = 0.01,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainingHistory:
    """Language-model pretraining on report text alone (the small model's "Vicuna" stage).

    Packed sequences score every token, ~5x more report tokens per second than findings prompts
    (where images and boilerplate fill ~80 % of each sequence), so the language is learnt here
    and the multimodal stage can spend its steps on reading the image.
    """
    rng = random.Random(seed)
    groups = _param_groups(model, lr, 0.0, weight_decay)[:2]
    return run_training(
        model, next_batch=lambda: stream.batch(rng, batch_size), loss_fn=text_loss,
        groups=groups, steps=steps, warmup_steps=warmup_steps,
        eval_every=max(1, steps // 4), frozen=FROZEN, desc="pretraining on report text",
        progress=progress, log=log,
    )  # fmt: skip


def train_findings_generation(
    model: HookedMaira2,
    data: DemoTrainingSet,
    *,
    steps: int,
    batch_size: int = 16,
    lr: float = 2e-3,
    projector_lr: float = 3e-3,
    warmup_steps: int = 20,
    min_lr_ratio: float = 0.1,
    weight_decay: float = 0.01,
    seed: int = 0,
    grounding_steps: int = 0,
    grounding_mix: float = 0.0,
    normalized_mix: float = 0.0,
    ema_decay: float | None = None,
    projector_weight_decay: float = 0.0,
    reference_pixels: torch.Tensor | None = None,
    evaluate: Callable[[HookedMaira2, int], dict] | None = None,
    eval_every: int = 50,
    stop_when: Callable[[dict], bool] | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainingHistory:
    """Train projector + language model (tower frozen) on findings prompts, loss on the report.

    The first ``grounding_steps`` steps train on label-driven grounding targets
    (:mod:`.grounding_text`); afterwards a ``grounding_mix`` share of batches still does and a
    ``normalized_mix`` share trains on normalized reports (the finding sentences first, in the
    words the grounding targets use), so reading the image is not unlearnt while the model
    learns the reports' long tail. With
    ``reference_pixels``, image tokens are held at the text embeddings' scale (:class:`ImageScale`).
    Checkpoint selection (and ``stop_when``) only considers evaluations after the grounding
    phase.
    """
    rng = random.Random(seed)
    model.vision_tower.requires_grad_(False)
    queues: dict[str, list] = {"report": [], "grounding": [], "normalized": []}
    step = 0

    def next_batch() -> dict[str, torch.Tensor]:
        nonlocal step
        u = rng.random()
        if step < grounding_steps or u < grounding_mix:
            kind = "grounding"
        elif u < grounding_mix + normalized_mix:
            kind = "normalized"
        else:
            kind = "report"
        if not data.count(kind):
            kind = "report"
        step += 1
        queue = queues[kind]
        if not queue:
            queue.extend(data.batches(rng, batch_size, kind=kind))
        return data.collate(queue.pop())

    return run_training(
        model, next_batch=next_batch, loss_fn=report_loss,
        groups=_param_groups(model, lr, projector_lr, weight_decay, projector_weight_decay),
        steps=steps,
        warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio,
        evaluate=evaluate, eval_every=eval_every, select_after=grounding_steps, ema_decay=ema_decay,
        stop_when=stop_when,
        after_step=ImageScale(model, reference_pixels) if reference_pixels is not None else None,
        frozen=FROZEN, describe=format_eval, desc="findings generation",
        progress=progress, log=log,
    )  # fmt: skip


def format_eval(result: dict) -> str:
    parts = [f"step {result['step']}"]
    if "val_loss" in result:
        parts.append(f"val loss {result['val_loss']:.3f}")
    for name, rates in result.get("mentions", {}).items():
        parts.append(f"{name} {rates['positives']:.0%}/{rates['negatives']:.0%}")
    if "distinct" in result:
        parts.append(f"{result['distinct']} distinct reports")
    return "; ".join(parts) + (
        " (mention rate on positives/negatives)" if result.get("mentions") else ""
    )
