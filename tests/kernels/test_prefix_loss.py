"""matryoshka_prefix_mse against the plain autograd formula (cumsum, square, sum d, mean b)."""

from __future__ import annotations

import pytest
import torch

from sae_lens_maira.kernels import matryoshka_prefix_mse


def _reference(parts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    prefixes = parts.double().cumsum(0)
    return (target.double() - prefixes).pow(2).sum(-1).mean(-1)


# (parts dtype, target dtype): bf16 parts with an fp32 target is the autocast training step
DTYPES = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.bfloat16, torch.float32),
]


@pytest.mark.parametrize("impl", ["auto", "triton"])  # auto is the torch path on CPU
@pytest.mark.parametrize("dtypes", DTYPES, ids=lambda d: f"{d[0]}-{d[1]}")
def test_losses_and_grads_match_autograd_reference(dtypes, impl):
    dtype, target_dtype = dtypes
    gen = torch.Generator().manual_seed(0)
    # D 1100: odd, and more than one 512-column block of the fused kernels
    parts = torch.randn(4, 6, 1100, generator=gen).to(dtype).requires_grad_()
    target = torch.randn(6, 1100, generator=gen).to(target_dtype).requires_grad_()
    weights = torch.tensor([0.5, 1.0, 2.0, 3.0])
    losses, residual = matryoshka_prefix_mse(parts, target, return_residual=True, impl=impl)
    assert losses.shape == (4,) and losses.dtype == torch.float32
    assert residual.dtype == torch.float32 and not residual.requires_grad
    torch.testing.assert_close(
        residual.double(),
        target.detach().double() - parts.detach().double().sum(0),
        rtol=1e-5,
        atol=1e-5,
    )
    g_parts, g_target = torch.autograd.grad((losses * weights).sum(), (parts, target))

    p64 = parts.detach().double().requires_grad_()
    t64 = target.detach().double().requires_grad_()
    r_losses = _reference(p64, t64)
    r_parts, r_target = torch.autograd.grad((r_losses * weights.double()).sum(), (p64, t64))
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 5e-2}
    if target_dtype == torch.bfloat16:
        tol = {"rtol": 2e-2, "atol": 5e-2}
    torch.testing.assert_close(losses.double(), r_losses.detach(), **tol)
    torch.testing.assert_close(g_parts.double(), r_parts, **tol)
    torch.testing.assert_close(g_target.double(), r_target, **tol)
    assert g_parts.dtype == dtype and g_target.dtype == target_dtype


def test_fused_and_torch_paths_agree_closely():
    """The Triton pass (interpreter here) and the torch loop compute the same sums in fp32."""
    gen = torch.Generator().manual_seed(3)
    parts = torch.randn(5, 9, 300, generator=gen).requires_grad_()
    target = torch.randn(9, 300, generator=gen).requires_grad_()
    out = {}
    for impl in ("embedding_bag", "triton"):
        losses = matryoshka_prefix_mse(parts, target, impl=impl)
        grads = torch.autograd.grad((losses * torch.arange(1.0, 6.0)).sum(), (parts, target))
        out[impl] = (losses, *grads)
    for a, b in zip(out["embedding_bag"], out["triton"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


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
