"""torch internals the plugin relies on. Checked against torch 2.13.0.

None has a public counterpart: a tensor's in-place version counter (``Tensor._version``), the
hook dicts of a module (``_forward_hooks`` / ``_backward_hooks``: hooks registered with torch
directly do not appear in TransformerLens's ``HookPoint.fwd_hooks``), and ``nn.Module._apply``,
the one method behind ``.to()``, ``.half()``, ``.cuda()`` and friends.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn


def version(tensor: Tensor) -> int:
    """The tensor's in-place version counter: it changes on every in-place write."""
    return tensor._version


def has_hooks(module: nn.Module) -> bool:
    """Whether any forward or backward hook is registered on ``module`` itself."""
    return bool(module._forward_hooks or module._backward_hooks)


class KeepFloat32Buffers(nn.Module):
    """A mixin: the buffers named in ``fp32_buffers`` stay float32 when the module moves to
    another dtype (``.to(torch.bfloat16)``, ``.half()``); they still follow it across devices."""

    fp32_buffers: tuple[str, ...] = ()

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> Any:
        kept = {
            n: self._buffers[n] for n in self.fp32_buffers if self._buffers.get(n) is not None
        }
        out = super()._apply(fn, recurse)
        for name, old in kept.items():
            new = self._buffers[name]
            assert new is not None and old is not None
            if old.dtype == torch.float32 and new.dtype != torch.float32:
                self._buffers[name] = old.to(device=new.device)
        return out
