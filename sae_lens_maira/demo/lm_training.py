"""Findings generation training of HookedMaira2's projector and language model (teacher forcing).

The loss is next-token cross-entropy on the report positions only (what MAIRA-2 is trained to
write), weighted per token by :class:`DemoTrainingSet`. Logits are computed for those positions
only: the prompt is ~80 % of each sequence and its logits would be thrown away.

The learning-rate schedule (linear warm-up, cosine decay) runs on ``step / steps``: a fixed step
count, never elapsed time, so a slow or busy machine trains the same model as a fast one.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sae_lens_maira.demo.training_data import DemoTrainingSet, ReportStream
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.model.weight_conversion import ZERO_FILLED


@dataclass
class LMHistory:
    """What happened during training, for logs, plots and the training summary."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    best_step: int | None = None
    seconds: float = 0.0


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


def run_training(
    model: HookedMaira2,
    *,
    next_batch: Callable[[], dict[str, torch.Tensor]],
    loss_fn: Callable[[HookedMaira2, dict[str, torch.Tensor]], torch.Tensor],
    groups: list[dict],
    steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    evaluate: Callable[[HookedMaira2, int], dict] | None = None,
    eval_every: int = 50,
    score_key: str = "score",
    select_after: int = 0,
    after_step: Callable[[], object] | None = None,  # its return value is ignored
    ema_decay: float | None = None,
    desc: str = "training",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> LMHistory:
    """AdamW with warm-up and cosine decay for exactly ``steps`` steps.

    ``evaluate(model, step)`` runs every ``eval_every`` steps and at the end; when its result has
    ``score_key``, the weights of the best-scoring evaluation after step ``select_after`` are
    restored at the end. ``after_step`` runs after every optimizer step (constraints).

    With ``ema_decay``, an exponential moving average of the weights is kept from step
    ``select_after`` on, and it is what gets evaluated and kept: greedy decoding of a small model
    flips between templates from one step to the next, the average does not.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8)
    history = LMHistory()
    best_score, best_state = -math.inf, None
    start = time.perf_counter()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    ema: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def swap_ema() -> None:
        """Exchange the live weights and their moving average (twice = no-op)."""
        assert ema is not None
        for n, p in named:
            live = p.detach().clone()
            p.copy_(ema[n])
            ema[n].copy_(live)
        if after_step is not None:
            after_step()

    @torch.no_grad()
    def update_ema(step: int) -> None:
        nonlocal ema
        if ema_decay is None or step <= select_after:
            return
        if ema is None:
            ema = {n: p.detach().clone() for n, p in named}
            return
        for n, p in named:
            ema[n].lerp_(p.detach(), 1.0 - ema_decay)

    def run_eval(step: int) -> None:
        nonlocal best_score, best_state
        if evaluate is None:
            return
        model.eval()
        if ema is not None:
            swap_ema()
        result = {"step": step, **evaluate(model, step)}
        history.evals.append(result)
        score = result.get(score_key)
        if score is not None and step > select_after and score >= best_score:
            best_score = float(score)
            best_state = copy.deepcopy(
                {k: v for k, v in model.state_dict().items() if not k.startswith("vision_tower.")}
            )
            history.best_step = step
        if ema is not None:
            swap_ema()
        model.train()
        if log:
            log(format_eval(result))

    model.train()
    model.vision_tower.eval()
    bar = tqdm(total=steps, desc=desc, disable=not progress)
    step = 0
    while step < steps:
        frac = step / steps
        if step < warmup_steps:
            factor = (step + 1) / warmup_steps
        else:
            factor = min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * factor
        loss = loss_fn(model, next_batch())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        if after_step is not None:
            after_step()
        step += 1
        update_ema(step)
        history.steps.append(step)
        history.losses.append(float(loss.detach()))
        history.lrs.append(factor * groups[0]["base_lr"])
        bar.update(1)
        if progress:
            bar.set_postfix(loss=f"{history.losses[-1]:.3f}")
        if evaluate is not None and step % eval_every == 0 and step < steps:
            run_eval(step)
        elif log and step % max(1, eval_every // 2) == 0:
            recent = history.losses[-10:]
            log(f"{desc} step {step}: loss {sum(recent) / len(recent):.3f}")
    bar.close()
    if evaluate is not None and (not history.evals or history.evals[-1]["step"] != step):
        run_eval(step)
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
        if log:
            what = "averaged weights" if ema is not None else "weights"
            log(f"kept the {what} of step {history.best_step} (best {score_key})")
    elif ema is not None:
        swap_ema()
    history.seconds = time.perf_counter() - start
    model.eval()
    return history


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
) -> LMHistory:
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
        eval_every=max(1, steps // 4), desc="pretraining on report text", progress=progress,
        log=log,
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
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> LMHistory:
    """Train projector + language model (tower frozen) on findings prompts, loss on the report.

    The first ``grounding_steps`` steps train on label-driven grounding targets
    (:mod:`.grounding_text`); afterwards a ``grounding_mix`` share of batches still does and a
    ``normalized_mix`` share trains on normalized reports (the finding sentences first, in the
    words the grounding targets use), so reading the image is not unlearnt while the model
    learns the reports' long tail. With
    ``reference_pixels``, image tokens are held at the text embeddings' scale (:class:`ImageScale`).
    Checkpoint selection only considers evaluations after the grounding phase.
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
        after_step=ImageScale(model, reference_pixels) if reference_pixels is not None else None,
        desc="findings generation",
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
