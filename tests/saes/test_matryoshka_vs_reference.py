"""The matryoshka SAE against an independent dense reference of dictionary_learning's formulas."""

from __future__ import annotations

import pytest
import torch
from matryoshka_reference import ReferenceMatryoshka
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer

import sae_lens_maira  # noqa: F401  (registers the architecture)
from sae_lens_maira.saes import (
    MatryoshkaSAE,
    MatryoshkaSAEConfig,
    MatryoshkaTrainingSAE,
    MatryoshkaTrainingSAEConfig,
)

D_IN, D_SAE, K, GROUPS = 24, 96, 4, [8, 24, 64]


def toy_batches(n_batches: int, batch: int, seed: int = 0) -> list[torch.Tensor]:
    """Sparse non-negative codes over a random dictionary plus noise: SAE-shaped data."""
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(48, D_IN, generator=g)
    out = []
    for _ in range(n_batches):
        codes = torch.rand(batch, 48, generator=g) * (torch.rand(batch, 48, generator=g) < 0.08)
        out.append(codes @ dictionary + 0.05 * torch.randn(batch, D_IN, generator=g) + 0.3)
    return out


def make_pair(**overrides: object) -> tuple[MatryoshkaTrainingSAE, ReferenceMatryoshka]:
    torch.manual_seed(0)
    kwargs: dict = dict(d_in=D_IN, d_sae=D_SAE, k=K, group_sizes=GROUPS)
    kwargs.update(overrides)
    lr = float(kwargs.pop("lr", 1e-3))
    cfg = MatryoshkaTrainingSAEConfig(**kwargs)
    sae = MatryoshkaTrainingSAE(cfg)
    with torch.no_grad():  # non-trivial biases so every term is exercised
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    ref = ReferenceMatryoshka(
        sae.W_enc,
        sae.b_enc,
        sae.W_dec,
        sae.b_dec,
        k=cfg.k,
        group_sizes=list(cfg.group_sizes or []),
        group_weights=list(cfg.group_weights or []),
        auxk_alpha=cfg.auxk_alpha,
        top_k_aux=cfg.top_k_aux,
        dead_feature_threshold=cfg.dead_feature_threshold,
        threshold_beta=cfg.threshold_beta,
        threshold_start_step=cfg.threshold_start_step,
        lr=lr,
    )
    return sae, ref


def saetrainer(sae: MatryoshkaTrainingSAE, batches: list[torch.Tensor], lr: float) -> SAETrainer:
    """SAELens's trainer over ``batches`` at a constant learning rate."""
    batch = batches[0].shape[0]
    trainer = SAETrainer(
        cfg=SAETrainerConfig(
            total_training_samples=len(batches) * batch,
            train_batch_size_samples=batch,
            lr=lr,
            lr_end=lr,
            device="cpu",
        ),
        sae=sae,
        data_provider=iter(batches),
    )
    sae.constrain_optimizer(trainer.optimizer)
    return trainer


def assert_same_parameters(sae: MatryoshkaTrainingSAE, ref: ReferenceMatryoshka) -> None:
    for ours, theirs in [
        (sae.W_enc, ref.W_enc),
        (sae.b_enc, ref.b_enc),
        (sae.W_dec, ref.W_dec),
        (sae.b_dec, ref.b_dec),
    ]:
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-4, atol=1e-5)


def test_init_is_dictionary_learnings() -> None:
    sae, _ = make_pair()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))
    torch.testing.assert_close(sae.W_enc, sae.W_dec.T)
    fresh = MatryoshkaTrainingSAE(MatryoshkaTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K))
    assert torch.count_nonzero(fresh.b_enc) == 0 and torch.count_nonzero(fresh.b_dec) == 0
    assert float(fresh.threshold) == -1.0
    scaled = MatryoshkaTrainingSAE(
        MatryoshkaTrainingSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, encoder_init_scale=0.1)
    )
    torch.testing.assert_close(scaled.W_enc, 0.1 * scaled.W_dec.T)


