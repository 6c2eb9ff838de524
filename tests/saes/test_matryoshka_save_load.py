"""Saving, loading, resuming, input-scale folding, dtype and truncation of matryoshka SAEs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from sae_lens import SAE
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.sae import TrainingSAE, TrainStepInput
from sae_lens.training.sae_trainer import SAETrainer
from safetensors.torch import load_file

import sae_lens_maira  # noqa: F401
from sae_lens_maira.saes import (
    MatryoshkaSAE,
    MatryoshkaSAEConfig,
    MatryoshkaTrainingSAE,
    MatryoshkaTrainingSAEConfig,
)

D_IN, D_SAE, K, GROUPS = 16, 64, 3, [8, 24, 32]


def batches(n: int, batch: int = 32, scale: float = 1.0, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(40, D_IN, generator=g)
    out = []
    for _ in range(n):
        codes = torch.rand(batch, 40, generator=g) * (torch.rand(batch, 40, generator=g) < 0.1)
        out.append(scale * (codes @ dictionary + 0.05 * torch.randn(batch, D_IN, generator=g)))
    return out


def new_sae(**overrides: object) -> MatryoshkaTrainingSAE:
    torch.manual_seed(0)
    kwargs: dict = dict(
        d_in=D_IN,
        d_sae=D_SAE,
        k=K,
        group_sizes=GROUPS,
        threshold_start_step=1,
        dead_feature_threshold=64,
    )
    kwargs.update(overrides)
    return MatryoshkaTrainingSAE(MatryoshkaTrainingSAEConfig(**kwargs))


def trainer_for(sae: MatryoshkaTrainingSAE, data: list[torch.Tensor], **cfg: object) -> SAETrainer:
    kwargs: dict = dict(
        total_training_samples=sum(b.shape[0] for b in data),
        train_batch_size_samples=data[0].shape[0],
        lr=3e-3,
        lr_end=3e-3,
        device="cpu",
    )
    kwargs.update(cfg)
    trainer = SAETrainer(cfg=SAETrainerConfig(**kwargs), sae=sae, data_provider=iter(data))
    sae.constrain_optimizer(trainer.optimizer)
    return trainer


def train(sae: MatryoshkaTrainingSAE, data: list[torch.Tensor]) -> MatryoshkaTrainingSAE:
    trainer_for(sae, data).fit()
    return sae


def assert_same_sae(a: MatryoshkaSAE, b: MatryoshkaSAE, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a.encode(x), b.encode(x))
        torch.testing.assert_close(a(x), b(x))
    assert a.cfg.group_sizes == b.cfg.group_sizes and a.cfg.k == b.cfg.k


def test_inference_save_round_trips_through_load_from_disk(tmp_path: Path) -> None:
    sae = train(new_sae(), batches(4))
    sae.save_inference_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["architecture"] == "matryoshka"
    assert cfg["group_sizes"] == GROUPS and cfg["k"] == K
    assert set(load_file(tmp_path / "sae_weights.safetensors")) == {
        "W_enc",
        "b_enc",
        "W_dec",
        "b_dec",
        "threshold",
    }
    loaded = SAE.load_from_disk(tmp_path)
    assert isinstance(loaded, MatryoshkaSAE)
    assert float(loaded.threshold) > 0
    assert_same_sae(loaded, sae.to_inference_sae(), batches(1, seed=5)[0])


def test_training_checkpoint_loads_for_inference_and_for_training(tmp_path: Path) -> None:
    sae = train(new_sae(normalize_input=True), batches(3, scale=20.0))
    sae.save_model(tmp_path)
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg["normalize_input"] is True and cfg["architecture"] == "matryoshka"

    inference = SAE.load_from_disk(tmp_path)
    assert isinstance(inference, MatryoshkaSAE)
    x = batches(1, scale=20.0, seed=7)[0]
    assert_same_sae(inference, sae.to_inference_sae(), x)

    resumed = TrainingSAE.load_from_disk(tmp_path)
    assert isinstance(resumed, MatryoshkaTrainingSAE)
    for name in ("threshold", "num_tokens_since_fired", "norm_factor", "training_steps"):
        assert torch.equal(getattr(resumed, name), getattr(sae, name)), name
    assert int(resumed.training_steps) == 3


def test_inference_save_loads_as_training_sae_without_reinitialising(tmp_path: Path) -> None:
    sae = train(new_sae(), batches(3))
    sae.save_inference_model(tmp_path)
    resumed = TrainingSAE.load_from_disk(tmp_path)
    assert isinstance(resumed, MatryoshkaTrainingSAE)
    b_dec = resumed.b_dec.detach().clone()
    resumed.training_forward_pass(TrainStepInput(batches(1, seed=3)[0], {}, None, 0, False))
    torch.testing.assert_close(resumed.b_dec.detach(), b_dec)  # no geometric-median re-init
    assert int(resumed.num_tokens_since_fired.max()) == 32


def test_resuming_a_saetrainer_checkpoint_continues_exactly(tmp_path: Path) -> None:
    data = batches(6, seed=11)
    straight = train(new_sae(), data)

    first = new_sae()
    trainer = trainer_for(first, data, n_checkpoints=1, checkpoint_path=str(tmp_path))
    trainer.fit()
    checkpoints = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(checkpoints) == 1
    checkpoint = checkpoints[0]
    steps_done = int(load_file(checkpoint / "sae_weights.safetensors")["training_steps"])
    assert 0 < steps_done < 6

    resumed = new_sae()
    trainer = trainer_for(resumed, data[steps_done:])
    trainer.load_trainer_state(checkpoint)
    resumed.load_weights_from_checkpoint(checkpoint)
    trainer.cfg.total_training_samples = 6 * 32
    trainer.data_provider = iter(data[steps_done:])
    trainer.fit()
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_normalize_input_is_folded_into_biases_and_threshold() -> None:
    data = batches(4, scale=30.0)
    sae = train(new_sae(normalize_input=True), data)
    nf = float(sae.norm_factor)
    expected_nf = float(data[0].pow(2).sum(-1).mean().sqrt())
    assert nf == pytest.approx(expected_nf, rel=1e-5)

    inference = sae.to_inference_sae()
    torch.testing.assert_close(inference.W_dec.norm(dim=1), torch.ones(D_SAE))
    assert float(inference.threshold) == pytest.approx(float(sae.threshold) * nf, rel=1e-5)
    x = batches(1, scale=30.0, seed=4)[0]
    with torch.no_grad():
        post = torch.relu((x / nf - sae.b_dec) @ sae.W_enc + sae.b_enc)
        f_norm = post * (post > sae.threshold)
        torch.testing.assert_close(inference.encode(x), f_norm * nf, rtol=1e-5, atol=1e-4)
        recon = (f_norm @ sae.W_dec + sae.b_dec) * nf
        torch.testing.assert_close(inference(x), recon, rtol=1e-5, atol=1e-4)


def test_saelens_activation_scaler_fold_keeps_unit_norm_decoder() -> None:
    data = batches(4, scale=10.0)
    sae = new_sae(normalize_activations="expected_average_only_in")
    trainer = trainer_for(sae, data, n_batches_for_norm_estimate=2)
    # the scaler reads its estimate from the same iterator: give it extra batches
    trainer.data_provider = iter(batches(2, scale=10.0, seed=8) + data)
    trainer.fit()
    assert sae.cfg.normalize_activations == "none"
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(D_SAE))

    before = new_sae()
    with torch.no_grad():
        before.threshold.fill_(0.2)
    after = new_sae()
    after.load_state_dict(before.state_dict())
    after.fold_activation_norm_scaling_factor(4.0)
    x = batches(1, seed=2)[0]
    a, b = before.to_inference_sae(), after.to_inference_sae()
    with torch.no_grad():
        torch.testing.assert_close(b.encode(x), a.encode(4.0 * x) / 4.0)
        torch.testing.assert_close(b(x), a(4.0 * x) / 4.0, rtol=1e-5, atol=1e-5)


def test_bf16_keeps_threshold_and_norm_factor_in_fp32() -> None:
    sae = new_sae(normalize_input=True, threshold_start_step=0, threshold_beta=0.999)
    sae.to(torch.bfloat16)
    assert sae.W_enc.dtype == torch.bfloat16
    assert sae.threshold.dtype == torch.float32 and sae.norm_factor.dtype == torch.float32
    data = batches(3)
    for x in data:
        out = sae.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
        out.loss.backward()
    first = float(sae.threshold)
    sae.training_forward_pass(TrainStepInput(data[0] * 3, {}, None, 0, False))
    assert float(sae.threshold) != first  # a 0.1% EMA step survives (it would not in bf16)
    inference = SAE.from_dict(sae.to_inference_sae().cfg.to_dict())
    assert inference.threshold.dtype == torch.float32


def test_truncate_gives_the_nested_prefix_sae(tmp_path: Path) -> None:
    full = train(new_sae(), batches(4)).to_inference_sae()
    x = batches(1, seed=6)[0]
    small = full.truncate(2)
    assert small.cfg.d_sae == 32 and small.cfg.group_sizes == [8, 24]
    assert small.cfg.metadata.truncated_from_d_sae == D_SAE
    with torch.no_grad():
        f = full.encode(x)
        torch.testing.assert_close(small.encode(x), f[:, :32])
        prefix = f[:, :32] @ full.W_dec[:32] + full.b_dec
        torch.testing.assert_close(small(x), prefix)
    small.save_model(tmp_path)
    assert_same_sae(SAE.load_from_disk(tmp_path), small, x)
    assert full.truncate(3).cfg.d_sae == D_SAE
    for bad in (0, 4):
        with pytest.raises(ValueError, match="n_groups must be between 1 and 3"):
            full.truncate(bad)


def test_fold_w_dec_norm_is_a_no_op_for_unit_rows_and_refuses_otherwise() -> None:
    sae = MatryoshkaSAE(MatryoshkaSAEConfig(d_in=D_IN, d_sae=D_SAE, k=K, group_sizes=GROUPS))
    before = {k: v.clone() for k, v in sae.state_dict().items()}
    sae.fold_W_dec_norm()
    for k, v in sae.state_dict().items():
        assert torch.equal(v, before[k])
    with torch.no_grad():
        sae.W_dec[0] *= 3
    with pytest.raises(ValueError, match="not unit norm"):
        sae.fold_W_dec_norm()


def test_step_count_sees_every_change_to_the_buffer() -> None:
    """The host-side cache of ``training_steps`` (no GPU sync per step) never serves a stale count:
    the k-annealing schedule follows the buffer after fill_, load_state_dict and a new buffer."""
    sae = new_sae(k_anneal_start=9, k_anneal_steps=6)
    for x in batches(2):
        sae.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
    assert sae._step_count() == 2 and sae.current_k == sae.cfg.k_at_step(2)
    sae.training_steps.fill_(0)
    assert sae._step_count() == 0 and sae.current_k == 9
    state = {k: v.clone() for k, v in sae.state_dict().items()}
    state["training_steps"] = torch.tensor(5)
    sae.load_state_dict(state)
    assert sae._step_count() == 5
    sae.training_steps = torch.tensor(4)
    assert sae._step_count() == 4
    sae.training_forward_pass(TrainStepInput(batches(1)[0], {}, None, 0, False))
    assert int(sae.training_steps) == 5 and sae._step_count() == 5


def test_copied_sae_keeps_its_own_step_count() -> None:
    """A deep copy does not share the step-count cache with the original (whose buffer it holds)."""
    import copy

    sae = new_sae()
    sae.training_forward_pass(TrainStepInput(batches(1)[0], {}, None, 0, False))
    twin = copy.deepcopy(sae)
    twin.training_steps.fill_(7)
    assert twin._step_count() == 7 and sae._step_count() == 1
    twin.training_forward_pass(TrainStepInput(batches(1)[0], {}, None, 0, False))
    assert twin._step_count() == 8 and sae._step_count() == 1


def test_dead_latent_check_reads_the_device_only_when_needed(monkeypatch) -> None:
    """While a host-side bound keeps every counter below the dead threshold no step reads the
    counters (a GPU sync); any change to them from outside is still seen, and the dead count and
    AuxK then match a recount of the buffer."""
    sae = new_sae(dead_feature_threshold=10_000, top_k_aux=4)
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(1) or real_tolist(t))

    def step(x: torch.Tensor):
        reads.clear()
        out = sae.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
        recount = int((sae.num_tokens_since_fired >= 10_000).sum())
        return out, len(reads), recount

    xs = batches(5)
    out, n_reads, recount = step(xs[0])
    assert n_reads == 1 and out.metrics["dead_latents"] == recount == 0  # first step: no bound
    out, n_reads, recount = step(xs[1])
    assert n_reads == 0 and out.metrics["dead_latents"] == recount == 0
    with torch.no_grad():
        sae.num_tokens_since_fired[D_SAE // 2 :] = 20_000  # made dead from outside
    out, n_reads, recount = step(xs[2])
    assert n_reads == 1 and recount > 0 and out.metrics["dead_latents"] == recount
    assert float(out.losses["auxk_loss"].detach()) > 0
    state = {k: v.clone() for k, v in sae.state_dict().items()}
    state["num_tokens_since_fired"] = torch.zeros_like(state["num_tokens_since_fired"])
    sae.load_state_dict(state)  # revived by a load
    out, n_reads, recount = step(xs[3])
    assert n_reads == 1 and out.metrics["dead_latents"] == recount == 0
    out, n_reads, _ = step(xs[4])
    assert n_reads == 0


@pytest.mark.parametrize("decoder_impl", ["embedding_bag", "dense"])
def test_training_encoder_is_stored_latent_major_and_its_gradient_needs_no_copy(
    tmp_path: Path, decoder_impl: str
) -> None:
    """W_enc [d_in, d_sae] lives in a [d_sae, d_in] buffer so the sparse backward's latent-row
    gradient is taken as is; the layout survives checkpoints and the files stay row-major."""
    sae = new_sae(decoder_impl=decoder_impl)
    latent_major = (1, D_IN)
    assert sae.W_enc.shape == (D_IN, D_SAE) and sae.W_enc.stride() == latent_major
    out = sae.training_forward_pass(TrainStepInput(batches(1)[0], {}, None, 0, False))
    out.loss.backward()
    assert sae.W_enc.grad is not None and sae.W_enc.grad.stride() == latent_major
    sae.save_model(tmp_path)
    assert load_file(tmp_path / "sae_weights.safetensors")["W_enc"].is_contiguous()
    resumed = TrainingSAE.load_from_disk(tmp_path)
    assert resumed.W_enc.stride() == latent_major
    torch.testing.assert_close(resumed.W_enc, sae.W_enc)
    torch.testing.assert_close(sae.to_inference_sae().W_enc, sae.W_enc)
    with pytest.warns(UserWarning, match="never estimated"):  # one step: no threshold yet
        sae.save_inference_model(tmp_path / "inference")
    stored = load_file(tmp_path / "inference" / "sae_weights.safetensors")["W_enc"]
    assert stored.is_contiguous()
    torch.testing.assert_close(stored, sae.W_enc.detach())


def test_norm_factor_is_read_from_the_device_once(monkeypatch) -> None:
    """With normalize_input the step asks "is the norm factor estimated?" every step; after it is
    estimated the answer comes from the host cache, and a reset from outside is still seen."""
    sae = new_sae(normalize_input=True)
    reads = []
    real_float = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.append(1) or real_float(t))
    xs = batches(5, scale=20.0)

    def step(x: torch.Tensor) -> int:
        reads.clear()
        sae.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
        return len(reads)

    assert step(xs[0]) == 1 and float(sae.norm_factor) > 0  # estimated on the first step
    assert step(xs[1]) == 1  # read once to learn it is estimated
    estimated = float(sae.norm_factor)
    assert step(xs[2]) == 0 and float(sae.norm_factor) == estimated
    sae.norm_factor.fill_(0.0)  # reset from outside: estimated again from the next batch
    assert step(xs[3]) == 1 and float(sae.norm_factor) > 0
    assert float(sae.norm_factor) != estimated
