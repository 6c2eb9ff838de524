"""sparse_encode_csr against per-pair float64 dot products, every impl, with its sparse backward."""

from __future__ import annotations

import pytest
import sparse_reference as ref
import torch

from sae_lens_maira.kernels import sparse_encode_csr

CASES = [
    ("variable_with_empty_rows", [3, 0, 5, 1, 0, 2], 40, 100),
    ("single_active", [1, 1, 1], 16, 37),
    ("empty_batch", [], 16, 37),
]


def _inputs(counts, n_latents, d, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    row_ptr, idx = ref.random_csr(counts, n_latents, gen)
    x = torch.randn(len(counts), d, generator=gen).to(dtype).requires_grad_()
    W_enc = (torch.randn(d, n_latents, generator=gen) / d**0.5).to(dtype).requires_grad_()
    b_enc = torch.randn(n_latents, generator=gen).to(dtype).requires_grad_()
    grad_pre = torch.randn(idx.numel(), generator=gen).to(dtype)
    return row_ptr, idx, x, W_enc, b_enc, grad_pre


@pytest.mark.parametrize("impl", ref.IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_encode_matches_reference(impl, dtype, case):
    _, counts, n_latents, d = case
    row_ptr, idx, x, W_enc, b_enc, grad_pre = _inputs(counts, n_latents, d, dtype, len(counts))
    pre = sparse_encode_csr(x, W_enc, b_enc, row_ptr, idx, impl=impl)
    assert pre.shape == (idx.numel(),) and pre.dtype == dtype
    grads = torch.autograd.grad(pre, (x, W_enc, b_enc), grad_pre, allow_unused=True)

    leaves = [t.detach().double().requires_grad_() for t in (x, W_enc, b_enc)]
    r_pre = ref.encode(row_ptr, idx, *leaves)
    ref.assert_close(pre, r_pre, dtype, "forward")
    if idx.numel():
        r_grads = torch.autograd.grad(r_pre, leaves, grad_pre.double())
    else:
        r_grads = [torch.zeros_like(t) for t in leaves]
    for name, got, want in zip(("x", "W_enc", "b_enc"), grads, r_grads, strict=True):
        assert got.shape == want.shape
        ref.assert_close(got, want, dtype, f"grad {name}")
    # Only selected columns of W_enc / entries of b_enc receive gradient.
    unselected = torch.ones(n_latents, dtype=torch.bool)
    unselected[idx] = False
    assert torch.all(grads[1][:, unselected] == 0) and torch.all(grads[2][unselected] == 0)


@pytest.mark.parametrize("impl", ["embedding_bag", "triton"])
def test_hidden_pre_gives_same_forward_and_grads(impl):
    row_ptr, idx, x, W_enc, b_enc, grad_pre = _inputs([2, 4, 0, 3], 30, 37, torch.float32, 7)
    with torch.no_grad():
        hidden_pre = x @ W_enc + b_enc
    a = sparse_encode_csr(x, W_enc, b_enc, row_ptr, idx, impl=impl)
    b = sparse_encode_csr(x, W_enc, b_enc, row_ptr, idx, impl=impl, hidden_pre=hidden_pre)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    ga = torch.autograd.grad(a, (x, W_enc, b_enc), grad_pre)
    gb = torch.autograd.grad(b, (x, W_enc, b_enc), grad_pre)
    for u, v in zip(ga, gb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-6, atol=1e-6)


def test_grad_x_matches_decode_with_transposed_encoder():
    """grad x is the sparse decode of the pre-activation grads with W_enc^T (the stated identity)."""
    from sae_lens_maira.kernels import sparse_decode_csr

    row_ptr, idx, x, W_enc, b_enc, grad_pre = _inputs([3, 1, 2], 20, 11, torch.float32, 3)
    pre = sparse_encode_csr(x, W_enc, b_enc, row_ptr, idx, impl="embedding_bag")
    (gx,) = torch.autograd.grad(pre, x, grad_pre)
    expected = sparse_decode_csr(row_ptr, idx, grad_pre, W_enc.detach().t(), impl="dense")
    torch.testing.assert_close(gx, expected, rtol=1e-5, atol=1e-6)


def test_portable_sddmm_matches_cpu_sampled_addmm():
    """The chunked gather fallback (used off-CPU) agrees with sampled_addmm, bias included."""
    from sae_lens_maira.kernels import embedding_bag

    gen = torch.Generator().manual_seed(11)
    row_ptr, idx = ref.random_csr([4, 0, 7, 2], 30, gen)
    a, table, bias = torch.randn(4, 19), torch.randn(30, 19), torch.randn(30)
    expected = embedding_bag.sampled_dot(row_ptr, idx, a, table, bias)
    got = embedding_bag._gathered_dot(row_ptr, idx, a, table, bias, chunk=5)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
