"""Dense fallback: scatter the actives into a ``[B, N]`` matrix and use matmuls.

This is what SAELens does for (Batch)TopK SAEs and what wins when many latents are active.
Gradients come from torch's autograd of these ops (index_put / matmul / index). The scatter
accumulates in fp32 so repeated latents in bf16 rows are summed without extra rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

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
