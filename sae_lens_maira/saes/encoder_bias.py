"""``b_dec``'s encoder gradient without gradient-carrying encoder inputs.

The encoder reads ``(x - b_dec) @ W_enc + b_enc``. The sparse training step feeds it detached
rows ``x - b_dec`` (a gradient for them would be a sparse grad x: a gather of k rows of ``W_enc^T``
per token after an ``N x D`` transpose copy). Their ``b_dec`` dependence gives ``b_dec`` the
gradient ``-W_enc @ g`` (``g``: the pre-activation gradient summed per latent, which is exactly
``b_enc``'s gradient), so ``b_enc`` can carry it: one matvec in the backward and none forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _BiasWithDecoderShift(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, b_enc: Tensor, b_dec: Tensor, W_enc: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(W_enc)
        ctx.b_dec_dtype = b_dec.dtype
        return b_enc.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        (W_enc,) = ctx.saved_tensors
        grad_b_dec = None
        if ctx.needs_input_grad[1]:
            with torch.autocast(device_type=grad.device.type, enabled=False):
                grad_b_dec = -(W_enc @ grad.to(W_enc.dtype)).to(ctx.b_dec_dtype)
        return grad, grad_b_dec, None


def bias_with_decoder_shift(b_enc: Tensor, b_dec: Tensor, W_enc: Tensor) -> Tensor:
    """``b_enc`` (same values) whose gradient also reaches ``b_dec`` as ``-W_enc @ grad``: what
    ``b_dec`` would get through encoder rows ``x - b_dec`` that are fed in detached."""
    return _BiasWithDecoderShift.apply(b_enc, b_dec, W_enc.detach())
