"""End-to-end SAE training through SAELens's LanguageModelSAETrainingRunner on multimodal studies."""

import json

import datasets
import pytest
import torch
import yaml

from sae_lens_maira.experiment import Experiment
from sae_lens_maira.training.commands import latest_checkpoint, train_sae, training_sae_config

HOOK = "blocks.1.hook_resid_post"


def _exp(tmp_path, hub_checkpoint, manifest, **train):
    cfg = {
        "model": {"checkpoint": str(hub_checkpoint), "device": "cpu"},
        "data": {"source": "manifest", "path": str(manifest)},
        "cache": {
            "hook_name": HOOK,
            "output_dir": "acts",
            "context_size": 16,
            "batch_size": 4,
            "shard_studies": 8,
        },
        "sae": {
            "architecture": "matryoshka",
            "expansion_factor": 4,
            "k": 8,
            "group_fractions": [0.125, 0.375, 0.5],
            "threshold_start_step": 10,
        },
        "train": {
            "training_tokens": 12_000,
            "train_batch_size_tokens": 128,
            "lr": 3e-3,
            "store_batch_size_prompts": 2,
            "n_batches_in_buffer": 16,
            "n_checkpoints": 1,
            "n_eval_batches": 2,
            "wandb": True,
            "wandb_log_frequency": 5,
            "eval_every_n_wandb_logs": 1000,
            **train,
        },
    }
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(cfg))
    return Experiment.from_yaml(tmp_path / "exp.yaml")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, hub_checkpoint, manifest):
    import os

    tmp = tmp_path_factory.mktemp("train")
    os.environ["WANDB_DIR"] = str(tmp)
    exp = _exp(tmp, hub_checkpoint, manifest)
    from sae_lens_maira.activations.cache import CacheConfig, cache_activations

    model, processor = exp.load_model(), exp.load_processor()
    spec = exp.section("cache")
    spec["output_dir"] = str(exp.path(spec["output_dir"]))
    cache_activations(
        model, processor, exp.load_studies(), CacheConfig(**spec), show_progress=False
    )
    result = train_sae(exp, model=model, processor=processor)
    return exp, model, result


@pytest.mark.slow
def test_training_through_the_runner_lowers_loss_and_raises_explained_variance(trained):
    exp, model, result = trained
    acts = torch.tensor(datasets.load_from_disk(str(exp.path("acts")))[HOOK][:4]).reshape(
        -1, model.cfg.d_model
    )
    from sae_lens import TrainingSAE
    from sae_lens.saes.sae import TrainStepInput

    torch.manual_seed(0)
    fresh = TrainingSAE.from_dict(
        training_sae_config(exp.section("sae"), model.cfg.d_model, HOOK).to_dict()
    )
    trained_sae = TrainingSAE.load_from_disk(str(latest_checkpoint(result.checkpoint_path)))

    def loss_and_ev(sae):
        with torch.no_grad():
            out = sae.training_forward_pass(TrainStepInput(acts, {}, None, 0, False))
        resid = (acts - out.sae_out).pow(2).sum()
        ev = 1 - resid / (acts - acts.mean(0)).pow(2).sum()
        return out.loss.item(), ev.item()

    # the runner attached the decoder renormalisation to SAETrainer's optimizer
    norms = trained_sae.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    loss0, ev0 = loss_and_ev(fresh)
    loss1, ev1 = loss_and_ev(trained_sae)
    assert loss1 < 0.5 * loss0 and ev1 > ev0 + 0.2 and ev1 > 0.5
    m = result.metrics
    assert (
        m["model_performance_preservation/ce_loss_with_sae"] > 0
        and "model_behavior_preservation/kl_div_with_sae" in m
    )
    assert 0 < m["sparsity/l0"] <= 8.5 and 0 <= m["sparsity/dead_latents_fraction"] < 1
    assert (result.output_path / "cfg.json").is_file() and (
        result.output_path / "eval_metrics.json"
    ).is_file()
    cfg = json.loads((result.output_path / "cfg.json").read_text())
    assert cfg["metadata"]["hook_name"] == HOOK and cfg["d_in"] == model.cfg.d_model


@pytest.mark.slow
def test_training_lists_the_study_it_could_not_read(trained):
    """The manifest's s4 has a broken PNG: left out of training's prompts, listed with its reason."""
    _, _, result = trained
    assert [(s.study_id, s.reason) for s in result.skipped_studies] == [("s4", "unreadable_image")]
    report = json.loads((result.output_path / "skipped_studies.json").read_text())
    assert report["n_studies"] == 9 and report["skipped_studies"][0]["study_id"] == "s4"


@pytest.mark.slow
def test_resume_from_checkpoint(trained, tmp_path):
    exp, model, result = trained
    ck = latest_checkpoint(result.checkpoint_path)
    assert ck is not None and (ck / "trainer_state.pt").is_file()
    again = train_sae(exp, model=model, processor=exp.load_processor(), resume=True)
    assert (again.output_path / "sae_weights.safetensors").is_file()


