"""The dense backend: scatter the actives into a ``[B, N]`` matrix and use matmuls.

This is what SAELens does for (Batch)TopK SAEs and what wins when many latents are active.
Gradients come from torch's autograd of these ops (index_put / matmul / index); under autocast
the inputs are cast to its dtype differentiably first, so weight gradients come back in the
weights' dtype. The scatter accumulates in fp32 so repeated latents in bf16 rows are summed
without extra rounding. Given the caller's ``hidden_pre``, the encoder reads its forward values
from it and runs only the backward's matmuls, as a dense encoder whose activations were kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sae_lens_maira.kernels.backend import OpsBackend
from sae_lens_maira.kernels.layout import row_ids


def scatter_dense(row_ptr: Tensor, indices: Tensor, values: Tensor, n_latents: int) -> Tensor:
    """``[B, N]`` activations with ``values`` at (row, latent), repeated latents summed."""
    n_rows = row_ptr.numel() - 1
    rows = row_ids(row_ptr, indices.numel())
    acc_dtype = torch.promote_types(values.dtype, torch.float32)
    dense = values.new_zeros((n_rows, n_latents), dtype=acc_dtype)
    dense = dense.index_put((rows, indices), values.to(acc_dtype), accumulate=True)
    return dense.to(values.dtype)


def decode(row_ptr: Tensor, indices: Tensor, values: Tensor, W: Tensor) -> Tensor:
    """One dense decode ``acts @ W`` of the CSR actives."""
    return scatter_dense(row_ptr, indices, values, W.shape[0]) @ W


def grouped_decode(
    row_ptr: Tensor, indices: Tensor, values: Tensor, W: Tensor, group_ends: Sequence[int]
) -> Tensor:
    """Per-group partial decodes ``[G, B, D]`` from one scatter: the groups' matmuls add up to one
    dense decode (SAELens decodes every prefix from scratch instead)."""
    acts = scatter_dense(row_ptr, indices, values, W.shape[0])
    starts = [0, *group_ends[:-1]]
    return torch.stack([acts[:, s:e] @ W[s:e] for s, e in zip(starts, group_ends, strict=True)])


def encode(row_ptr: Tensor, indices: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor) -> Tensor:
    """All pre-activations ``x @ W_enc + b_enc``, read at the selected pairs (dense backward)."""
    rows = row_ids(row_ptr, indices.numel())
    return (x @ W_enc + b_enc)[rows, indices]


class _GatherPre(torch.autograd.Function):
    """``hidden_pre[rows, indices]`` forward, with the gradient of ``(x @ W_enc + b_enc)[rows,
    indices]`` backward: the dense encoder without recomputing its matmul."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, rows: Tensor, indices: Tensor, x: Tensor, W_enc: Tensor, b_enc: Tensor,
        hidden_pre: Tensor,
    ) -> Tensor:  # fmt: skip
        ctx.save_for_backward(rows, indices, x, W_enc)
        ctx.b_enc_dtype = b_enc.dtype
        return hidden_pre[rows, indices].to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        rows, indices, x, W_enc = ctx.saved_tensors
        dense = grad.new_zeros((x.shape[0], W_enc.shape[1]))
        dense.index_put_((rows, indices), grad, accumulate=True)
        need = ctx.needs_input_grad
        grad_x = dense @ W_enc.t() if need[2] else None
        grad_W = x.t() @ dense if need[3] else None
        grad_b = dense.sum(0).to(ctx.b_enc_dtype) if need[4] else None
        return None, None, grad_x, grad_W, grad_b, None


def _cast(compute: torch.dtype | None, *tensors: Tensor) -> tuple[Tensor, ...]:
    return tensors if compute is None else tuple(t.to(compute) for t in tensors)


def _decode(
    row_ptr: Tensor, indices: Tensor, values: Tensor, W: Tensor, compute: torch.dtype | None
) -> Tensor:
    values, W = _cast(compute, values, W)
    return decode(row_ptr, indices, values, W)


def _grouped_decode(
    row_ptr: Tensor,
    indices: Tensor,
    values: Tensor,
    W: Tensor,
    group_ends: Sequence[int],
    compute: torch.dtype | None,
) -> Tensor:
    values, W = _cast(compute, values, W)
    return grouped_decode(row_ptr, indices, values, W, group_ends)


def _encode(
    row_ptr: Tensor,
    indices: Tensor,
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    hidden_pre: Tensor | None,
    compute: torch.dtype | None,
) -> Tensor:
    x, W_enc, b_enc = _cast(compute, x, W_enc, b_enc)
    if hidden_pre is None:
        return encode(row_ptr, indices, x, W_enc, b_enc)
    rows = row_ids(row_ptr, indices.numel())
    return _GatherPre.apply(rows, indices, x, W_enc, b_enc, hidden_pre)


BACKEND = OpsBackend(name="dense", decode=_decode, grouped_decode=_grouped_decode, encode=_encode)
