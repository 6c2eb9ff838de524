"""torch.autograd.gradcheck in float64 at tiny shapes (finite differences vs our backward)."""

from __future__ import annotations

import pytest
import torch

from sae_lens_maira.kernels import (
    grouped_sparse_decode_csr,
    sparse_decode,
    sparse_decode_csr,
    sparse_encode_csr,
)

ROW_PTR = torch.tensor([0, 2, 2, 5])  # row 1 is empty
INDICES = torch.tensor([4, 4, 0, 3, 1])  # latent 4 repeated in row 0
N_LATENTS, D = 6, 5


def _leaf(*shape, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


# The Triton kernels under the interpreter are slow per call; gradcheck calls them ~100 times,
# which still fits in a few seconds at these shapes.
@pytest.mark.parametrize("impl", ["embedding_bag", "triton", "dense"])
def test_gradcheck_decode_csr(impl):
    values, W = _leaf(5, seed=0), _leaf(N_LATENTS, D, seed=1)
    assert torch.autograd.gradcheck(
        lambda v, w: sparse_decode_csr(ROW_PTR, INDICES, v, w, impl=impl), (values, W)
    )


@pytest.mark.parametrize("impl", ["embedding_bag", "triton"])
def test_gradcheck_decode_padded(impl):
    idx = torch.tensor([[1, 1], [5, 0], [2, 3]])
    values, W = _leaf(3, 2, seed=2), _leaf(N_LATENTS, D, seed=3)
    assert torch.autograd.gradcheck(lambda v, w: sparse_decode(idx, v, w, impl=impl), (values, W))


@pytest.mark.parametrize("impl", ["embedding_bag", "triton"])
def test_gradcheck_grouped(impl):
    values, W = _leaf(5, seed=4), _leaf(N_LATENTS, D, seed=5)
    assert torch.autograd.gradcheck(
        lambda v, w: grouped_sparse_decode_csr(ROW_PTR, INDICES, v, w, [1, 4, 6], impl=impl),
        (values, W),
    )


@pytest.mark.parametrize("impl", ["embedding_bag", "triton"])
@pytest.mark.parametrize("use_hidden_pre", [False, True])
def test_gradcheck_encode(impl, use_hidden_pre):
    x, W_enc, b_enc = _leaf(3, D, seed=6), _leaf(D, N_LATENTS, seed=7), _leaf(N_LATENTS, seed=8)

    def f(x, W_enc, b_enc):
        hidden_pre = (x @ W_enc + b_enc).detach() if use_hidden_pre else None
        return sparse_encode_csr(
            x, W_enc, b_enc, ROW_PTR, INDICES, impl=impl, hidden_pre=hidden_pre
        )

    assert torch.autograd.gradcheck(f, (x, W_enc, b_enc))
