"""A pretrained image tower for the small default, as MAIRA-2 has one (RAD-DINO).

MAIRA-2 never trains its tower from scratch: RAD-DINO is pretrained on chest X-rays and frozen.
A random Dinov2 is a poor stand-in: all synthetic radiographs look alike to it, and a language
model trained on top learns to ignore the image and write normal templates. So the small tower
is pretrained first, briefly and supervised, on what the training pictures show (heart size,
fluid per side, each device kind), then frozen like RAD-DINO while the projector and language
model learn to report. A linear head reads the mean patch and, separately, the first and last
patch of each image: those are the image positions the study's SAEs read, and the tower's
bidirectional attention lets them summarise the whole picture. The head is thrown away.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from sae_lens_maira.demo.training_data import PixelStore
from sae_lens_maira.model.hooked_maira2 import HookedMaira2


def tower_patch_features(model: HookedMaira2, pixels: torch.Tensor) -> torch.Tensor:
    """The tower output the projector reads: [n, n_patches, d_vision] (CLS dropped)."""
    features = model.vision_tower(pixels).feature_maps[-1]
    if model.maira_config.vision_feature_select_strategy == "default":
        features = features[:, 1:]
    return features


@torch.no_grad()
def init_vision_tower(model: HookedMaira2, *, seed: int = 0, position_std: float = 0.5) -> None:
    """Width-appropriate init for a small Dinov2 trained from scratch.

    Dinov2's default (every weight N(0, 0.02), made for width 768+) leaves a width-96 tower
    nearly linear and position-blind at the start: attention is uniform, GELUs sit in their
    linear range and the position embeddings are drowned by patch content, so it learns
    position-dependent findings (where the heart border lies, which side holds fluid) very
    slowly. LeCun-normal weights (std 1/sqrt(fan_in)) and position embeddings at the scale of
    the patch embeddings fix that.
    """
    gen = torch.Generator().manual_seed(seed)
    for module in model.vision_tower.modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            fan_in = module.weight[0].numel()
            module.weight.normal_(0.0, fan_in**-0.5, generator=gen)
            if module.bias is not None:
                module.bias.zero_()
    emb = model.vision_tower.embeddings
    emb.position_embeddings.normal_(0.0, position_std, generator=gen)
    emb.cls_token.normal_(0.0, position_std, generator=gen)


def pretrain_vision_tower(
    model: HookedMaira2,
    store: PixelStore,
    *,
    steps: int,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    target_weights: Sequence[float] | None = None,
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[float]:
    """Train ``model.vision_tower`` on ``store``'s images and targets; returns the loss per step.

    ``target_weights`` scales each target's loss (e.g. more for the subtle effusions). The
    tower is left frozen (``requires_grad=False``) and in eval mode afterwards.
    """
    if len(store) == 0:
        raise ValueError("no images to pretrain the vision tower on")
    tower = model.vision_tower
    targets = store.target_tensor()
    n_targets = targets.shape[1]
    # balance rare findings: weight positives by (negatives / positives), capped
    pos = targets.sum(0)
    pos_weight = ((len(store) - pos) / pos.clamp(min=1.0)).clamp(max=20.0)
    weights = (
        torch.ones(n_targets)
        if target_weights is None
        else torch.tensor(target_weights, dtype=torch.float32)
    )
    if weights.shape != (n_targets,):
        raise ValueError(f"target_weights needs {n_targets} values, got {tuple(weights.shape)}")
    weights = weights / weights.mean()
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(model.maira_config.d_vision, n_targets)
    torch.nn.init.normal_(head.weight, std=0.02, generator=gen)
    torch.nn.init.zeros_(head.bias)
    tower.requires_grad_(True)
    tower.train()
    params = list(tower.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    warmup = max(1, steps // 10)

    def lr_at(step: int) -> float:
        if step < warmup:
            return lr * (step + 1) / warmup
        t = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))

    rng = random.Random(seed)
    order: list[int] = []
    losses: list[float] = []
    bar = tqdm(range(steps), desc="pretraining the image tower", disable=not progress)
    for step in bar:
        if len(order) < batch_size:
            fresh = list(range(len(store)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:batch_size], order[batch_size:]
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        feats = tower_patch_features(model, store.pixels(idx))
        y = targets[idx]
        reads = torch.stack([feats.mean(1), feats[:, 0], feats[:, -1]], 1)  # [b, 3, d]
        logits = head(reads)
        loss = F.binary_cross_entropy_with_logits(
            logits, y[:, None].expand_as(logits), pos_weight=pos_weight, weight=weights
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if log and (step + 1) % max(1, steps // 4) == 0:
            window = losses[-max(1, steps // 8) :]
            log(f"image tower step {step + 1}/{steps}: loss {sum(window) / len(window):.3f}")
    tower.requires_grad_(False)
    tower.eval()
    return losses
