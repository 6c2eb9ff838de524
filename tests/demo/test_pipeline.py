"""`make demo`'s pipeline at a reduced size: every step runs and the summary reports what it measured."""

from __future__ import annotations

import json

import pytest

from sae_lens_maira.demo.pipeline import default_config, run_demo
from sae_lens_maira.demo.small_model import DemoModelConfig


def reduced_config() -> dict:
    cfg = default_config()
    cfg["train"].update(
        training_tokens=6000, train_batch_size_tokens=256, n_batches_in_buffer=8,
        lr_warm_up_steps=2, n_checkpoints=2, n_eval_batches=1, eval_batch_size_prompts=2,
        store_batch_size_prompts=4, wandb=False,
    )  # fmt: skip
    cfg["sae"].update(expansion_factor=2, k=4, threshold_start_step=2)
    cfg["cache"].update(batch_size=4, shard_studies=16)
    cfg["steer"].update(coefficients=[0, 8], n_studies=3, max_new_tokens=6)
    cfg["dashboards"].update(limit=16)
    cfg["demo"].update(
        held_out_negatives=4, autointerp_top_features=4, top_features_per_finding=2,
        steer_report_candidates=2,
    )  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, demo_wheel):
    root = tmp_path_factory.mktemp("demo_run")
    summary = run_demo(
        root / "out", config=reduced_config(), cache_dir=root / "cache", wheel=demo_wheel,
        max_studies=16, model_config=DemoModelConfig.tiny(), model_budget_s=None,
    )  # fmt: skip
    return root, summary


def test_every_step_leaves_its_output(demo_out):
    root, summary = demo_out
    out = root / "out"
    assert summary == out / "summary.md"
    facts = json.loads((out / "summary.json").read_text())
    assert [t.split(" ")[0] for t in facts["timings"]] == [f"{i}/8" for i in range(1, 8)]
    assert facts["data"]["train"] == 16 and facts["data"]["held_out"] == 8
    for split in ("train", "held_out"):
        info = json.loads((out / "activations" / split / "cache_info.json").read_text())
        assert info["n_positions"] > 0 and info["hook_name"] == "blocks.1.hook_resid_post"
    # the SAE: SAELens's layout, our architecture, loadable for inference
    from sae_lens import SAE

    sae = SAE.load_from_disk(facts["sae"]["path"])
    assert (
        type(sae).__name__ == "MatryoshkaSAE"
        and sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    )
    assert facts["sae_curve"] and all(0 < c["l0"] for c in facts["sae_curve"])
    # dashboards: Neuronpedia export, viewer pages, explanations scored
    dash = facts["dashboards"]
    assert (out / "dashboards" / "viewer" / "index.html").is_file()
    assert any((out / "dashboards").rglob("batch-0.jsonl.gz"))
    assert dash["backend"] == "offline" and dash["explanations"]
    for score in dash["detection_scores"].values():
        assert score is None or 0.0 <= score <= 1.0


def test_summary_reports_detectors_model_card_and_steering(demo_out):
    root, summary = demo_out
    facts = json.loads((root / "out" / "summary.json").read_text())
    assert set(facts["detectors"]) == {"cardiomegaly", "pleural_effusion", "devices"}
    for rows in facts["detectors"].values():
        assert 1 <= len(rows) <= 2
        for d in rows:
            assert 0.0 <= d["held_out_balanced_accuracy"] <= 1.0
    model = facts["model"]
    assert set(model["generated"]) == {"cardiomegaly", "pleural_effusion", "devices"}
    assert model["probes"]["blocks.1.hook_resid_post"]
    steering = facts["steering"]
    assert [c for c, _ in steering["rates"]] == [0, 8]
    # the steered feature is the candidate whose screening sweep on training studies did best
    screening = {int(k): v for k, v in steering["screening"].items()}
    assert set(screening) == set(steering["candidates"]) and steering["feature"] in screening
    assert screening[steering["feature"]] == max(screening.values())
    assert (root / "out" / "steering").rglob("steering.png")
    text = summary.read_text()
    for heading in ("## Data", "## Model", "## SAE", "## Features that detect each finding",
                    "## Steering"):  # fmt: skip
        assert heading in text
    # every image and page the summary links exists
    import re

    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (summary.parent / link).exists(), link


def test_rerun_reuses_the_trained_model(demo_out, demo_wheel, capsys):
    root, _ = demo_out
    cfg = reduced_config()
    run_demo(
        root / "out2", config=cfg, cache_dir=root / "cache", wheel=demo_wheel, max_studies=16,
        model_config=DemoModelConfig.tiny(), model_budget_s=None,
    )  # fmt: skip
    assert "using the cached small model" in capsys.readouterr().out
