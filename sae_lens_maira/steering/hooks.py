"""Add scaled SAE decoder directions to the residual stream while MAIRA-2 reads or writes a report.

A :class:`SteeringHook` is an ordinary TransformerLens forward hook. It knows the prompt length, so
it can act on prompt positions, generated positions or both, with or without the KV cache (with
the cache, generation feeds one new position per call).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

Positions = Literal["prompt", "generated", "both"]


@dataclass
class SteeringHook:
    """``resid += coefficient * direction`` at the chosen positions of every forward call."""

    direction: torch.Tensor  # [d_model]
    coefficient: float
    prompt_len: int
    positions: Positions = "generated"
    _seen: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.positions not in ("prompt", "generated", "both"):
            raise ValueError(
                f"positions must be 'prompt', 'generated' or 'both', not {self.positions!r}"
            )
        if self.direction.ndim != 1:
            raise ValueError(
                f"a steering direction is one vector [d_model], got shape {tuple(self.direction.shape)}"
            )

    def prepare(self, batch: Any) -> None:
        """Take the prompt length from a processor batch (called before each batch)."""
        self.prompt_len = int(batch.input_ids.shape[1])
        self._seen = 0

    def reset(self) -> None:
        self._seen = 0

    def __call__(self, resid: torch.Tensor, hook: Any = None) -> torch.Tensor:
        n = resid.shape[1]
        # a call with several positions (or the first call) starts at position 0; single positions
        # after that continue a KV-cached generation
        start = 0 if (n > 1 or self._seen == 0) else self._seen
        self._seen = start + n
        if self.coefficient == 0:
            return resid
        pos = torch.arange(start, start + n, device=resid.device)
        if self.positions == "prompt":
            where = pos < self.prompt_len
        elif self.positions == "generated":
            where = pos >= self.prompt_len
        else:
            where = torch.ones_like(pos, dtype=torch.bool)
        if not bool(where.any()):
            return resid
        delta = self.coefficient * self.direction.to(device=resid.device, dtype=resid.dtype)
        return resid + where[None, :, None].to(resid.dtype) * delta


def feature_directions(
    W_dec: torch.Tensor, features: int | Sequence[int], normalise: bool = True
) -> torch.Tensor:
    """The (summed) decoder direction of one or more features, unit length by default."""
    feats = [features] if isinstance(features, int) else list(features)
    if not feats:
        raise ValueError("name at least one feature to steer with")
    bad = [f for f in feats if not 0 <= f < W_dec.shape[0]]
    if bad:
        raise ValueError(f"features {bad} are outside the SAE's {W_dec.shape[0]} latents")
    d = W_dec[feats].detach().float().sum(0)
    return d / d.norm().clamp_min(1e-12) if normalise else d


@contextmanager
def steering(model: Any, hook_name: str, hook: Any) -> Iterator[SteeringHook]:
    """Attach ``hook`` at ``hook_name`` for the duration of the block (and, for a hook with
    ``watch_tokens``, feed it the token ids the model embeds)."""
    if hook_name not in model.hook_dict:
        raise ValueError(f"the model has no hook {hook_name!r} to steer at")
    hook.reset()
    watch = getattr(hook, "watch_tokens", None)
    embed = getattr(model, "embed", None)
    handle = None
    if watch is not None and embed is not None:  # a clamp that needs the generated token ids
        handle = embed.register_forward_pre_hook(lambda _module, args: watch(args[0]))
    try:
        with model.hooks(fwd_hooks=[(hook_name, hook)]):
            yield hook
    finally:
        if handle is not None:
            handle.remove()
