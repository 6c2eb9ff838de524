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
    assert sae.constrain_optimizer(opt) is sae.constrain_optimizer(opt)  # one hook per optimizer
    for _ in range(3):
        out = sae.training_forward_pass(TrainStepInput(torch.randn(16, 8), {}, None, 0, False))
        out.loss.backward()
        assert sae.W_dec.grad is not None
        assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-5
        opt.step()
        opt.zero_grad()
        torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(32))


def _train_steps(sae: MatryoshkaTrainingSAE, opt: torch.optim.Optimizer, n: int = 3) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        out = sae.training_forward_pass(
            TrainStepInput(torch.randn(16, 8, generator=g), {}, None, 0, False)
        )
        out.loss.backward()
        opt.step()
        opt.zero_grad()


def test_other_modules_are_untouched_by_the_optimizer_hook() -> None:
    other = torch.nn.Linear(4, 4)
    other.weight.data.fill_(2.0)  # rows of norm 4: a renormalisation would make them 1
    opt = torch.optim.SGD(other.parameters(), lr=0.0)
    sae = _sae()  # a constrained SAE exists, its own optimizer hooked
    sae.constrain_optimizer(torch.optim.SGD(sae.parameters(), lr=0.5))
    other(torch.randn(2, 4)).sum().backward()
    opt.step()
    torch.testing.assert_close(other.weight.norm(dim=1), torch.full((4,), 4.0))


def test_only_the_sae_s_own_optimizer_renormalises_it(caplog) -> None:
    """No process-wide hook: an SAE trained by an optimizer it was not attached to drifts off
    unit norm (and the SAE says so once), one attached to its optimizer stays there."""
    from torch.optim.optimizer import _global_optimizer_post_hooks

    n_global = len(_global_optimizer_post_hooks)
    torch.manual_seed(0)
    attached, loose = _sae(), _sae()
    assert len(_global_optimizer_post_hooks) == n_global
    opt = torch.optim.Adam(attached.parameters(), lr=0.1)
    attached.constrain_optimizer(opt)
    loose_opt = torch.optim.Adam(loose.parameters(), lr=0.1)
    loose.constrain_optimizer(opt)  # attached to an optimizer that does not own its decoder
    _train_steps(attached, opt)
    with caplog.at_level("WARNING"):
        _train_steps(loose, loose_opt)
    torch.testing.assert_close(attached.W_dec.norm(dim=1), torch.ones(32))
    assert (loose.W_dec.norm(dim=1) - 1).abs().max() > 1e-3
    # a loose SAE attached to no optimizer at all warns, naming the fix
    lone = _sae()
    with caplog.at_level("WARNING"):
        _train_steps(lone, torch.optim.Adam(lone.parameters(), lr=0.1))
    assert sum("constrain_optimizer" in r.getMessage() for r in caplog.records) == 1


def test_hooks_that_run_twice_give_the_same_weights() -> None:
    """torch wraps a class's ``step`` once at the first optimizer; replacing ``Adam.step`` at
    class level afterwards (as a profiler or a test might) makes the next optimizer wrap it
    again, so every step hook runs twice. The renormalisation must not run twice."""
    def trained(double_hooks: bool) -> torch.Tensor:
        torch.manual_seed(0)
        sae = _sae()
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        sae.constrain_optimizer(opt)
        if double_hooks:  # the hooks as a double-wrapped step runs them
            step = opt.step

            def twice(*a, **k):
                out = step(*a, **k)
                for hook in list(opt._optimizer_step_post_hooks.values()):
                    hook(opt, a, k)
                return out

            opt.step = twice
        _train_steps(sae, opt, 5)
        return sae.W_dec.detach().clone()

    assert torch.equal(trained(False), trained(True))


def test_class_level_step_replacement_changes_nothing(monkeypatch) -> None:
    """The same through torch's own re-wrapping (the slowed-demo test's old mechanism)."""
    def trained() -> torch.Tensor:
        torch.manual_seed(0)
        sae = _sae()
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        sae.constrain_optimizer(opt)
        _train_steps(sae, opt, 5)
        return sae.W_dec.detach().clone()

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # Adam.step is wrapped by now
    before = trained()
    original = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: original(self, *a, **k))
    assert torch.equal(trained(), before)


def test_hook_follows_parameters_replaced_by_saelens_loaders(tmp_path) -> None:
    sae = _sae()
    sae.save_model(tmp_path)
    loaded = TrainingSAE.load_from_disk(tmp_path)  # load_state_dict(assign=True): new Parameters
    opt = torch.optim.SGD(loaded.parameters(), lr=0.5)
    loaded.constrain_optimizer(opt)
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


def _step(sae: MatryoshkaTrainingSAE, opt: torch.optim.Optimizer, batch: torch.Tensor) -> None:
    sae.training_forward_pass(TrainStepInput(batch, {}, None, 0, False)).loss.backward()
    opt.step()
    opt.zero_grad()


def test_two_saes_in_one_process_each_keep_only_their_own_constraint() -> None:
    """Two constrained SAEs trained side by side, each by its own optimizer, end bit for bit where
    each ends trained alone; a step of one's optimizer never renormalises the other's decoder."""
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(16, 8, generator=g) for _ in range(4)]

    def built(seed: int) -> tuple[MatryoshkaTrainingSAE, torch.optim.Optimizer]:
        torch.manual_seed(seed)
        sae = _sae()
        opt = torch.optim.Adam(sae.parameters(), lr=1e-2)
        sae.constrain_optimizer(opt)
        return sae, opt

    expected = []
    for seed in (0, 1):
        sae, opt = built(seed)
        for batch in batches:
            _step(sae, opt, batch)
        expected.append(sae.W_dec.detach().clone())
    (a, opt_a), (b, opt_b) = built(0), built(1)
    assert len(opt_a._optimizer_step_post_hooks) == len(opt_b._optimizer_step_post_hooks) == 1
    for batch in batches:  # interleaved: a's step, then b's
        _step(a, opt_a, batch)
        _step(b, opt_b, batch)
    assert torch.equal(a.W_dec, expected[0]) and torch.equal(b.W_dec, expected[1])

    with torch.no_grad():
        b.W_dec.mul_(3.0)  # off unit norm: only b's own optimizer may bring it back
    _step(a, opt_a, batches[0])
    torch.testing.assert_close(b.W_dec.norm(dim=1), torch.full((32,), 3.0))
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(32))
    _step(b, opt_b, batches[0])
    torch.testing.assert_close(b.W_dec.norm(dim=1), torch.ones(32))
