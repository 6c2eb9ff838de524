"""BatchTopK and AuxK selections in CSR form, against flat top-k references."""

from __future__ import annotations

import torch

from sae_lens_maira.saes.active_pairs import batch_topk, dead_topk


def flat_reference(acts: torch.Tensor, k: int) -> set[tuple[int, int]]:
    vals, idx = acts.flatten().topk(k * acts.shape[0])
    n = acts.shape[1]
    return {(int(i) // n, int(i) % n) for v, i in zip(vals, idx, strict=True) if v > 0}


def as_pairs(sel) -> set[tuple[int, int]]:
    return set(zip(sel.rows().tolist(), sel.indices.tolist(), strict=True))


def check_csr(sel, n_rows: int) -> None:
    assert sel.row_ptr.shape == (n_rows + 1,) and int(sel.row_ptr[0]) == 0
    assert int(sel.row_ptr[-1]) == sel.nnz
    for r in range(n_rows):
        cols = sel.indices[sel.row_ptr[r] : sel.row_ptr[r + 1]]
        assert torch.all(cols[1:] > cols[:-1]), "latents must ascend within a row"


def test_batch_topk_equals_flat_topk() -> None:
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(64, 500, generator=g).relu()
    sel = batch_topk(acts, 5)
    check_csr(sel, 64)
    assert as_pairs(sel) == flat_reference(acts, 5)
    counts = sel.row_ptr.diff()
    assert counts.min() != counts.max(), "BatchTopK gives rows different numbers of actives"


def test_rows_without_positive_values_have_no_actives() -> None:
    acts = torch.zeros(6, 50)
    acts[1, 7] = 2.0
    acts[4, [3, 9]] = torch.tensor([1.0, 0.5])
    sel = batch_topk(acts, 2)
    check_csr(sel, 6)
    assert as_pairs(sel) == {(1, 7), (4, 3), (4, 9)}
    assert sel.row_ptr.tolist() == [0, 0, 1, 1, 1, 3, 3]


def test_k_times_batch_at_least_everything_keeps_all_positives() -> None:
    acts = torch.tensor([[0.0, 1.0, 2.0], [3.0, 0.0, 0.0]])
    assert as_pairs(batch_topk(acts, 3)) == {(0, 1), (0, 2), (1, 0)}


def test_dead_topk_picks_largest_dead_latents_per_row() -> None:
    g = torch.Generator().manual_seed(2)
    acts = torch.randn(8, 40, generator=g).relu()
    dead = torch.zeros(40, dtype=torch.bool)
    dead[torch.tensor([1, 5, 6, 17, 30, 31, 39])] = True
    sel = dead_topk(acts, dead, 3)
    check_csr(sel, 8)
    masked = torch.where(dead, acts, torch.tensor(-1.0))
    vals, idx = masked.topk(3, dim=1)
    expected = {
        (r, int(c)) for r in range(8) for v, c in zip(vals[r], idx[r], strict=True) if v > 0
    }
    assert as_pairs(sel) == expected
    assert set(sel.indices.tolist()) <= {1, 5, 6, 17, 30, 31, 39}
    assert dead_topk(acts, torch.zeros(40, dtype=torch.bool), 3).nnz == 0
