"""matryoshka_prefix_mse against the plain autograd formula (cumsum, square, sum d, mean b)."""

from __future__ import annotations

import pytest
import torch

from sae_lens_maira.kernels import matryoshka_prefix_mse


def _reference(parts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prefixes = parts.double().cumsum(0)
    return (target.double() - prefixes).pow(2).sum(-1).mean(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_losses_and_grads_match_autograd_reference(dtype):
    gen = torch.Generator().manual_seed(0)
    parts = torch.randn(4, 6, 37, generator=gen).to(dtype).requires_grad_()
    target = torch.randn(6, 37, generator=gen).to(dtype).requires_grad_()
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0])
    losses = matryoshka_prefix_mse(parts, target)
    assert losses.shape == (4,) and losses.dtype == torch.float32
    g_parts, g_target = torch.autograd.grad((losses * weights).sum(), (parts, target))

    p64 = parts.detach().double().requires_grad_()
    t64 = target.detach().double().requires_grad_()
    r_losses = _reference(p64, t64)
    r_parts, r_target = torch.autograd.grad((r_losses * weights.double()).sum(), (p64, t64))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    torch.testing.assert_close(losses.double(), r_losses.detach(), **tol)
    torch.testing.assert_close(g_parts.double(), r_parts, **tol)
    torch.testing.assert_close(g_target.double(), r_target, **tol)
    assert g_parts.dtype == g_target.dtype == dtype


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(1)
    parts = torch.randn(3, 4, 5, generator=gen, dtype=torch.float64).requires_grad_()
    target = torch.randn(4, 5, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(matryoshka_prefix_mse, (parts, target))


def test_shape_mismatch_is_a_value_error():
    with pytest.raises(ValueError, match=r"\[B, D\] = target's shape \(4, 5\)"):
        matryoshka_prefix_mse(torch.zeros(2, 4, 6), torch.zeros(4, 5))
    with pytest.raises(ValueError, match="parts must be 3-D"):
        matryoshka_prefix_mse(torch.zeros(4, 5), torch.zeros(4, 5))
