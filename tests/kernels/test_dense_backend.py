"""The dense backend's encoder given ``hidden_pre``: values read from it, gradients of the matmul."""

from __future__ import annotations

import torch

from sae_lens_maira.kernels import sparse_encode_csr
from sae_lens_maira.kernels.dispatch import get_backend


def _pairs(n_rows: int, n_latents: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(n_latents, generator=g)[:k] for _ in range(n_rows)])
    idx[0, 1] = idx[0, 0]  # a repeated pair: its gradients add up
    return torch.arange(0, n_rows * k + 1, k), idx.reshape(-1)


def test_hidden_pre_gives_the_same_values_and_gradients_as_recomputing() -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    W = torch.randn(5, 12, dtype=torch.float64, requires_grad=True)
    b = torch.randn(12, dtype=torch.float64, requires_grad=True)
    row_ptr, idx = _pairs(6, 12, 3, seed=1)
    g = torch.randn(idx.numel(), dtype=torch.float64)

    # independent reference: autograd of the dense matmul, read at the pairs
    rows = torch.repeat_interleave(torch.arange(6), 3)
    ref = (x @ W + b)[rows, idx]
    ref_grads = torch.autograd.grad(ref, (x, W, b), g)

    hidden = (x @ W + b).detach()
    got = sparse_encode_csr(x, W, b, row_ptr, idx, impl="dense", hidden_pre=hidden)
    got_grads = torch.autograd.grad(got, (x, W, b), g)
    torch.testing.assert_close(got, ref)
    for a, e in zip(got_grads, ref_grads, strict=True):
        torch.testing.assert_close(a, e)


def test_values_come_from_hidden_pre_not_a_new_matmul() -> None:
    x, W, b = torch.randn(2, 3), torch.randn(3, 4), torch.zeros(4)
    hidden = torch.full((2, 4), 7.0)
    out = sparse_encode_csr(x, W, b, torch.tensor([0, 1, 2]), torch.tensor([1, 3]),
                            impl="dense", hidden_pre=hidden)  # fmt: skip
    assert out.tolist() == [7.0, 7.0]


def test_every_implementation_is_a_backend_with_the_same_three_ops() -> None:
    for name in ("dense", "embedding_bag"):
        backend = get_backend(name)
        assert backend.name == name
        assert all(callable(op) for op in (backend.decode, backend.grouped_decode, backend.encode))
