"""Matryoshka reconstruction losses of every nested prefix from one set of per-group decodes.

``prefix_l2(residual0, partials, weights)`` returns ``l2_i = w_i * mean_b ||r_i||^2`` with
``r_i = residual0 - sum_{g <= i} partials[g]`` (``residual0 = x - b_dec``), plus the final
residual. Autograd over a cumsum would keep G residuals of [B, D]; this op keeps only the final
one and rebuilds the others backwards, so the prefix losses cost one [B, D] buffer, not G.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


class _PrefixL2(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, residual0: Tensor, partials: Tensor, weights: Tensor) -> Any:
        batch = residual0.shape[0]
        r = residual0.detach().float().clone()
        losses = []
        for g in range(partials.shape[0]):
            r.sub_(partials[g])
            flat = r.view(-1)
            losses.append(torch.dot(flat, flat) / batch)
        out = torch.stack(losses) * weights.float()
        ctx.save_for_backward(partials, weights, r)
        ctx.residual_dtype = residual0.dtype
        ctx.mark_non_differentiable(r)
        return out, r

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor, _grad_r: Tensor | None) -> Any:
        partials, weights, r_final = ctx.saved_tensors
        batch = r_final.shape[0]
        coefs = (2.0 * grad_out.float() * weights.float() / batch).tolist()
        r = r_final.clone()
        acc = torch.zeros_like(r)
        grad_partials = torch.empty_like(partials) if ctx.needs_input_grad[1] else None
        for g in reversed(range(partials.shape[0])):
            acc.add_(r, alpha=coefs[g])
            if grad_partials is not None:
                grad_partials[g].copy_(acc).neg_()
            if g > 0:
                r.add_(partials[g])
        grad_residual = acc.to(ctx.residual_dtype) if ctx.needs_input_grad[0] else None
        return grad_residual, grad_partials, None


def prefix_l2(residual0: Tensor, partials: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted per-prefix squared errors [G] and the final residual [B, D] (fp32, no grad)."""
    if partials.dim() != 3 or partials.shape[1:] != residual0.shape:
        raise ValueError(
            f"partials must be [G, B, D] matching residual0 {tuple(residual0.shape)}, "
            f"got {tuple(partials.shape)}"
        )
    losses, residual = _PrefixL2.apply(residual0, partials, weights)
    return losses, residual


def auxk_l2(residual: Tensor, aux_recon: Tensor) -> Tensor:
    """dictionary_learning's AuxK term: ||residual - aux||^2 over the residual's variance."""
    residual = residual.float()
    l2 = (residual - aux_recon.float()).pow(2).sum(dim=-1).mean()
    denom = (residual - residual.mean(dim=0, keepdim=True)).pow(2).sum(dim=-1).mean()
    return (l2 / denom).nan_to_num(0.0)
