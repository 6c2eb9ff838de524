"""The two benchmark scripts run end to end at toy sizes and write what they promise."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    module_name = f"benchmark_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_sae_step_benchmark_times_both_saes(tmp_path: Path) -> None:
    out = tmp_path / "step.json"
    load("sae_step").main(
        [
            "--device", "cpu", "--d-in", "16", "--d-sae", "64", "--k", "2", "--batch", "32",
            "--warmup", "1", "--steps", "1", "--rounds", "2", "--quality-steps", "3",
            "--no-memory", "--out", str(out),
        ]
    )  # fmt: skip
    record = json.loads(out.read_text())
    assert record["environment"]["device"] == "cpu" and record["environment"]["flush_denormal"]
    shape = record["shapes"][0]
    assert shape["shape"] == {"d_in": 16, "d_sae": 64, "k": 2, "batch": 32}
    for side in ("ours", "saelens"):
        assert shape["results"][side]["median_step_s"] > 0
        assert shape["results"][side]["n_timed_steps"] == 2
    assert shape["results"]["ours"]["decoder_impl"] == "embedding_bag"
    assert shape["speedup"] > 0
    assert set(shape["quality"]) >= {"explained_variance_ours", "explained_variance_saelens"}


def test_sae_step_profile_names_regions_and_restores_the_wrapped_functions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sae_lens_maira.saes.matryoshka_sae as ours

    before = ours.MatryoshkaTrainingSAE.training_forward_pass
    load("sae_step").main(
        [
            "--device", "cpu", "--d-in", "16", "--d-sae", "64", "--k", "2", "--batch", "32",
            "--warmup", "1", "--steps", "1", "--rounds", "1", "--quality-steps", "0",
            "--no-memory", "--profile", "--out", str(tmp_path / "step.json"),
        ]
    )  # fmt: skip
    printed = capsys.readouterr().out
    for region in ("ours: forward", "ours: batch_topk", "ours: grouped decode", "saelens: forward"):
        assert region in printed
    assert "Optimizer.step#Adam.step" in printed and "host syncs per step" in printed
    assert ours.MatryoshkaTrainingSAE.training_forward_pass is before  # unwrapped afterwards


def test_synthetic_quality_benchmark_reports_every_metric(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    load("synthetic_quality").main(
        [
            "--seeds", "0", "--steps", "30", "--batch", "64", "--eval-samples", "2000",
            "--set", "n_features=64", "n_parents=4", "children_per_parent=2", "d_in=16",
            "d_sae=64", "k=2", "widths=[8,16,64]", "--ours", "k_anneal_start=8",
            "k_anneal_steps=10", "--out", str(out),
        ]
    )  # fmt: skip
    record = json.loads(out.read_text())
    assert record["setup"]["ours"]["k_anneal_steps"] == 10
    metrics = record["runs"][0]["metrics"]
    assert set(metrics) == {
        "ours",
        "ours_library_defaults",
        "saelens_matryoshka",
        "saelens_batchtopk",
    }
    for values in metrics.values():
        for key in ("explained_variance", "l0", "dead_latents", "mcc", "parent_miss_with_child"):
            assert key in values
        assert 0.0 <= values["mcc"] <= 1.0
    assert set(record["targets"]) == {
        "absorption_at_or_below_saelens_matryoshka",
        "absorption_well_below_batchtopk",
        "explained_variance_within_0.01_of_saelens_matryoshka",
        "mcc_within_0.01_of_saelens_matryoshka",
    }
    assert out.with_suffix(".png").stat().st_size > 10_000


@pytest.mark.parametrize("flag", [["--set", "nope=1"], ["--lr", "nobody=1e-3"]])
def test_synthetic_quality_rejects_unknown_overrides(flag: list[str]) -> None:
    with pytest.raises(SystemExit):
        load("synthetic_quality").main(["--seeds", "0", *flag])


def test_synthetic_quality_combines_runs_of_separate_processes(tmp_path: Path) -> None:
    bench = load("synthetic_quality")
    common = [
        "--steps", "20", "--batch", "32", "--eval-samples", "1000", "--set", "n_features=64",
        "n_parents=4", "children_per_parent=2", "d_in=16", "d_sae=64", "k=2", "widths=[8,16,64]",
        "--ours", "k_anneal_start=4", "k_anneal_steps=5",
    ]  # fmt: skip
    for seed in (0, 1):
        bench.main(["--seeds", str(seed), *common, "--out", str(tmp_path / f"s{seed}.json")])
    both = tmp_path / "both.json"
    bench.main(
        ["--combine", str(tmp_path / "s1.json"), str(tmp_path / "s0.json"), "--out", str(both)]
    )
    record = json.loads(both.read_text())
    assert [run["seed"] for run in record["runs"]] == [0, 1]
    single = json.loads((tmp_path / "s0.json").read_text())
    assert record["runs"][0] == single["runs"][0]
    mean = record["summary"]["ours"]["mcc"]["mean"]
    assert mean == pytest.approx(sum(r["metrics"]["ours"]["mcc"] for r in record["runs"]) / 2)
    assert "targets" in record
    with pytest.raises(SystemExit, match="repeat"):
        bench.main(["--combine", str(tmp_path / "s0.json"), str(both), "--out", str(both)])
