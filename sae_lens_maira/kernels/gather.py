"""The ops of a sparse backend: decode, grouped decode and encode from its two primitives.

Decoding is a bag sum per row (grouped: per row and group, on the layout of
:func:`~sae_lens_maira.kernels.layout.grouped_bags`); the encoder is a sampled dot. The autograd
functions (:mod:`~sae_lens_maira.kernels.autograd`) make both backward passes sparse too.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import torch
from torch import Tensor

from sae_lens_maira.kernels.autograd import BagDecode, SampledEncode
from sae_lens_maira.kernels.backend import OpsBackend, SparseBackend
from sae_lens_maira.kernels.layout import grouped_bags


@cache
def gather_ops(backend: SparseBackend) -> OpsBackend:
    """The :class:`OpsBackend` of a pair of sparse primitives (one per backend, immutable)."""

    def decode(
        row_ptr: Tensor, indices: Tensor, values: Tensor, W: Tensor, compute: torch.dtype | None
    ) -> Tensor:
        return BagDecode.apply(row_ptr, indices, values, W, backend, None, compute)

    def grouped_decode(
        row_ptr: Tensor,
        indices: Tensor,
        values: Tensor,
        W: Tensor,
        group_ends: Sequence[int],
        compute: torch.dtype | None,
    ) -> Tensor:
        bag_ptr, perm = grouped_bags(row_ptr, indices, group_ends)
        out = BagDecode.apply(bag_ptr, indices, values, W, backend, perm, compute)
        return out.view(len(group_ends), row_ptr.numel() - 1, W.shape[1])

    def encode(
        row_ptr: Tensor,
        indices: Tensor,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        hidden_pre: Tensor | None,
        compute: torch.dtype | None,
    ) -> Tensor:
        return SampledEncode.apply(row_ptr, indices, x, W_enc, b_enc, hidden_pre, backend, compute)

    return OpsBackend(
        name=backend.name, decode=decode, grouped_decode=grouped_decode, encode=encode
    )
