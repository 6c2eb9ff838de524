"""`train --resume` after a kill during a checkpoint, and NaN batches that stop (or are skipped)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch

from sae_lens_maira.activations.cache import CacheConfig, cache_activations
from sae_lens_maira.training.checkpoints import MARKER, latest_checkpoint
from sae_lens_maira.training.commands import train_sae
from sae_lens_maira.training.nonfinite import NonFiniteGuard, NonFiniteTrainingError
from tests.training.test_runner import HOOK, _exp

# The child trains; on the trainer's second checkpoint it stops after the SAE weights are written
# and before the trainer state, writes a marker file and waits to be SIGKILLed.
CHILD = r"""
import os, sys, time
from pathlib import Path
from sae_lens.training.sae_trainer import SAETrainer
from sae_lens_maira.experiment import Experiment
from sae_lens_maira.training.commands import train_sae

marker, config = sys.argv[1:3]
real = SAETrainer.save_trainer_state
calls = []

def torn(self, path):
    calls.append(path)
    if len(calls) == 2:
        Path(marker).write_text(f"{os.getpid()} {path}")
        while True:
            time.sleep(0.05)
    return real(self, path)

SAETrainer.save_trainer_state = torn
train_sae(Experiment.from_yaml(config))
"""


@pytest.fixture(scope="module")
def cached(tmp_path_factory, hub_checkpoint, manifest):
    tmp = tmp_path_factory.mktemp("crash")
    os.environ.setdefault("WANDB_DIR", str(tmp))
    exp = _exp(tmp, hub_checkpoint, manifest)
    spec = exp.section("cache")
    spec["output_dir"] = str(exp.path(spec["output_dir"]))
    model = exp.load_model()
    cache_activations(model, exp.load_processor(), exp.load_studies(), CacheConfig(**spec),
                      show_progress=False)  # fmt: skip
    return tmp, model


def _copy_exp(cached, tmp_path, hub_checkpoint, manifest, **train):
    src, _ = cached
    shutil.copytree(src / "acts", tmp_path / "acts")
    return _exp(tmp_path, hub_checkpoint, manifest, **train)


@pytest.mark.slow
def test_kill_during_a_checkpoint_then_resume_uses_the_last_complete_one(
    cached, tmp_path, hub_checkpoint, manifest
):
    exp = _copy_exp(cached, tmp_path, hub_checkpoint, manifest, n_checkpoints=2, wandb=False)
    marker = tmp_path / "marker"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), str(tmp_path / "exp.yaml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        while not marker.is_file():
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read()[-3000:])
            time.sleep(0.1)
        time.sleep(0.1)
        pid, torn_path = marker.read_text().split(" ", 1)
        os.kill(int(pid), signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    checkpoints = tmp_path / "checkpoints"
    folders = sorted(
        (p for p in checkpoints.glob("*/*") if p.name.isdigit()), key=lambda p: int(p.name)
    )
    assert len(folders) == 2
    first, torn = folders
    assert str(torn) == torn_path and (torn / "sae_weights.safetensors").is_file()
    assert not (torn / "trainer_state.pt").exists() and not (torn / MARKER).exists()
    assert (first / MARKER).is_file()
    assert torn.stat().st_mtime >= first.stat().st_mtime  # newest by time, but torn
    assert latest_checkpoint(checkpoints) == first
    result = train_sae(exp, resume=True)
    assert (result.output_path / "sae_weights.safetensors").is_file()
    state = (
        json.loads((first / "runner_cfg.json").read_text())
        if (first / "runner_cfg.json").is_file()
        else {}
    )
    assert state.get("hook_name", HOOK) == HOOK
    # the resumed run wrote its own complete checkpoints under a new run id
    resumed = [p for p in checkpoints.glob("*/*") if p.parent != first.parent and p.name.isdigit()]
    assert resumed and all((p / MARKER).is_file() for p in resumed)
    # with only torn checkpoints, --resume says so instead of failing inside SAELens
    for p in [first, *resumed]:
        shutil.rmtree(p)
    with pytest.raises(
        FileNotFoundError,
        match=r"no complete checkpoint under .*incomplete: .*no completion marker",
    ):
        train_sae(exp, resume=True)


def _nan_cache(tmp_path) -> None:
    """Put one NaN into the 3rd row of the copied cache."""
    folder = tmp_path / "acts"
    ds = datasets.load_from_disk(str(folder))
    cols = {c: np.asarray(ds[c]) for c in ds.column_names}
    cols[HOOK][2, 5, 7] = np.nan
    bad = datasets.Dataset.from_dict(cols, features=ds.features)
    bad.save_to_disk(str(tmp_path / "acts_nan"))
    shutil.copy(folder / "cache_info.json", tmp_path / "acts_nan" / "cache_info.json")
    del ds
    shutil.rmtree(folder)
    (tmp_path / "acts_nan").rename(folder)


def test_a_nan_batch_stops_training_naming_step_and_source(
    cached, tmp_path, hub_checkpoint, manifest
):
    exp = _copy_exp(cached, tmp_path, hub_checkpoint, manifest, wandb=False)
    _nan_cache(tmp_path)
    with pytest.raises(NonFiniteTrainingError, match=r"training step \d+: the activation batch contains NaN or inf "
                       r"\(batch from the activation cache at .*acts\)"):  # fmt: skip
        train_sae(exp)
    assert not (tmp_path / "sae" / "sae_weights.safetensors").exists()  # no NaN SAE saved
    # the CLI exits non-zero with the same one-line message
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "sae_lens_maira.cli", "train", "--config", str(tmp_path / "exp.yaml")],
                       capture_output=True, text=True, env=env, timeout=900)  # fmt: skip
    assert r.returncode == 1
    errors = re.findall(r"error: [^\r\n]*", r.stderr)  # a progress bar may precede it
    assert len(errors) == 1 and errors[0].startswith("error: training step ")  # bars aside
    assert "NaN or inf" in errors[0] and "Traceback" not in r.stderr


def test_skip_bad_batches_counts_them_and_finishes(cached, tmp_path, hub_checkpoint, manifest):
    exp = _copy_exp(cached, tmp_path, hub_checkpoint, manifest, wandb=False, skip_bad_batches=True,
                    training_tokens=4000)  # fmt: skip
    _nan_cache(tmp_path)
    result = train_sae(exp)
    assert result.metrics["training/skipped_nonfinite_batches"] >= 1
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(result.output_path))
    assert all(torch.isfinite(p).all() for p in sae.parameters())


def test_guard_stops_on_a_non_finite_loss_before_any_save():
    calls = []

    def forward(step_input):
        return SimpleNamespace(
            loss=torch.tensor(float("inf") if step_input.n_training_steps == 3 else 1.0)
        )

    runner = SimpleNamespace(
        sae=SimpleNamespace(training_forward_pass=forward),
        save_checkpoint=lambda path: calls.append(("ck", path)),
        save_final_sae=lambda *a, **k: calls.append(("final",)),
        activations_store=None,
    )
    guard = NonFiniteGuard(
        "a test stream", check_every=10
    )  # deferred: recorded on device, read later
    guard.install(runner)
    for step in range(5):
        runner.sae.training_forward_pass(
            SimpleNamespace(n_training_steps=step, sae_in=torch.ones(2, 3))
        )
    with pytest.raises(NonFiniteTrainingError, match=r"training step 3: the loss contains NaN or inf \(batch from a test stream\).*lower train.lr"):  # fmt: skip
        runner.save_checkpoint("x")
    with pytest.raises(NonFiniteTrainingError):
        runner.save_final_sae()
    assert calls == []
    guard = NonFiniteGuard("s", check_every=1)
    runner.sae.training_forward_pass = forward
    guard.install(runner)
    with pytest.raises(NonFiniteTrainingError, match="training step 0: the activation batch"):
        runner.sae.training_forward_pass(
            SimpleNamespace(n_training_steps=0, sae_in=torch.tensor([[1.0, float("nan")]]))
        )


@pytest.mark.slow
def test_ctrl_c_during_training_saves_a_checkpoint_that_resume_continues(
    cached, tmp_path, hub_checkpoint, manifest, monkeypatch
):
    from sae_lens.training.sae_trainer import SAETrainer

    exp = _copy_exp(cached, tmp_path, hub_checkpoint, manifest, wandb=False)
    real, steps = SAETrainer._train_step, []

    def step_then_ctrl_c(self, *args, **kwargs):
        steps.append(1)
        if len(steps) == 3:  # a real SIGINT, caught by the handler SAELens installs
            os.kill(os.getpid(), signal.SIGINT)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SAETrainer, "_train_step", step_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    # was: SAELens's save on interrupt failed (the folder did not exist), then its private
    # InterruptedException surfaced; its SIGINT handler stayed installed after the run
    with pytest.raises(KeyboardInterrupt, match="train --resume"):
        train_sae(exp)
    assert signal.getsignal(signal.SIGINT) is before
    saved = latest_checkpoint(tmp_path / "checkpoints")
    assert saved is not None and (saved / "trainer_state.pt").is_file()
    monkeypatch.undo()
    result = train_sae(exp, resume=True)
    assert (result.output_path / "sae_weights.safetensors").is_file()
