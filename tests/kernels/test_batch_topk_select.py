"""batch_topk_csr: exactly the entries torch.topk picks over the flattened batch, as CSR."""

from __future__ import annotations

import pytest
import torch

from sae_lens_maira.kernels import batch_topk, batch_topk_csr


def _reference(acts: torch.Tensor, k: int, positive_only: bool) -> set[tuple[int, int]]:
    flat = acts.flatten()
    top = flat.topk(min(k * acts.shape[0], flat.numel())).indices
    if positive_only:
        top = top[flat[top] > 0]
    return {(int(i) // acts.shape[1], int(i) % acts.shape[1]) for i in top}


def _as_pairs(row_ptr, indices) -> set[tuple[int, int]]:
    counts = row_ptr.diff()
    rows = torch.repeat_interleave(torch.arange(counts.numel()), counts)
    return set(zip(rows.tolist(), indices.tolist(), strict=True))


@pytest.mark.parametrize(
    ("n_rows", "n_latents", "k"),
    [(512, 1024, 8), (300, 2000, 3), (16, 64, 4), (8, 32, 40)],
    ids=["sampled_path", "odd_shape", "small_direct", "k_above_n"],
)
@pytest.mark.parametrize("positive_only", [True, False])
def test_matches_flat_topk(n_rows, n_latents, k, positive_only):
    gen = torch.Generator().manual_seed(n_rows)
    # Latent-dependent scales (some latents fire far more often), half the entries <= 0.
    acts = torch.randn(n_rows, n_latents, generator=gen) * torch.rand(n_latents, generator=gen)
    row_ptr, indices, values = batch_topk_csr(acts, k, positive_only=positive_only)
    assert row_ptr.shape == (n_rows + 1,) and row_ptr[0] == 0 and row_ptr[-1] == indices.numel()
    assert _as_pairs(row_ptr, indices) == _reference(acts, k, positive_only)
    rows = torch.repeat_interleave(torch.arange(n_rows), row_ptr.diff())
    torch.testing.assert_close(values, acts[rows, indices], rtol=0, atol=0)
    for b in range(n_rows):  # latents ascending within each row
        seg = indices[row_ptr[b] : row_ptr[b + 1]]
        assert torch.all(seg[1:] > seg[:-1])


def test_positive_only_keeps_all_positives_when_fewer_than_k_times_b():
    acts = torch.zeros(600, 500)
    acts[::7, ::11] = 1.0  # 86 * 46 = 3956 positives, far fewer than k * B = 6000
    row_ptr, indices, values = batch_topk_csr(acts, 10)
    assert indices.numel() == int((acts > 0).sum()) and torch.all(values == 1)
    _, idx_all, _ = batch_topk_csr(acts, 10, positive_only=False)
    assert idx_all.numel() == 6000


def test_falls_back_to_exact_topk_when_the_sample_overshoots(monkeypatch):
    acts = torch.randn(512, 1024, generator=torch.Generator().manual_seed(3))
    monkeypatch.setattr(batch_topk, "_sample_threshold", lambda flat, m: flat.max())
    row_ptr, indices, _ = batch_topk_csr(acts, 8, positive_only=False)
    assert _as_pairs(row_ptr, indices) == _reference(acts, 8, False)


def test_zero_k_and_bad_k():
    row_ptr, indices, values = batch_topk_csr(torch.randn(3, 5), 0)
    assert row_ptr.tolist() == [0, 0, 0, 0] and indices.numel() == 0 and values.numel() == 0
    with pytest.raises(ValueError, match="non-negative int"):
        batch_topk_csr(torch.randn(3, 5), 2.5)
    with pytest.raises(ValueError, match="acts must be 2-D"):
        batch_topk_csr(torch.randn(15), 2)