@pytest.mark.parametrize("decoder_impl", ["auto", "embedding_bag", "dense", "triton"])
def test_loss_and_gradients_match_reference(decoder_impl: str) -> None:
    sae, ref = make_pair(
        decoder_impl=decoder_impl,
        group_weights=[0.5, 0.3, 0.2],
        threshold_start_step=0,
        dead_feature_threshold=64,
        top_k_aux=5,
    )
    # some latents have not fired for a while: they are dead after this step's 32 tokens
    stale = torch.zeros(D_SAE, dtype=torch.long)
    stale[40:90] = 40
    sae.num_tokens_since_fired.copy_(stale)
    ref.num_tokens_since_fired.copy_(stale)
    sae.training_steps.fill_(3)  # past step 0, so b_dec is not re-initialised
    x = toy_batches(1, 32)[0]

    out = sae.training_forward_pass(TrainStepInput(x, {}, None, 3, False))
    ref_loss, parts = ref.loss(x, 3)
    assert out.metrics["dead_latents"] > 0
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.losses["mse_loss"], parts["mse"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        out.losses["auxk_loss"], ref.auxk_alpha * parts["auxk"], rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(out.sae_out, parts["recon"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.feature_acts.to_dense(), parts["f"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae.threshold, ref.threshold.float())
    assert torch.equal(sae.num_tokens_since_fired, ref.num_tokens_since_fired)

    out.loss.backward()
    ref_loss.backward()
    with torch.no_grad():  # our hook already removed the decoder-parallel component
        w_hat = ref.W_dec / (ref.W_dec.norm(dim=1, keepdim=True) + 1e-6)
        ref.W_dec.grad -= (ref.W_dec.grad * w_hat).sum(1, keepdim=True) * w_hat
    for ours, theirs in [
        (sae.W_enc, ref.W_enc),
        (sae.b_enc, ref.b_enc),
        (sae.W_dec, ref.W_dec),
        (sae.b_dec, ref.b_dec),
    ]:
        assert ours.grad is not None and theirs.grad is not None
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6)
    parallel = (sae.W_dec.grad * sae.W_dec).sum(dim=1)
    assert parallel.abs().max() < 1e-6


def test_training_through_saetrainer_follows_reference() -> None:
    """Six SAETrainer steps (geometric-median b_dec, threshold EMA, AuxK, unit-norm decoder)."""
    batch, steps, lr = 32, 6, 3e-3
    sae, ref = make_pair(
        threshold_start_step=2,
        threshold_beta=0.9,
        dead_feature_threshold=2 * batch,
        group_weights=[0.2, 0.3, 0.5],
        lr=lr,
    )
    batches = toy_batches(steps, batch, seed=1)
    saetrainer(sae, batches, lr).fit()
    for step, x in enumerate(batches):
        ref.update(step, x)

    assert float(ref.threshold) > 0
    torch.testing.assert_close(sae.threshold, ref.threshold.float(), rtol=1e-4, atol=1e-6)
    assert torch.equal(sae.num_tokens_since_fired, ref.num_tokens_since_fired)
    assert_same_parameters(sae, ref)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))

    inference = sae.to_inference_sae()
    x = toy_batches(1, 64, seed=9)[0]
    with torch.no_grad():
        f_ref = ref.encode(x, use_threshold=True)
        torch.testing.assert_close(inference.encode(x), f_ref, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(inference.decode(f_ref), ref.decode(f_ref), rtol=1e-4, atol=1e-5)


def test_k_annealing_trains_as_the_reference_with_each_steps_k() -> None:
    """With k annealing, step t is dictionary_learning's step with k = 12, 10, 8, 6, 4, 4; the
    threshold EMA starts once k is final."""
    batch, steps, lr = 32, 6, 3e-3
    ks = [12, 10, 8, 6, 4, 4]  # k + round((12 - k) * (1 - t / 4)), written out
    sae, ref = make_pair(
        k_anneal_start=12,
        k_anneal_steps=4,
        threshold_start_step=0,
        threshold_beta=0.5,
        lr=lr,
    )
    ref.threshold_start_step = 3  # no EMA while k > 4
    batches = toy_batches(steps, batch, seed=2)
    trainer = saetrainer(sae, batches, lr)
    seen_k: list[int] = []
    original = sae.training_forward_pass

    def record(step_input: TrainStepInput):  # type: ignore[no-untyped-def]
        seen_k.append(sae.current_k)
        out = original(step_input)
        assert int(out.feature_acts.to_dense().gt(0).sum()) <= out.metrics["k"] * batch
        assert out.metrics["k"] == seen_k[-1]
        return out

    sae.training_forward_pass = record  # type: ignore[method-assign]
    trainer.fit()
    for step, (x, k) in enumerate(zip(batches, ks, strict=True)):
        ref.k = k
        ref.update(step, x)

    assert seen_k == ks
    assert float(ref.threshold) > 0
    torch.testing.assert_close(sae.threshold, ref.threshold.float(), rtol=1e-4, atol=1e-6)
    assert_same_parameters(sae, ref)


def test_inference_encode_decode_match_reference_formulas() -> None:
    torch.manual_seed(3)
    cfg = MatryoshkaSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, group_sizes=GROUPS)
    sae = MatryoshkaSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_enc.normal_(0, 0.5)
        sae.b_dec.normal_()
        sae.threshold.fill_(1.3)
    ref = ReferenceMatryoshka(
        sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec, k=K, group_sizes=GROUPS, threshold=1.3
    )
    x = torch.randn(5, 7, D_IN)  # leading dims are kept
    with torch.no_grad():
        f = sae.encode(x)
        f_ref = ref.encode(x.reshape(-1, D_IN)).reshape(5, 7, D_SAE)
        torch.testing.assert_close(f, f_ref)
        assert 0 < int((f > 0).sum()) < f.numel()
        assert float(f[f > 0].min()) > 1.3
        torch.testing.assert_close(sae.decode(f), ref.decode(f_ref))
        torch.testing.assert_close(sae(x), ref.decode(f_ref))


