"""Index bookkeeping shared by every implementation: row ids, latent-sorted CSR, group bags.

All helpers avoid host synchronisation (no ``.item()``, no data-dependent shapes beyond the
known ``nnz``) so they are cheap inside a CUDA training step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


def padded_row_ptr(n_rows: int, k: int, device: torch.device) -> Tensor:
    """Row pointer of a dense ``[n_rows, k]`` active list (every row holds exactly ``k``)."""
    if k == 0:
        return torch.zeros(n_rows + 1, dtype=torch.long, device=device)
    return torch.arange(0, (n_rows + 1) * k, k, dtype=torch.long, device=device)


def ptr_from_sorted(sorted_keys: Tensor, n_bags: int) -> Tensor:
    """CSR pointer of ``n_bags`` bags from bag keys already in ascending order: where each bag
    starts, by binary search (two ops and no sync, where counting and a cumsum take five)."""
    bounds = torch.arange(n_bags + 1, dtype=sorted_keys.dtype, device=sorted_keys.device)
    return torch.searchsorted(sorted_keys, bounds)


def row_ids(row_ptr: Tensor, nnz: int) -> Tensor:
    """The row of every active: ``[0,0,0,1,1,3,...]`` for a CSR row pointer."""
    n_rows = row_ptr.numel() - 1
    rows = torch.arange(n_rows, dtype=torch.long, device=row_ptr.device)
    return torch.repeat_interleave(rows, row_ptr.diff(), output_size=nnz)


@dataclass(frozen=True)
class LatentCSR:
    """Actives regrouped by latent id: the transposed problem that gives grad W without atomics.

    ``perm`` sorts actives by latent (stable, so sums are deterministic); ``ptr[i]:ptr[i+1]`` are
    latent ``i``'s entries in that order.
    """

    perm: Tensor
    ptr: Tensor


def by_latent(indices: Tensor, n_latents: int) -> LatentCSR:
    """Sort actives by latent id and build the per-latent CSR pointer."""
    sorted_ids, perm = torch.sort(indices, stable=True)
    return LatentCSR(perm=perm, ptr=ptr_from_sorted(sorted_ids, n_latents))


@functools.lru_cache(maxsize=64)
def small_constant(
    values: tuple[float | int, ...], dtype: torch.dtype, device: torch.device
) -> Tensor:
    """A small constant tensor on ``device``, made once: ``torch.tensor(list, device=cuda)`` is a
    host-to-device copy that synchronises the stream, so a training step must not make one per
    call. Treat the result as read-only."""
    return torch.tensor(values, dtype=dtype, device=device)


def group_of(indices: Tensor, group_ends: Sequence[int]) -> Tensor:
    """Group id of each latent: group g holds latents in ``[group_ends[g-1], group_ends[g])``."""
    ends = small_constant(tuple(group_ends), torch.long, indices.device)
    return torch.bucketize(indices, ends, right=True)


def grouped_bags(
    row_ptr: Tensor, indices: Tensor, group_ends: Sequence[int]
) -> tuple[Tensor, Tensor]:
    """Re-bag CSR actives by (group, row): bag ``g * n_rows + b`` holds row b's latents of group g.

    Returns ``(bag_ptr [G*B+1], perm [nnz])``; decoding ``indices[perm]`` with ``bag_ptr`` gives
    every group's partial reconstruction of every row in one pass, laid out as ``[G, B, D]``.
    """
    n_rows = row_ptr.numel() - 1
    keys = group_of(indices, group_ends).mul_(n_rows).add_(row_ids(row_ptr, indices.numel()))
    sorted_keys, perm = torch.sort(keys, stable=True)
    return ptr_from_sorted(sorted_keys, len(group_ends) * n_rows), perm
