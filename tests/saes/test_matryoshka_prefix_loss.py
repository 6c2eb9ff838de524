"""The one-buffer prefix loss against autograd through an explicit cumulative reconstruction."""

from __future__ import annotations

import torch

from sae_lens_maira.saes.prefix_loss import auxk_l2, prefix_l2


def test_prefix_losses_and_gradients_match_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    residual0 = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    partials = torch.randn(4, 7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)

    losses, residual = prefix_l2(residual0, partials, weights)
    expected = torch.stack(
        [
            (residual0 - partials[: i + 1].sum(0)).pow(2).sum(-1).mean() * weights[i]
            for i in range(4)
        ]
    )
    torch.testing.assert_close(losses.double(), expected, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(
        residual.double(), (residual0 - partials.sum(0)).detach(), rtol=1e-6, atol=1e-7
    )
    assert not residual.requires_grad

    upstream = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    ours = torch.autograd.grad((losses.double() * upstream).sum(), [residual0, partials])
    theirs = torch.autograd.grad((expected * upstream).sum(), [residual0, partials])
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_bf16_partials_get_bf16_gradients() -> None:
    residual0 = torch.randn(3, 4, requires_grad=True)
    partials = torch.randn(2, 3, 4, dtype=torch.bfloat16, requires_grad=True)
    losses, _ = prefix_l2(residual0, partials, torch.ones(2))
    losses.sum().backward()
    assert partials.grad is not None and partials.grad.dtype == torch.bfloat16
    assert residual0.grad is not None and residual0.grad.dtype == torch.float32


def test_auxk_is_normalised_by_residual_variance() -> None:
    residual = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    aux = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    l2 = ((residual - aux) ** 2).sum(-1).mean()
    var = ((residual - residual.mean(0)) ** 2).sum(-1).mean()
    torch.testing.assert_close(auxk_l2(residual, aux), l2 / var)
    assert float(auxk_l2(torch.ones(3, 2), torch.ones(3, 2))) == 0.0  # 0/0 -> 0 (nan_to_num)
