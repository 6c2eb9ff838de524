"""Under torch.autocast the ops run in the autocast dtype and fp32 weights get fp32 gradients."""

from __future__ import annotations

import pytest
import sparse_reference as ref
import torch

from sae_lens_maira.kernels import grouped_sparse_decode_csr, sparse_decode, sparse_encode_csr


@pytest.mark.parametrize("impl", ["embedding_bag", "dense"])
def test_decode_under_cpu_autocast(impl):
    gen = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 20, (4, 3), generator=gen)
    values = torch.rand(4, 3, generator=gen).requires_grad_()
    W = torch.randn(20, 9, generator=gen).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sparse_decode(idx, values, W, impl=impl)
        loss = out.float().square().sum()
    loss.backward()
    assert out.dtype == torch.bfloat16 and W.grad.dtype == torch.float32
    row_ptr = torch.arange(0, 13, 3)
    expected = ref.decode(row_ptr, idx.reshape(-1), values.detach().reshape(-1), W.detach())
    ref.assert_close(out, expected, torch.bfloat16, "autocast forward")


def test_grouped_and_encode_under_cpu_autocast():
    gen = torch.Generator().manual_seed(1)
    row_ptr, idx = ref.random_csr([2, 0, 3], 16, gen)
    values = torch.rand(5, generator=gen).requires_grad_()
    W = torch.randn(16, 7, generator=gen).requires_grad_()
    x = torch.randn(3, 7, generator=gen).requires_grad_()
    W_enc, b_enc = W.detach().t().clone().requires_grad_(), torch.zeros(16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = grouped_sparse_decode_csr(row_ptr, idx, values, W, [4, 16], impl="embedding_bag")
        pre = sparse_encode_csr(x, W_enc, b_enc, row_ptr, idx, impl="embedding_bag")
    (parts.float().sum() + pre.float().sum()).backward()
    assert parts.dtype == pre.dtype == torch.bfloat16
    assert W.grad.dtype == W_enc.grad.dtype == x.grad.dtype == torch.float32
    ref.assert_close(pre, ref.encode(row_ptr, idx, x, W_enc, b_enc), torch.bfloat16, "encode")


@pytest.mark.parametrize("impl", ref.IMPLS)
def test_autocast_gradients_match_the_bf16_reference(impl):
    """Under autocast every impl computes in bf16 from bf16-rounded inputs and gives fp32 leaves
    fp32 gradients equal to the reference's on those rounded inputs (the sparse paths write them
    straight from their fp32 accumulators instead of casting a bf16 gradient back)."""
    gen = torch.Generator().manual_seed(2)
    row_ptr, idx = ref.random_csr([3, 0, 5, 1], 24, gen)
    values = torch.rand(idx.numel(), generator=gen).requires_grad_()
    W = torch.randn(24, 33, generator=gen).requires_grad_()  # odd D
    x = torch.randn(4, 33, generator=gen).requires_grad_()
    W_enc = torch.randn(33, 24, generator=gen).requires_grad_()
    b_enc = torch.randn(24, generator=gen).requires_grad_()
    g_parts = torch.randn(2, 4, 33, generator=gen)
    g_pre = torch.randn(idx.numel(), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = grouped_sparse_decode_csr(row_ptr, idx, values, W, [10, 24], impl=impl)
        pre = sparse_encode_csr(x, W_enc, b_enc, row_ptr, idx, impl=impl)
    (parts.float() * g_parts).sum().add((pre.float() * g_pre).sum()).backward()
    assert W.grad.dtype == W_enc.grad.dtype == x.grad.dtype == values.grad.dtype == torch.float32

    def rounded(t):
        return t.detach().to(torch.bfloat16).double().requires_grad_()

    r_values, r_W, r_x, r_W_enc = rounded(values), rounded(W), rounded(x), rounded(W_enc)
    r_b = b_enc.detach().double().requires_grad_()
    r_parts = ref.grouped(row_ptr, idx, r_values, r_W, [10, 24])
    r_pre = ref.encode(row_ptr, idx, r_x, r_W_enc, r_b)
    # the gradients flowing in are rounded to bf16 too, as autocast's matmul backward would
    g_parts_r = g_parts.to(torch.bfloat16).double()
    g_pre_r = g_pre.to(torch.bfloat16).double()
    ((r_parts * g_parts_r).sum() + (r_pre * g_pre_r).sum()).backward()
    for ours, theirs, what in [
        (W.grad, r_W.grad, "grad W_dec"),
        (values.grad, r_values.grad, "grad values"),
        (x.grad, r_x.grad, "grad x"),
        (W_enc.grad, r_W_enc.grad, "grad W_enc"),
        (b_enc.grad, r_b.grad, "grad b_enc"),
    ]:
        ref.assert_close(ours, theirs.float(), torch.bfloat16, what)
