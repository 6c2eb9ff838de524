"""A fixed-step AdamW loop: linear warm-up, cosine decay, evaluation-picked weights, optional EMA.

The learning-rate schedule runs on ``step / steps``: a fixed step count, never elapsed time, so
a slow or busy machine trains the same model as a fast one. It trains whole models (the small
default's language model, :mod:`sae_lens_maira.demo.lm_training`); SAEs train through SAELens's
runner (:mod:`.commands`).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm


@dataclass
class TrainingHistory:
    """What happened during training, for logs, plots and the training summary."""

    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    best_step: int | None = None
    #: the step at which ``stop_when`` ended training (None: it ran every step)
    stopped_at: int | None = None
    seconds: float = 0.0


def warmup_cosine_factor(step: int, steps: int, warmup_steps: int, min_lr_ratio: float) -> float:
    """The learning-rate multiplier at ``step`` (0-based) of ``steps``: ``(step + 1) /
    warmup_steps`` during warm-up, then a cosine over the whole run's ``step / steps`` from 1
    down towards ``min_lr_ratio`` (the warm-up's share of the cosine is skipped, not stretched)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    frac = step / steps
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac))


def _describe(result: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in result.items() if isinstance(v, (int, float, str)))


def run_training(
    model: torch.nn.Module,
    *,
    next_batch: Callable[[], Any],
    loss_fn: Callable[[Any, Any], torch.Tensor],
    groups: list[dict],
    steps: int,
    warmup_steps: int,
    min_lr_ratio: float = 0.1,
    grad_clip: float = 1.0,
    evaluate: Callable[[Any, int], dict] | None = None,
    eval_every: int = 50,
    score_key: str = "score",
    select_after: int = 0,
    after_step: Callable[[], object] | None = None,  # its return value is ignored
    ema_decay: float | None = None,
    stop_when: Callable[[dict], bool] | None = None,
    frozen: Sequence[str] = (),
    describe: Callable[[dict], str] = _describe,
    desc: str = "training",
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> TrainingHistory:
    """AdamW (betas 0.9/0.95) with warm-up and cosine decay (:func:`warmup_cosine_factor`) for
    exactly ``steps`` steps over ``groups`` (torch param groups, each with a ``base_lr``).

    ``evaluate(model, step)`` runs every ``eval_every`` steps and at the end; when its result has
    ``score_key``, the weights of the best-scoring evaluation after step ``select_after`` are
    restored at the end (ties: the later one). ``after_step`` runs after every optimizer step
    (constraints). ``frozen`` names submodules that are not trained: kept in eval mode and left
    out of the best-weights copy.

    With ``ema_decay``, an exponential moving average of the weights is kept from step
    ``select_after`` on, and it is what gets evaluated and kept: greedy decoding of a small model
    flips between templates from one step to the next, the average does not.

    ``stop_when(result)``: training ends at the first evaluation after ``select_after`` for
    which it is true (an outcome, never elapsed time: the schedule still runs on ``steps``).
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    params = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8)
    history = TrainingHistory()
    best_score, best_state = -math.inf, None
    start = time.perf_counter()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    skipped = tuple(f"{name}." for name in frozen)
    ema: dict[str, torch.Tensor] | None = None

    def train_mode() -> None:
        model.train()
        for name in frozen:
            model.get_submodule(name).eval()

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

    stop = False

    def run_eval(step: int) -> None:
        nonlocal best_score, best_state, stop
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
                {k: v for k, v in model.state_dict().items() if not k.startswith(skipped)}
            )
            history.best_step = step
        if stop_when is not None and select_after < step < steps and stop_when(result):
            stop = True
            history.stopped_at = step
        if ema is not None:
            swap_ema()
        train_mode()
        if log:
            log(describe(result))
            if stop:
                log(f"{desc}: the stopping rule is met at step {step} (of {steps}); stopping")

    train_mode()
    bar = tqdm(total=steps, desc=desc, disable=not progress)
    step = 0
    while step < steps:
        factor = warmup_cosine_factor(step, steps, warmup_steps, min_lr_ratio)
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
            if stop:
                break
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
