"""Exact BatchTopK selection into row-pointer (CSR) form, without a dense B x N top-k.

BatchTopK keeps the ``k * B`` largest activations of the whole batch. A flat ``topk`` over all
``B * N`` values is what dictionary_learning and SAELens do; here each row first offers its
``candidates_per_row`` largest values and the global top-k runs over those. The result is exact
whenever no row had more winners than candidates (checked; otherwise the flat top-k runs).
Selections are returned sorted by row, then latent id, which the grouped decoder relies on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class Selection(NamedTuple):
    """Active (row, latent) pairs of a batch in CSR form; ``indices`` ascend within each row."""

    row_ptr: Tensor  # [B + 1] int64
    indices: Tensor  # [nnz] int64

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    def rows(self) -> Tensor:
        """Row id of every active entry (COO row coordinates)."""
        counts = self.row_ptr[1:] - self.row_ptr[:-1]
        return torch.repeat_interleave(
            torch.arange(counts.numel(), device=counts.device), counts, output_size=self.nnz
        )


def _to_csr(rows: Tensor, cols: Tensor, n_rows: int, n_cols: int) -> Selection:
    key = torch.sort(rows * n_cols + cols).values
    rows, cols = key // n_cols, key % n_cols
    row_ptr = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    row_ptr[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
    return Selection(row_ptr, cols)


@torch.no_grad()
def batch_topk(acts: Tensor, k: int, candidates_per_row: int | None = None) -> Selection:
    """Positions of the ``k * B`` largest entries of ``acts`` [B, N] that are > 0.

    ``acts`` are post-ReLU activations; zero winners (fewer than k*B positive values) are
    dropped because they contribute nothing to the reconstruction or its gradient.
    """
    B, N = acts.shape
    total = k * B
    if total >= B * N:
        rows, cols = (acts > 0).nonzero(as_tuple=True)
        return _to_csr(rows, cols, B, N)
    m = candidates_per_row if candidates_per_row is not None else 4 * k
    if 2 * m < N:
        cand_vals, cand_idx = acts.topk(m, dim=1, sorted=False)
        vals, pos = cand_vals.reshape(-1).topk(total, sorted=False)
        cutoff = vals.min()
        # A row whose m-th largest value beats the cutoff may hide more winners: go flat.
        if not bool((cand_vals.min(dim=1).values > cutoff).any()):
            rows = pos // m
            cols = cand_idx.reshape(-1)[pos]
            keep = vals > 0
            return _to_csr(rows[keep], cols[keep], B, N)
    vals, pos = acts.reshape(-1).topk(total, sorted=False)
    keep = vals > 0
    pos = pos[keep]
    return _to_csr(pos // N, pos % N, B, N)


@torch.no_grad()
def dead_topk(acts: Tensor, dead: Tensor, k_aux: int) -> Selection:
    """Per row, the ``k_aux`` largest positive activations among dead latents (AuxK input)."""
    B, N = acts.shape
    dead_idx = dead.nonzero().squeeze(1)
    k_aux = min(k_aux, dead_idx.numel())
    if k_aux == 0:
        return Selection(torch.zeros(B + 1, dtype=torch.long, device=acts.device), dead_idx[:0])
    vals, local = acts.index_select(1, dead_idx).topk(k_aux, dim=1, sorted=False)
    rows = torch.arange(B, device=acts.device).unsqueeze(1).expand(B, k_aux)
    keep = vals > 0
    return _to_csr(rows[keep], dead_idx[local][keep], B, N)