@pytest.mark.slow
def test_rerunning_train_refuses_to_replace_a_finished_sae(trained):
    """Same config twice: the second run stops before loading anything, the SAE is untouched,
    and the CLI says how to go on (--overwrite or another output_dir) in one line."""
    import os
    import subprocess
    import sys

    from sae_lens_maira.training.commands import FINISHED_FILE, refuse_to_replace

    exp, _, result = trained
    weights = result.output_path / "sae_weights.safetensors"
    before = weights.read_bytes()
    assert (result.output_path / FINISHED_FILE).is_file()
    with pytest.raises(FileExistsError, match=r"already trained in .*pass --overwrite"):
        refuse_to_replace(result.output_path, resume=False, overwrite=False)
    refuse_to_replace(result.output_path, resume=False, overwrite=True)  # asked for: no error
    refuse_to_replace(result.output_path, resume=True, overwrite=False)
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "sae_lens_maira.cli", "train", "--config",
                        str(exp.base_dir / "exp.yaml")], capture_output=True, text=True, env=env,
                       timeout=600)  # fmt: skip
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: an SAE is already trained in ")
    assert "--overwrite" in r.stderr and weights.read_bytes() == before


def test_mismatched_cache_and_missing_cache_are_clear(hub_checkpoint, manifest, tmp_path):
    exp = _exp(tmp_path, hub_checkpoint, manifest)
    with pytest.raises(FileNotFoundError, match="no finished activation cache"):
        train_sae(exp)
    exp2 = _exp(tmp_path, hub_checkpoint, manifest, hook_name="blocks.0.hook_resid_post")
    (tmp_path / "acts").mkdir()
    (tmp_path / "acts" / "cache_info.json").write_text(
        json.dumps({"hook_name": HOOK, "d_in": 64, "context_size": 8})
    )
    with pytest.raises(ValueError, match="rebuild the cache"):
        train_sae(exp2)
    exp3 = _exp(tmp_path, hub_checkpoint, manifest)
    exp3.raw["sae"]["d_sae"] = 32
    exp3.raw["sae"]["d_in"] = 48
    with pytest.raises(
        ValueError,
        match="the SAE reads d_in=48 but blocks.1.hook_resid_post of this model has width 64",
    ):
        train_sae(exp3)


def test_train_without_a_wandb_login_logs_offline_and_says_where(
    trained, tmp_path, monkeypatch
):
    """wandb asked for, no login anywhere: the run goes offline instead of raising UsageError."""
    from sae_lens_maira.training.wandb_setup import has_wandb_login, resolve_wandb

    exp, model, _ = trained
    for key in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_DIR", "NETRC", "WANDB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    assert not has_wandb_login()
    assert resolve_wandb(False, tmp_path).mode == "off"
    exp.raw["train"].update(wandb=True, wandb_dir=str(tmp_path / "logs"), training_tokens=2_000,
                            output_dir=str(tmp_path / "sae"), checkpoint_dir=str(tmp_path / "ck"))  # fmt: skip
    result = train_sae(exp, model=model, processor=exp.load_processor())
    assert result.wandb is not None and result.wandb.mode == "offline"
    run = result.wandb.latest_run_dir()
    assert run is not None and run.name.startswith("offline-run-")
    assert run.is_relative_to(tmp_path / "logs")
    assert f"wandb sync {run}" in result.wandb.describe()
    assert "WANDB_MODE" not in __import__("os").environ  # restored after the run
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password " + "k" * 40 + "\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert has_wandb_login() and resolve_wandb(True, tmp_path).mode == "online"


@pytest.mark.slow
def test_wandb_is_off_unless_asked_for(trained, tmp_path):
    exp, model, _ = trained
    exp.raw["train"].pop("wandb")
    exp.raw["train"].update(training_tokens=2_000, output_dir=str(tmp_path / "sae"),
                            checkpoint_dir=str(tmp_path / "ck"), wandb_dir=str(tmp_path / "logs"))  # fmt: skip
    result = train_sae(exp, model=model, processor=exp.load_processor())
    assert result.wandb.mode == "off" and not (tmp_path / "logs").exists()
    assert "train.wandb: true" in result.wandb.describe()


def test_a_cache_with_fewer_rows_than_one_read_is_a_clear_error(hub_checkpoint, manifest, tmp_path):
    exp = _exp(tmp_path, hub_checkpoint, manifest, store_batch_size_prompts=4)
    (tmp_path / "acts").mkdir()
    (tmp_path / "acts" / "cache_info.json").write_text(
        json.dumps({"hook_name": HOOK, "d_in": 64, "context_size": 16, "n_rows": 1,
                    "selection": "study"})  # fmt: skip
    )
    with pytest.raises(ValueError, match="holds 1 row.*set train.store_batch_size_prompts: 1"):
        train_sae(exp)
