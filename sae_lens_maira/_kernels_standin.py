"""TEMPORARY dense stand-in for ``sae_lens_maira.kernels`` (deleted once the kernels branch lands).

Same signatures as the real module; everything is plain torch autograd, so it is slow but
correct. Only ``sae_lens_maira/saes/_kernels.py`` imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

DecoderImpl = Literal["auto", "triton", "embedding_bag", "dense"]


def resolve_impl(impl: str, *, device: torch.device | str, n_latents: int, k: float, d: int) -> str:
    if impl != "auto":
        return impl
    if torch.device(device).type == "cuda":
        return "triton" if k <= 512 else "dense"
    return "embedding_bag" if k <= 512 else "dense"


def _row_ids(row_ptr: Tensor) -> Tensor:
    counts = row_ptr[1:] - row_ptr[:-1]
    return torch.repeat_interleave(torch.arange(counts.numel(), device=row_ptr.device), counts)


def sparse_decode(
    indices: Tensor, values: Tensor, W_dec: Tensor, *, impl: str = "auto", validate: bool = True
) -> Tensor:
    B = indices.shape[0]
    acts = torch.zeros(B, W_dec.shape[0], dtype=values.dtype, device=values.device)
    acts = acts.scatter_add(1, indices.long(), values)
    return acts @ W_dec


def sparse_decode_csr(
    row_ptr: Tensor,
    indices: Tensor,
    values: Tensor,
    W_dec: Tensor,
    *,
    impl: str = "auto",
    validate: bool = True,
) -> Tensor:
    B = row_ptr.numel() - 1
    rows = _row_ids(row_ptr)
    acts = torch.zeros(B, W_dec.shape[0], dtype=values.dtype, device=values.device)
    acts = acts.index_put((rows, indices.long()), values, accumulate=True)
    return acts @ W_dec


def sparse_encode_csr(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    row_ptr: Tensor,
    indices: Tensor,
    *,
    impl: str = "auto",
    validate: bool = True,
    hidden_pre: Tensor | None = None,
) -> Tensor:
    rows = _row_ids(row_ptr)
    idx = indices.long()
    return (x[rows] * W_enc[:, idx].T).sum(-1) + b_enc[idx]


def grouped_sparse_decode_csr(
    row_ptr: Tensor,
    indices: Tensor,
    values: Tensor,
    W_dec: Tensor,
    group_ends: Sequence[int],
    *,
    impl: str = "auto",
    validate: bool = True,
) -> Tensor:
    outs = []
    start = 0
    idx = indices.long()
    for end in [int(e) for e in group_ends]:
        mask = (idx >= start) & (idx < end)
        outs.append(sparse_decode_csr_masked(row_ptr, idx, values * mask.to(values.dtype), W_dec))
        start = end
    return torch.stack(outs)


def sparse_decode_csr_masked(row_ptr: Tensor, idx: Tensor, values: Tensor, W_dec: Tensor) -> Tensor:
    return sparse_decode_csr(row_ptr, idx, values, W_dec)
