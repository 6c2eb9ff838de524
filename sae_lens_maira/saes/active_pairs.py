"""Which (token, latent) pairs a training step uses, in row-pointer (CSR) form.

``batch_topk``: BatchTopK's ``k * B`` largest activations of the batch (exact; the selection is
:func:`sae_lens_maira.kernels.batch_topk_csr`). ``dead_topk``: AuxK's per-token top ``k_aux``
among dead latents. Both keep positive activations only (a zero contributes nothing to the
reconstruction and gets no gradient through the ReLU) and list latents ascending within a row.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sae_lens_maira.kernels.batch_topk import batch_topk_positions
from sae_lens_maira.kernels.layout import row_ids


class ActivePairs(NamedTuple):
    """Active (row, latent) pairs of a batch in CSR form; ``indices`` ascend within each row."""

    row_ptr: Tensor  # [B + 1] int64
    indices: Tensor  # [nnz] int64
    row_ids: Tensor | None = None  # [nnz] int64, when the selection already had them

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    def rows(self) -> Tensor:
        """Row id of every active entry (COO row coordinates)."""
        return self.row_ids if self.row_ids is not None else row_ids(self.row_ptr, self.nnz)


@torch.no_grad()
def batch_topk(acts: Tensor, k: int) -> ActivePairs:
    """Positions of the ``k * B`` largest entries of post-ReLU ``acts`` [B, N] that are > 0."""
    row_ptr, indices, rows, _ = batch_topk_positions(acts, k, positive_only=True)
    return ActivePairs(row_ptr, indices, rows)


@torch.no_grad()
def dead_topk(acts: Tensor, dead: Tensor, k_aux: int) -> ActivePairs:
    """Per row, the ``k_aux`` largest positive activations among dead latents (AuxK input)."""
    B, N = acts.shape
    dead_idx = dead.nonzero().squeeze(1)
    k_aux = min(k_aux, dead_idx.numel())
    if k_aux == 0:
        return ActivePairs(torch.zeros(B + 1, dtype=torch.long, device=acts.device), dead_idx[:0])
    vals, local = acts.index_select(1, dead_idx).topk(k_aux, dim=1, sorted=False)
    cols = torch.where(vals > 0, dead_idx[local], N)  # N sorts after every real latent
    cols = cols.sort(dim=1).values
    keep = cols < N
    row_ptr = torch.zeros(B + 1, dtype=torch.long, device=acts.device)
    row_ptr[1:] = keep.sum(dim=1).cumsum(0)
    return ActivePairs(row_ptr, cols[keep])
