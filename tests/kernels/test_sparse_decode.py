"""sparse_decode / sparse_decode_csr against a float64 one-hot + matmul reference, every impl."""

from __future__ import annotations

import pytest
import sparse_reference as ref
import torch

from sae_lens_maira.kernels import sparse_decode, sparse_decode_csr

DTYPES = (torch.float32, torch.bfloat16)

# (name, per-row active counts, n_latents, d): odd D, repeated latents, empty rows, K=1, B=0.
CSR_CASES = [
    ("variable_with_empty_rows", [3, 0, 5, 1, 0, 2], 40, 100),
    ("single_active", [1, 1, 1], 16, 37),
    ("all_rows_empty", [0, 0, 0], 16, 37),
    ("empty_batch", [], 16, 37),
]


def _run(fn, inputs, grad_out):
    out = fn()
    grads = torch.autograd.grad(out, inputs, grad_out, allow_unused=True)
    return out, grads


@pytest.mark.parametrize("impl", ref.IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CSR_CASES, ids=[c[0] for c in CSR_CASES])
def test_csr_decode_matches_reference(impl, dtype, case):
    _, counts, n_latents, d = case
    gen = torch.Generator().manual_seed(hash(case[0]) % 1000)
    row_ptr, idx = ref.random_csr(counts, n_latents, gen)
    values = torch.randn(idx.numel(), generator=gen).to(dtype).requires_grad_()
    W = torch.randn(n_latents, d, generator=gen).to(dtype).requires_grad_()
    grad_out = torch.randn(len(counts), d, generator=gen).to(dtype)

    out, (g_values, g_W) = _run(
        lambda: sparse_decode_csr(row_ptr, idx, values, W, impl=impl), (values, W), grad_out
    )
    assert out.shape == (len(counts), d) and out.dtype == dtype

    v64 = values.detach().double().requires_grad_()
    W64 = W.detach().double().requires_grad_()
    r_out, (r_values, r_W) = _run(
        lambda: ref.decode(row_ptr, idx, v64, W64), (v64, W64), grad_out.double()
    )
    ref.assert_close(out, r_out, dtype, "forward")
    if idx.numel():
        ref.assert_close(g_values, r_values, dtype, "grad values")
    ref.assert_close(g_W, r_W, dtype, "grad W_dec")
    # Rows without actives decode to exactly zero; unselected latents get exactly zero gradient.
    empty_rows = torch.tensor(counts, dtype=torch.long) == 0
    assert torch.all(out[empty_rows] == 0)
    unselected = torch.ones(n_latents, dtype=torch.bool)
    unselected[idx] = False
    assert torch.all(g_W[unselected] == 0)


@pytest.mark.parametrize("impl", ref.IMPLS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 4])
def test_padded_decode_matches_reference(impl, dtype, k):
    gen = torch.Generator().manual_seed(k)
    n_rows, n_latents, d = 5, 24, 37
    idx = torch.randint(0, n_latents, (n_rows, k), generator=gen)
    if k > 1:
        idx[:, 1] = idx[:, 0]  # a repeated latent in every row
    values = torch.randn(n_rows, k, generator=gen).to(dtype).requires_grad_()
    W = torch.randn(n_latents, d, generator=gen).to(dtype).requires_grad_()
    grad_out = torch.randn(n_rows, d, generator=gen).to(dtype)

    out, (g_values, g_W) = _run(
        lambda: sparse_decode(idx, values, W, impl=impl), (values, W), grad_out
    )
    row_ptr = torch.arange(0, (n_rows + 1) * k, k)
    v64 = values.detach().double().reshape(-1).requires_grad_()
    W64 = W.detach().double().requires_grad_()
    r_out, (r_values, r_W) = _run(
        lambda: ref.decode(row_ptr, idx.reshape(-1), v64, W64), (v64, W64), grad_out.double()
    )
    assert g_values.shape == (n_rows, k)
    ref.assert_close(out, r_out, dtype, "forward")
    ref.assert_close(g_values.reshape(-1), r_values, dtype, "grad values")
    ref.assert_close(g_W, r_W, dtype, "grad W_dec")


@pytest.mark.parametrize("impl", ["embedding_bag", "dense"])
def test_repeated_latent_sums(impl):
    """A latent listed twice in a row contributes the sum of its two values."""
    W = torch.randn(8, 5)
    out = sparse_decode(torch.tensor([[3, 3]]), torch.tensor([[0.25, 0.5]]), W, impl=impl)
    torch.testing.assert_close(out[0], 0.75 * W[3])


@pytest.mark.parametrize("impl", ref.IMPLS)
def test_bf16_accumulates_in_fp32(impl):
    """512 plus 1000 terms of bf16(0.3): an fp32 accumulator lands within one bf16 ulp (4 at this
    magnitude) of the exact 812.8; a bf16 running sum stays at 512 and a per-block bf16
    accumulator (16 terms per block) drifts by ~50."""
    W = torch.ones(4, 3, dtype=torch.bfloat16)
    idx = torch.zeros(1, 1001, dtype=torch.long)
    values = torch.full((1, 1001), 0.3, dtype=torch.bfloat16)
    values[0, 0] = 512
    exact = values.double().sum()
    out = sparse_decode(idx, values, W, impl=impl)
    assert torch.all((out.double() - exact).abs() <= 4), (out, exact)


def test_validate_false_gives_same_result():
    gen = torch.Generator().manual_seed(0)
    row_ptr, idx = ref.random_csr([2, 3, 1], 10, gen)
    values, W = torch.randn(6, generator=gen), torch.randn(10, 7, generator=gen)
    a = sparse_decode_csr(row_ptr, idx, values, W, impl="embedding_bag")
    b = sparse_decode_csr(row_ptr, idx, values, W, impl="embedding_bag", validate=False)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_int32_indices_accepted():
    W = torch.randn(6, 4)
    idx = torch.tensor([[1, 2]], dtype=torch.int32)
    values = torch.tensor([[1.0, 2.0]])
    torch.testing.assert_close(sparse_decode(idx, values, W), (W[1] + 2 * W[2])[None])
