"""Unit-norm decoder rows and the removal of the decoder-parallel gradient, as dictionary_learning."""

from __future__ import annotations

import pytest
import torch
from sae_lens.saes.sae import TrainingSAE, TrainStepInput

import sae_lens_maira  # noqa: F401
from sae_lens_maira.saes import MatryoshkaTrainingSAE, MatryoshkaTrainingSAEConfig
from sae_lens_maira.saes.decoder_constraint import remove_parallel_component_, renormalize_rows_


@pytest.mark.parametrize(
    "impl", ["auto", "triton", "triton-two-sweeps"]
)  # auto: torch ops on CPU; Triton interpreted, rows in registers or swept twice in blocks
@pytest.mark.parametrize("d", [3, 1100])  # 1100: odd, over one 512-column sweep block
def test_projection_and_renormalisation_formulas(impl: str, d: int, monkeypatch) -> None:
    if impl == "triton-two-sweeps":
        from sae_lens_maira.kernels import triton_fused

        monkeypatch.setattr(triton_fused, "ONE_SWEEP_MAX_D", 2)
        impl = "triton"
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, d, generator=g) * 2
    grad = torch.randn(5, d, generator=g)
    w_hat = W / (W.norm(dim=1, keepdim=True) + 1e-6)
    expected = grad - (grad * w_hat).sum(1, keepdim=True) * w_hat
    out = remove_parallel_component_(W, grad.clone(), impl=impl)
    torch.testing.assert_close(out, expected)
    cosine = (out * W).sum(1) / (out.norm(dim=1) * W.norm(dim=1))
    assert cosine.abs().max() < 1e-5
    expected_W = W / (W.norm(dim=1, keepdim=True) + torch.finfo(W.dtype).eps)
    renormalize_rows_(W, impl=impl)
    torch.testing.assert_close(W, expected_W)
    torch.testing.assert_close(W.norm(dim=1), torch.ones(5))
    W16 = (torch.randn(4, d, generator=g) * 3).bfloat16()
    renormalize_rows_(W16, impl=impl)
    torch.testing.assert_close(W16.float().norm(dim=1), torch.ones(4), rtol=1e-2, atol=1e-2)


def _sae() -> MatryoshkaTrainingSAE:
    return MatryoshkaTrainingSAE(
        MatryoshkaTrainingSAEConfig(d_in=8, d_sae=32, k=2, group_sizes=[8, 24])
    )


def test_any_optimizer_keeps_rows_unit_norm_and_grads_orthogonal() -> None:
    sae = _sae()
    opt = torch.optim.SGD(sae.parameters(), lr=0.5)
    for _ in range(3):
        out = sae.training_forward_pass(TrainStepInput(torch.randn(16, 8), {}, None, 0, False))
        out.loss.backward()
        assert sae.W_dec.grad is not None
        assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))


def test_other_modules_are_untouched_by_the_optimizer_hook() -> None:
    other = torch.nn.Linear(4, 4)
    other.weight.data.fill_(2.0)  # rows of norm 4: a renormalisation would make them 1
    opt = torch.optim.SGD(other.parameters(), lr=0.0)
    _sae()  # a constrained SAE exists
    other(torch.randn(2, 4)).sum().backward()
    opt.step()
    torch.testing.assert_close(other.weight.norm(dim=1), torch.full((4,), 4.0))


def test_hook_follows_parameters_replaced_by_saelens_loaders(tmp_path) -> None:
    sae = _sae()
    sae.save_model(tmp_path)
    loaded = TrainingSAE.load_from_disk(tmp_path)  # load_state_dict(assign=True): new Parameters
    opt = torch.optim.SGD(loaded.parameters(), lr=0.5)
    out = loaded.training_forward_pass(TrainStepInput(torch.randn(16, 8), {}, None, 0, False))
    out.loss.backward()
    assert loaded.W_dec.grad is not None
    assert (loaded.W_dec.grad * loaded.W_dec).sum(1).abs().max() < 1e-5
    opt.step()
    torch.testing.assert_close(loaded.W_dec.norm(dim=1), torch.ones(32))


def test_weight_histograms_for_wandb_skip_constant_norms() -> None:
    """SAETrainer hands log_histograms() to wandb.Histogram, which raises on unit-norm rows."""
    import wandb

    sae = _sae()
    hists = sae.log_histograms()
    assert "weights/W_dec_norms" not in hists  # unit norm: constant up to rounding
    for value in hists.values():
        wandb.Histogram(value)
    with torch.no_grad():
        sae.W_enc.mul_(torch.linspace(0.5, 2.0, 32))
    hists = sae.log_histograms()
    assert set(hists) == {"weights/W_enc_norms"}
    wandb.Histogram(hists["weights/W_enc_norms"])