def test_untrained_threshold_keeps_every_positive_activation() -> None:
    sae = MatryoshkaSAE(MatryoshkaSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, group_sizes=GROUPS))
    x = torch.randn(4, D_IN)
    with torch.no_grad():
        post = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        torch.testing.assert_close(sae.encode(x), post)


def test_training_encode_is_batch_topk() -> None:
    sae, ref = make_pair()
    x = toy_batches(1, 16)[0]
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), ref.encode(x, use_threshold=False))
        assert int((sae.encode(x) > 0).sum()) <= K * 16


def test_dense_aux_loss_api_matches_sparse_training_pass() -> None:
    sae, _ = make_pair(dead_feature_threshold=10, top_k_aux=6)
    sae.num_tokens_since_fired[50:] = 1000
    sae.training_steps.fill_(4)
    x = toy_batches(1, 32)[0]
    out = sae.training_forward_pass(TrainStepInput(x, {}, None, 4, False))
    with torch.no_grad():
        feature_acts, hidden_pre = sae.encode_with_hidden_pre(x)
        sae_out = sae.decode(feature_acts)
        aux = sae.calculate_aux_loss(
            TrainStepInput(x, {}, None, 4, False), feature_acts, hidden_pre, sae_out
        )
    assert float(out.losses["auxk_loss"].detach()) > 0
    torch.testing.assert_close(
        aux["auxk_loss"], out.losses["auxk_loss"].detach(), rtol=1e-5, atol=1e-7
    )


def test_bf16_autocast_step_matches_fp32_closely() -> None:
    sae, _ = make_pair(threshold_start_step=0)
    sae.training_steps.fill_(2)
    x = toy_batches(1, 32)[0]
    state = {k: v.clone() for k, v in sae.state_dict().items()}
    fp32 = sae.training_forward_pass(TrainStepInput(x, {}, None, 2, False))
    sae.load_state_dict(state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = sae.training_forward_pass(TrainStepInput(x, {}, None, 2, False))
    bf16.loss.backward()
    assert sae.W_dec.grad is not None and sae.W_dec.grad.dtype == torch.float32
    torch.testing.assert_close(bf16.loss.float(), fp32.loss.float(), rtol=0.05, atol=1e-3)
