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
