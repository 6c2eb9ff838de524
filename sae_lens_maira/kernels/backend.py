"""The two primitives a sparse implementation provides; every op is built from them.

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

from collections.abc import Callable
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
