"""The activation cache: selection, format, skipped studies, resume, torchrun sharding, errors."""

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch

from sae_lens_maira.activations import cache as cache_mod
from sae_lens_maira.activations.cache import CacheConfig, cache_activations
from sae_lens_maira.activations.selection import selection_mask
from sae_lens_maira.data.study import Study
from sae_lens_maira.experiment import Experiment
from sae_lens_maira.processing.roles import Role

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def setup(experiment_yaml):
    exp = Experiment.from_yaml(experiment_yaml("unused"))
    return exp.load_model("cpu"), exp.load_processor(), exp.load_studies()


def test_study_policy_keeps_exactly_the_named_positions(setup):
    _, processor, _ = setup
    study = Study(
        "k",
        frontal=np.zeros((60, 60)),
        lateral=np.ones((60, 60)),
        indication="Fever.",
        findings="No effusion.",
    )
    enc = processor.encode_study(study, with_report=True)
    roles = torch.tensor(enc.roles)
    kept = selection_mask(roles, "study").nonzero().squeeze(-1).tolist()
    tok = processor.tokenizer
    image_runs = [i for i, s in enumerate(enc.image_slot) if s >= 0]
    first_last = {image_runs[0], image_runs[15], image_runs[16], image_runs[31]}
    assert set(kept) >= first_last and not (set(image_runs) - first_last) & set(kept)
    # the variable text only: indication, the N/A of the missing sections, the report and EOS
    wanted = {Role.INDICATION, Role.TECHNIQUE, Role.COMPARISON, Role.REPORT}
    assert set(kept) - first_last == {i for i, r in enumerate(enc.roles) if r in wanted}
    text = tok.decode([enc.input_ids[i] for i in kept if i not in first_last]).replace(" ", "")
    assert text == "Fever.N/AN/ANoeffusion.</s>"
    assert "INDICATION" not in tok.decode([enc.input_ids[i] for i in kept])
    assert selection_mask(roles, "image").sum() == 32
    assert selection_mask(roles, "all").sum() == len(enc)
    assert selection_mask(roles, ["report"]).sum() == sum(r == Role.REPORT for r in enc.roles)
    with pytest.raises(ValueError, match="unknown selection policy"):
        selection_mask(roles, "everything")


def _as_map(ds):
    acts = np.asarray(ds[HOOK])
    si, pos = np.asarray(ds["study_index"]), np.asarray(ds["positions"])
    return {
        (int(s), int(p)): a
        for s, p, a in zip(si.ravel(), pos.ravel(), acts.reshape(-1, acts.shape[-1]))
    }


def test_cache_matches_direct_run_and_reports_skipped(setup, tmp_path):
    model, processor, studies = setup
    cfg = CacheConfig(
        hook_name=HOOK,
        output_dir=str(tmp_path / "c"),
        context_size=16,
        batch_size=2,
        shard_studies=3,
    )
    result = cache_activations(model, processor, studies, cfg, show_progress=False)
    assert list(result.skipped) == ["s4"] and "not a readable image" in result.skipped["s4"]
    ds = datasets.load_from_disk(str(tmp_path / "c"))
    assert ds.features[HOOK].shape == (16, model.cfg.d_model) and len(ds) == result.n_rows
    info = json.loads((tmp_path / "c" / "cache_info.json").read_text())
    assert info["skipped"].keys() == {"s4"} and info["n_rows"] == len(ds)
    mapping = _as_map(ds)
    assert len(mapping) == len(ds) * 16  # no position twice
    # compare against a direct run of one study
    enc = processor.encode_study(studies[3], with_report=True)
    batch = processor.collate([enc], padding_side="right")
    with torch.no_grad():
        _, c = model.run_with_cache(
            batch.input_ids, pixel_values=batch.pixel_values, names_filter=[HOOK]
        )
    keep = selection_mask(torch.tensor(enc.roles), "study").nonzero().squeeze(-1).tolist()
    found = [p for p in keep if (3, p) in mapping]
    assert len(found) >= len(keep) - 16
    for p in found:
        np.testing.assert_allclose(mapping[(3, p)], c[HOOK][0, p].numpy(), atol=1e-5)
    # SAELens reads it back as its own cached-activation format
    from sae_lens import ActivationsStore

    store = ActivationsStore(
        model=model,
        dataset=None,
        streaming=False,
        hook_name=HOOK,
        hook_head_index=None,
        context_size=16,
        d_in=model.cfg.d_model,
        n_batches_in_buffer=2,
        total_training_tokens=1000,
        store_batch_size_prompts=2,
        train_batch_size_tokens=8,
        prepend_bos=False,
        normalize_activations="none",
        device=torch.device("cpu"),
        dtype="float32",
        cached_activations_path=str(tmp_path / "c"),
    )
    acts, tokens = store.get_raw_llm_batch()
    assert acts.shape == (32, model.cfg.d_model) and tokens.shape == (32,)


