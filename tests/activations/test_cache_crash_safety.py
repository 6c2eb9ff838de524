"""The activation cache survives SIGKILL at every on-disk phase, refuses concurrent runs, and
refuses a resume whose inputs (studies, world size) differ from the interrupted run's."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest

from sae_lens_maira.activations import cache as cache_mod
from sae_lens_maira.activations.cache import CacheConfig, cache_activations
from sae_lens_maira.activations.commands import cache_from_experiment
from sae_lens_maira.activations.output_lock import OutputLockedError
from sae_lens_maira.experiment import Experiment

COLUMNS = ("blocks.1.hook_resid_post", "token_ids", "roles", "study_index", "positions")

# Run in a child process: the cache, with one function wrapped so that the process writes a marker
# file and waits at a chosen point of a chosen phase. The test SIGKILLs it there by PID.
CHILD = r"""
import os, sys, time, shutil
from pathlib import Path
import sae_lens.cache_activations_runner as runner
from sae_lens_maira.activations import cache as cache_mod
from sae_lens_maira.activations.commands import cache_from_experiment
from sae_lens_maira.experiment import Experiment

phase, marker, config = sys.argv[1:4]
calls = {}

def stop_here():
    Path(marker).write_text(str(os.getpid()))
    while not Path(marker + ".go").exists():  # never created for a kill: the test kills us here
        time.sleep(0.05)

def after(n, fn, when=lambda *a: True):
    def wrapped(*args, **kwargs):
        result = fn(*args, **kwargs)
        if when(*args):
            calls[fn] = calls.get(fn, 0) + 1
            if calls[fn] == n:
                stop_here()
        return result
    return wrapped

def before(fn, when):
    def wrapped(*args, **kwargs):
        if when(*args):
            stop_here()
        return fn(*args, **kwargs)
    return wrapped

if phase == "shard":  # shard 2's rows saved under .partial, its tail and progress not yet written
    cache_mod._save_quietly = after(2, cache_mod._save_quietly)
elif phase == "merge":  # rank shards half linked into staging
    cache_mod._link_or_copy = after(3, cache_mod._link_or_copy)
elif phase == "consolidate":  # SAELens's consolidation half done inside final.partial
    runner.shutil.move = after(2, shutil.move)
elif phase == "publish":  # final renamed, one of its files moved into the output folder
    cache_mod.os.replace = after(1, os.replace, lambda src, dst: Path(src).parent.name == "final")
elif phase == "cleanup":  # cache_info.json committed, the work folder not yet removed
    cache_mod.shutil.rmtree = before(shutil.rmtree, lambda p, *a: Path(p).name == ".tmp_shards")
cache_from_experiment(Experiment.from_yaml(config))
"""


def _start(phase: str, config: Path, marker: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, phase, str(marker), str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(marker: Path, proc: subprocess.Popen) -> int:
    """Wait until the child reports it reached its point (no time limit decides the result)."""
    while not marker.is_file():
        if proc.poll() is not None:
            raise AssertionError(
                f"child exited early ({proc.returncode}): {proc.stderr.read()[-3000:]}"
            )
        time.sleep(0.05)
    time.sleep(0.05)
    return int(marker.read_text())


def _rows(path: Path) -> dict[str, np.ndarray]:
    ds = datasets.load_from_disk(str(path))
    return {c: np.asarray(ds[c]) for c in COLUMNS}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Children run with one thread; so does this process, for bit-equal activations."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def uninterrupted(one_thread, experiment_yaml):
    config = experiment_yaml("acts")
    cache_from_experiment(Experiment.from_yaml(config))
    out = config.parent / "acts"
    return _rows(out), json.loads((out / "cache_info.json").read_text()), out


def _on_disk(phase: str, out: Path) -> bool:
    """The folder's state at the kill shows the phase the child was in."""
    work = out / ".tmp_shards"
    if phase == "shard":
        return (work / "rank000" / "shard_00001.partial").is_dir()
    if phase == "merge":
        return (work / "staging" / "shard_00000").is_dir() and not (work / "final").exists()
    if phase == "consolidate":
        return (work / "final.partial" / "dataset_info.json").is_file()
    if phase == "publish":
        return (work / "final").is_dir() and any(out.glob("data-*.arrow"))
    if phase == "cleanup":
        return (out / "cache_info.json").is_file() and work.is_dir()
    raise ValueError(phase)


