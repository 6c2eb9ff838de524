"""What an implementation provides: the ops (:class:`OpsBackend`), and for the sparse ones the
two primitives those ops are built from (:class:`SparseBackend`).

Three backends stand behind the public ops: ``triton`` and ``embedding_bag`` (two primitives,
turned into ops by :mod:`~sae_lens_maira.kernels.gather`) and ``dense`` (matmuls,
:mod:`~sae_lens_maira.kernels.dense`). :mod:`~sae_lens_maira.kernels.ops` validates and picks one;
it never branches on which.

The two sparse primitives:

* ``bag_sum(ptr, idx, weights, table, out_dtype=None)`` -> ``[R, D]``:
  ``out[r] = sum_{j in ptr[r]:ptr[r+1]} weights[j] * table[idx[j]]`` (fp32 accumulation, output in
  ``out_dtype`` or else ``table.dtype``, empty bags give zeros). ``out_dtype`` lets a bf16 table
  give an fp32 weight gradient straight from the accumulator (mixed precision without a cast pass). Decode forward, grad W (on the latent-sorted layout),
  and the encoder's grad x / grad W_enc are all bag sums.
* ``sampled_dot(ptr, idx, a, table, bias)`` -> ``[nnz]``:
  ``out[j] = a[row(j)] . table[idx[j]] (+ bias[idx[j]])``, the product ``a @ table.T`` evaluated
  only at the selected pairs (SDDMM). Decode grad values and the encoder forward.

``table`` is ``[N, D]`` and may be a strided view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

BagSum = Callable[[Tensor, Tensor, Tensor, Tensor, "torch.dtype | None"], Tensor]
SampledDot = Callable[[Tensor, Tensor, Tensor, Tensor, "Tensor | None"], Tensor]


@dataclass(frozen=True)
class SparseBackend:
    """A named pair of sparse primitives."""

    name: str
    bag_sum: BagSum
    sampled_dot: SampledDot


#: ``(row_ptr, indices, values, W, compute_dtype) -> [B, D]``
Decode = Callable[[Tensor, Tensor, Tensor, Tensor, "torch.dtype | None"], Tensor]
#: ``(row_ptr, indices, values, W, group_ends, compute_dtype) -> [G, B, D]``
GroupedDecode = Callable[
    [Tensor, Tensor, Tensor, Tensor, Sequence[int], "torch.dtype | None"], Tensor
]
#: ``(row_ptr, indices, x, W_enc, b_enc, hidden_pre, compute_dtype) -> [nnz]``
Encode = Callable[
    [Tensor, Tensor, Tensor, Tensor, Tensor, "Tensor | None", "torch.dtype | None"], Tensor
]


@dataclass(frozen=True)
class OpsBackend:
    """One implementation of the three differentiable ops, on validated inputs.

    Each runs with autocast off and takes autocast's dtype (None outside autocast) as
    ``compute_dtype``: it computes in that dtype and gives weights gradients in their own dtype.
    ``hidden_pre`` (encode): the dense ``[B, N]`` pre-activations the caller already computed
    without gradient, which a backend may read the forward values from.
    """

    name: str
    decode: Decode
    grouped_decode: GroupedDecode
    encode: Encode