def test_kill_and_resume_gives_the_identical_dataset(setup, tmp_path, monkeypatch):
    model, processor, studies = setup
    cfg = dict(hook_name=HOOK, context_size=16, batch_size=2, shard_studies=2)
    cache_activations(
        model,
        processor,
        studies,
        CacheConfig(output_dir=str(tmp_path / "full"), **cfg),
        show_progress=False,
    )
    real = cache_mod._process_shard
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "_process_shard", dying)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(
            model,
            processor,
            studies,
            CacheConfig(output_dir=str(tmp_path / "resumed"), **cfg),
            show_progress=False,
        )
    monkeypatch.setattr(cache_mod, "_process_shard", real)
    # a half-written shard left behind by the kill is discarded on resume
    (tmp_path / "resumed" / ".tmp_shards" / "rank000" / "shard_00002.partial").mkdir()
    cache_activations(
        model,
        processor,
        studies,
        CacheConfig(output_dir=str(tmp_path / "resumed"), **cfg),
        show_progress=False,
    )
    a = datasets.load_from_disk(str(tmp_path / "full"))
    b = datasets.load_from_disk(str(tmp_path / "resumed"))
    assert len(a) == len(b)
    for col in (HOOK, "token_ids", "roles", "study_index", "positions"):
        assert np.array_equal(np.asarray(a[col]), np.asarray(b[col])), col
    # the same command again finds the finished cache and leaves it as it is
    again = cache_activations(
        model, processor, studies, CacheConfig(output_dir=str(tmp_path / "full"), **cfg),
        show_progress=False,
    )
    assert again.n_rows == len(a) and not (tmp_path / "full" / ".tmp_shards").exists()
    with pytest.raises(FileExistsError, match="finished cache made from other inputs.*context_size"):
        cache_activations(
            model, processor, studies,
            CacheConfig(output_dir=str(tmp_path / "full"), **{**cfg, "context_size": 8}),
        )
    with pytest.raises(ValueError, match="older version"):
        (tmp_path / "other" / ".tmp_shards").mkdir(parents=True)
        (tmp_path / "other" / ".tmp_shards" / "settings.json").write_text("{}")
        cache_activations(
            model, processor, studies, CacheConfig(output_dir=str(tmp_path / "other"), **cfg)
        )


def test_nan_activations_and_bad_hook_stop_with_clear_errors(setup, tmp_path):
    model, processor, studies = setup
    with pytest.raises(ValueError, match="has no hook"):
        cache_activations(
            model,
            processor,
            studies,
            CacheConfig(hook_name="blocks.1.hook_nope", output_dir=str(tmp_path / "a")),
        )
    with pytest.raises(ValueError, match="names block 7"):
        cache_activations(
            model,
            processor,
            studies,
            CacheConfig(hook_name="blocks.7.hook_resid_post", output_dir=str(tmp_path / "b")),
        )
    w = model.blocks[0].mlp.W_out
    saved = w.detach().clone()
    with torch.no_grad():
        w[0, 0] = float("nan")
    try:
        with pytest.raises(ValueError, match="contain NaN or inf for studies"):
            cache_activations(
                model,
                processor,
                studies[:2],
                CacheConfig(hook_name=HOOK, output_dir=str(tmp_path / "c")),
                show_progress=False,
            )
    finally:
        with torch.no_grad():
            w.copy_(saved)


@pytest.mark.slow
def test_torchrun_two_cpu_processes_equal_single_process(experiment_yaml, tmp_path):
    single = experiment_yaml("single")
    multi = experiment_yaml("multi")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    r = subprocess.run(
        [sys.executable, "-m", "sae_lens_maira.cli", "cache", "--config", str(single)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--standalone",  # a free port (a fixed one fails when another run holds it)
            "-m",
            "sae_lens_maira.cli",
            "cache",
            "--config",
            str(multi),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    one = datasets.load_from_disk(str(single.parent / "single"))
    two = datasets.load_from_disk(str(multi.parent / "multi"))
    a, b = _as_map(one), _as_map(two)
    info = json.loads((multi.parent / "multi" / "cache_info.json").read_text())
    assert info["world_size"] == 2 and info["skipped"].keys() == {"s4"}
    total_a = (
        len(a)
        + json.loads((single.parent / "single" / "cache_info.json").read_text())[
            "dropped_tail_positions"
        ]
    )
    assert total_a == len(b) + info["dropped_tail_positions"]  # the same selected positions in all
    shared = a.keys() & b.keys()
    assert len(shared) >= len(a) - 16
    for key in shared:
        np.testing.assert_allclose(a[key], b[key], atol=1e-5)
