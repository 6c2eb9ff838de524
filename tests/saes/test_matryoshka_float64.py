"""A Matryoshka SAE trains in float64 through SAELens's SAETrainer (issue 16 item 8)."""

from __future__ import annotations

import torch
from sae_lens.saes.sae import TrainStepInput

from sae_lens_maira.saes import MatryoshkaTrainingSAE, MatryoshkaTrainingSAEConfig
from sae_lens_maira.saes.decoder_constraint import remove_parallel_component_, renormalize_rows_


def test_float64_training_steps_keep_unit_norm_rows_in_float64() -> None:
    torch.manual_seed(0)
    cfg = MatryoshkaTrainingSAEConfig(d_in=16, d_sae=64, k=4, group_sizes=[8, 24, 32],
                                      threshold_start_step=1, dtype="float64", device="cpu")  # fmt: skip
    sae = MatryoshkaTrainingSAE(cfg)
    assert sae.W_dec.dtype == torch.float64
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    sae.constrain_optimizer(opt)
    x = torch.randn(128, 16, dtype=torch.float64)
    losses = []
    for step in range(20):
        out = sae.training_forward_pass(TrainStepInput(x, {}, None, step, False))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert out.sae_out.dtype == torch.float64 and losses[-1] < losses[0]
    norms = sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-12)  # float64 precision, not fp32's


def test_constraint_ops_accept_float64_and_match_a_float64_reference() -> None:
    g = torch.Generator().manual_seed(0)
    W = torch.randn(10, 7, dtype=torch.float64, generator=g)
    grad = torch.randn(10, 7, dtype=torch.float64, generator=g)
    expect = grad - (grad * W).sum(1, keepdim=True) / (W.norm(dim=1, keepdim=True) + 1e-6) ** 2 * W
    got = remove_parallel_component_(W.clone(), grad.clone(), impl="dense")
    assert got.dtype == torch.float64 and torch.allclose(got, expect, atol=1e-14)
    unit = renormalize_rows_(W.clone(), impl="dense")
    assert torch.allclose(unit.norm(dim=1), torch.ones(10, dtype=torch.float64), atol=1e-14)