@pytest.mark.parametrize("phase", ["shard", "merge", "consolidate", "publish", "cleanup"])
def test_sigkill_at_each_phase_then_rerun_equals_uninterrupted(
    phase, uninterrupted, experiment_yaml, tmp_path
):
    config = experiment_yaml("acts")
    out = config.parent / "acts"
    marker = tmp_path / "marker"
    proc = _start(phase, config, marker)
    pid = _wait_for(marker, proc)
    assert pid == proc.pid
    assert _on_disk(phase, out), sorted(p.name for p in out.rglob("*"))
    holder = json.loads((out / ".lock").read_text())
    assert holder["pid"] == proc.pid
    os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # the same command again: the dead run's lock is free, the cache is finished identically
    result = cache_from_experiment(Experiment.from_yaml(config))
    rows, info, ref_dir = uninterrupted
    got = _rows(out)
    for col in COLUMNS:
        assert np.array_equal(got[col], rows[col]), col
    resumed_info = json.loads((out / "cache_info.json").read_text())
    assert resumed_info == info
    assert result.n_rows == info["n_rows"] and result.skipped == info["skipped"]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in ref_dir.iterdir())
    assert not (out / ".tmp_shards").exists() and not (out / ".lock").exists()


def test_second_concurrent_run_refuses_naming_the_holder(uninterrupted, experiment_yaml, tmp_path):
    config = experiment_yaml("acts")
    out = config.parent / "acts"
    marker = tmp_path / "marker"
    proc = _start("shard", config, marker)
    try:
        pid = _wait_for(marker, proc)
        with pytest.raises(
            OutputLockedError, match=f"in use by another activation cache run \\(pid {pid} on host "
        ):
            cache_from_experiment(Experiment.from_yaml(config))
        (tmp_path / "marker.go").write_text("")  # let the first run finish
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-3000:]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    rows, info, _ = uninterrupted
    got = _rows(out)
    for col in COLUMNS:
        assert np.array_equal(got[col], rows[col]), col  # no duplicated rows
    assert json.loads((out / "cache_info.json").read_text())["n_rows"] == info["n_rows"]


@pytest.fixture(scope="module")
def setup(experiment_yaml):
    exp = Experiment.from_yaml(experiment_yaml("unused"))
    return exp.load_model("cpu"), exp.load_processor(), exp.load_studies()


def _interrupted(setup, out: Path, monkeypatch, **cfg) -> CacheConfig:
    """A run killed after its first shard (an exception stands in for the kill)."""
    model, processor, studies = setup
    config = CacheConfig(hook_name=COLUMNS[0], output_dir=str(out), context_size=16, batch_size=2,
                         shard_studies=2, **cfg)  # fmt: skip
    real = cache_mod._process_shard
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "_process_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(model, processor, studies, config, show_progress=False)
    monkeypatch.setattr(cache_mod, "_process_shard", real)
    return config


