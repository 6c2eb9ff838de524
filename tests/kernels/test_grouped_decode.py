"""grouped_sparse_decode_csr: per-group partial decodes whose cumsum gives every Matryoshka prefix."""

from __future__ import annotations

import pytest
import sparse_reference as ref
import torch

from sae_lens_maira.kernels import grouped_sparse_decode_csr, sparse_decode_csr

CASES = [
    ("five_groups_odd_d", [3, 0, 6, 1, 4], [2, 6, 14, 30, 40], 37),
    ("one_group", [2, 2, 0], [16], 100),
    ("empty_batch", [], [4, 16], 37),
]


@pytest.mark.parametrize("impl", ref.IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_grouped_matches_reference(impl, dtype, case):
    _, counts, ends, d = case
    n_latents = ends[-1]
    gen = torch.Generator().manual_seed(len(ends))
    row_ptr, idx = ref.random_csr(counts, n_latents, gen)
    values = torch.randn(idx.numel(), generator=gen).to(dtype).requires_grad_()
    W = torch.randn(n_latents, d, generator=gen).to(dtype).requires_grad_()
    grad_out = torch.randn(len(ends), len(counts), d, generator=gen).to(dtype)

    out = grouped_sparse_decode_csr(row_ptr, idx, values, W, ends, impl=impl)
    assert out.shape == (len(ends), len(counts), d) and out.dtype == dtype
    g_values, g_W = torch.autograd.grad(out, (values, W), grad_out)

    v64 = values.detach().double().requires_grad_()
    W64 = W.detach().double().requires_grad_()
    r_out = ref.grouped(row_ptr, idx, v64, W64, ends)
    r_values, r_W = torch.autograd.grad(r_out, (v64, W64), grad_out.double(), allow_unused=True)
    ref.assert_close(out, r_out, dtype, "per-group forward")
    if idx.numel():
        ref.assert_close(g_values, r_values, dtype, "grad values")
    ref.assert_close(g_W, r_W if r_W is not None else torch.zeros_like(W64), dtype, "grad W_dec")


@pytest.mark.parametrize("impl", ["embedding_bag", "dense"])
def test_cumsum_gives_prefix_reconstructions(impl):
    """out.cumsum(0)[g] equals decoding only the latents below group_ends[g] (Matryoshka prefix)."""
    gen = torch.Generator().manual_seed(5)
    ends = [8, 24, 56, 120, 256]
    row_ptr, idx = ref.random_csr([12, 7, 0, 20], 256, gen, repeat=False)
    values = torch.rand(idx.numel(), generator=gen)
    W = torch.randn(256, 50, generator=gen)
    prefixes = grouped_sparse_decode_csr(row_ptr, idx, values, W, ends, impl=impl).cumsum(0)
    for g, end in enumerate(ends):
        masked = torch.where(idx < end, values, torch.zeros_like(values))
        expected = sparse_decode_csr(row_ptr, idx, masked, W, impl="dense")
        torch.testing.assert_close(prefixes[g], expected, rtol=1e-5, atol=1e-5)


def test_group_ends_accepts_numpy_ints():
    row_ptr, idx = torch.tensor([0, 2]), torch.tensor([0, 5])
    ends = tuple(torch.tensor([3, 6]).numpy())  # numpy.int64 entries, e.g. from np.cumsum
    out = grouped_sparse_decode_csr(row_ptr, idx, torch.ones(2), torch.eye(6), ends)
    torch.testing.assert_close(out[:, 0], torch.eye(6)[[0, 5]])