def test_resume_with_an_edited_manifest_refuses_saying_what_changed(setup, tmp_path, monkeypatch):
    model, processor, studies = setup
    config = _interrupted(setup, tmp_path / "c", monkeypatch)
    edited = list(studies[:-1])  # one study removed ...
    edited[3] = type(edited[3])(
        **{**vars(edited[3]), "findings": "Edited report."}
    )  # ... one edited
    with pytest.raises(ValueError, match=r"unfinished cache started from other inputs: 1 studies removed "
                       r"\(e\.g\. s8\); 1 studies with other images or text \(e\.g\. s3\).*delete .*\.tmp_shards"):  # fmt: skip
        cache_activations(model, processor, edited, config, show_progress=False)
    rank_dir = tmp_path / "c" / ".tmp_shards" / "rank000"
    assert (rank_dir / "shard_00000").is_dir()  # nothing of the interrupted run was deleted
    # the original manifest resumes it
    result = cache_activations(model, processor, studies, config, show_progress=False)
    assert result.n_studies == len(studies)
    with pytest.raises(FileExistsError, match="finished cache made from other inputs.*s3"):
        cache_activations(model, processor, edited, config, show_progress=False)
    # overwrite rebuilds from the edited manifest
    config.overwrite = True
    result = cache_activations(model, processor, edited, config, show_progress=False)
    assert result.n_studies == len(edited)
    info = json.loads((tmp_path / "c" / "cache_info.json").read_text())
    assert info["study_ids"] == [s.study_id for s in edited]


def test_resume_with_another_world_size_refuses(setup, tmp_path, monkeypatch):
    model, processor, studies = setup
    config = _interrupted(setup, tmp_path / "c", monkeypatch)
    monkeypatch.setattr(cache_mod, "_barrier", lambda world_size: None)
    with pytest.raises(
        ValueError, match=r"world size was 1, now 2 \(relaunch with torchrun --nproc-per-node 1"
    ):
        cache_activations(
            model, processor, studies, config, rank=0, world_size=2, show_progress=False
        )
    assert (tmp_path / "c" / ".tmp_shards" / "rank000" / "shard_00000").is_dir()


def test_merge_refuses_when_a_rank_did_not_finish(setup, tmp_path, monkeypatch):
    """A rank whose shards are missing stops the merge instead of giving a short cache."""
    model, processor, studies = setup
    monkeypatch.setattr(cache_mod, "_barrier", lambda world_size: None)
    config = CacheConfig(hook_name=COLUMNS[0], output_dir=str(tmp_path / "c"), context_size=16,
                         batch_size=2, shard_studies=2)  # fmt: skip
    # rank 0 of 2 alone: rank 1 never wrote anything
    with pytest.raises(RuntimeError, match="rank 1 finished 0 of its 2 shards"):
        cache_activations(
            model, processor, studies, config, rank=0, world_size=2, show_progress=False
        )
    rank1 = tmp_path / "c" / ".tmp_shards" / "rank001"
    rank1.mkdir()
    (rank1 / "progress.json").write_text(
        json.dumps({"shards_done": 1, "skipped": {}, "n_positions": 0})
    )
    with pytest.raises(
        RuntimeError, match="rank 1 finished 1 of its 2 shards; rerun the same command with 2"
    ):
        cache_activations(
            model, processor, studies, config, rank=0, world_size=2, show_progress=False
        )
    assert not (tmp_path / "c" / "cache_info.json").exists()


def test_float16_storage_refuses_activations_beyond_its_range(setup, tmp_path):
    model, processor, studies = setup
    w = model.blocks[0].mlp.b_out
    saved = w.detach().clone()
    import torch

    with torch.no_grad():
        w[0] = 1e5
    try:
        with pytest.raises(
            ValueError, match=r"beyond float16's largest value 65504.*storage_dtype: float32"
        ):
            cache_activations(model, processor, studies[:2], CacheConfig(
                hook_name=COLUMNS[0], output_dir=str(tmp_path / "h"), storage_dtype="float16"),
                show_progress=False)  # fmt: skip
    finally:
        with torch.no_grad():
            w.copy_(saved)
    # within range float16 caches (and reads back finite)
    result = cache_activations(model, processor, studies[:3], CacheConfig(
        hook_name=COLUMNS[0], output_dir=str(tmp_path / "ok"), storage_dtype="float16", context_size=8),
        show_progress=False)  # fmt: skip
    ds = datasets.load_from_disk(str(result.path))
    assert ds.features[COLUMNS[0]].dtype == "float16"
    assert np.isfinite(np.asarray(ds[COLUMNS[0]])).all()
