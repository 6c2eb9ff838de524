"""`make demo`'s pipeline at a reduced size: every step runs and the summary reports what it measured."""

from __future__ import annotations

import json

import pytest

from sae_lens_maira.demo.pipeline import default_config, run_demo
from sae_lens_maira.demo.small_model import DemoModelConfig

#: every test here shares one reduced demo run (minutes on 2 cores)
pytestmark = pytest.mark.slow


def reduced_config() -> dict:
    cfg = default_config()
    cfg["train"].update(
        training_tokens=6000, train_batch_size_tokens=256, n_batches_in_buffer=8,
        lr_warm_up_steps=2, n_checkpoints=2, n_eval_batches=1, eval_batch_size_prompts=2,
        store_batch_size_prompts=4, wandb=False,
    )  # fmt: skip
    cfg["sae"].update(expansion_factor=2, k=4, threshold_start_step=2)
    cfg["cache"].update(batch_size=4, shard_studies=16)
    cfg["steer"].update(coefficients=[1, 4], n_studies=3, max_new_tokens=6, batch_size=4)
    cfg["dashboards"].update(limit=16)
    cfg["demo"].update(
        held_out_negatives=4, autointerp_top_features=4, top_features_per_finding=2,
        steer_report_candidates=2, steer_writer_candidates=1, steer_screen_studies=2,
        health_positions=2000,
    )  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory, demo_wheel):
    root = tmp_path_factory.mktemp("demo_run")
    summary = run_demo(
        root / "out", config=reduced_config(), cache_dir=root / "cache", wheel=demo_wheel,
        max_studies=16, model_config=DemoModelConfig.tiny(),
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
    assert steering["finding"] == "pleural_effusion"
    assert [p["coefficient"] for p in steering["add"]["points"]] == [1, 4]
    # the steered feature is the candidate whose screening on training studies did best
    screening = {int(k): v for k, v in steering["screening"].items()}
    assert set(screening) == set(steering["candidates"]) and steering["feature"] in screening
    assert screening[steering["feature"]]["score"] == max(v["score"] for v in screening.values())
    for key in ("unsteered_disfluent", "unsteered_log_likelihood", "best_log_likelihood"):
        assert isinstance(steering["add"][key], float)
    text = summary.read_text()
    for heading in ("## Report card", "## Data", "## Model", "## SAE",
                    "## Features that detect each finding", "## Steering"):  # fmt: skip
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
        model_config=DemoModelConfig.tiny(),
    )  # fmt: skip
    out = capsys.readouterr().out
    # the tiny model misses its targets: it is reused to report, never as a good model
    assert "FAILED its targets" in out and "using the cached small model" not in out
    # steps 3-7 are deterministic: their results come back from the results cache, unchanged
    first = json.loads((root / "out" / "summary.json").read_text())
    again = json.loads((root / "out2" / "summary.json").read_text())
    assert again["reused_steps"] == sorted(t for t in first["timings"] if t[0] in "34567")
    assert first["reused_steps"] == []

    def figures(facts: dict, base: str) -> str:
        facts = {k: v for k, v in facts.items() if k not in ("timings", "cpu_timings", "reused_steps")}
        return json.dumps(facts, sort_keys=True).replace(base, "OUT")

    assert figures(first, str(root / "out")) == figures(again, str(root / "out2"))
    for folder in ("activations/train", "sae", "dashboards/viewer"):
        assert (root / "out2" / folder).is_dir()
    from sae_lens import SAE

    assert SAE.load_from_disk(again["sae"]["path"]).cfg.d_sae > 0
    # a changed setting of one step reruns it and every step after it, not the ones before
    cfg["steer"]["max_new_tokens"] = 5
    run_demo(
        root / "out3", config=cfg, cache_dir=root / "cache", wheel=demo_wheel, max_studies=16,
        model_config=DemoModelConfig.tiny(),
    )  # fmt: skip
    third = json.loads((root / "out3" / "summary.json").read_text())
    assert [t[0] for t in third["reused_steps"]] == ["3", "4", "5", "6"]


def test_report_card_has_a_verdict_per_target(demo_out):
    root, summary = demo_out
    card = json.loads((root / "out" / "summary.json").read_text())["report_card"]
    targets = card["targets"]
    for f in ("cardiomegaly", "pleural_effusion", "devices"):
        assert targets[f"model_writes_{f}_positives"]["threshold"] == 0.5
        assert targets[f"model_writes_{f}_negatives"]["threshold"] == 0.1
        assert targets[f"feature_detects_{f}"]["threshold"] == 0.8
    assert targets["sae_explained_variance"]["threshold"] == 0.7
    assert targets["sae_l0"]["threshold"] == [2.0, 8.0]  # k = 4 in the reduced run
    assert targets["sae_dead_latents"]["threshold"] == 0.2
    for name in ("steering_adds_finding", "steering_add_fluency", "unsteered_fluency",
                 "steering_removes_finding"):  # fmt: skip
        assert name in targets
    for t in targets.values():
        assert t["verdict"] in ("PASS", "FAIL") and t["op"] in (">=", "<=", "between")
    # 30 steps of a 2-layer model write no finding: the card fails and says so at the top
    assert targets["model_writes_cardiomegaly_positives"]["verdict"] == "FAIL"
    assert card["verdict"] == "FAIL" and "model" not in card["reason"][:0]
    assert "held-out reports mention cardiomegaly on positives" in card["reason"]
    text = summary.read_text()
    assert text.index("**Verdict: FAIL**") < text.index("## Report card") < text.index("## Data")
    # and the cached model is marked failed, so no later run takes it for a good one
    from sae_lens_maira.demo.model_cache import model_status

    assert model_status(json.loads((root / "out" / "summary.json").read_text())["model"]["checkpoint"])["passed"] is False


def test_demo_command_exits_non_zero_with_the_reason(demo_out, monkeypatch, capsys):
    from sae_lens_maira import cli
    from sae_lens_maira.demo import pipeline

    root, summary = demo_out
    monkeypatch.setattr(pipeline, "run_demo", lambda out, cache_dir=None: summary)
    assert cli.main(["demo", "--out", str(root / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("demo FAILED: ") and "targets failed" in err[0]
    # the same summary with every target met exits 0
    passing = root / "passing"
    passing.mkdir(exist_ok=True)
    facts = json.loads((root / "out" / "summary.json").read_text())
    facts["report_card"].update(verdict="PASS", reason="")
    (passing / "summary.json").write_text(json.dumps(facts))
    monkeypatch.setattr(pipeline, "run_demo", lambda out, cache_dir=None: passing / "summary.md")
    assert cli.main(["demo", "--out", str(passing)]) == 0


def test_a_slowed_run_gives_the_same_model_and_figures(demo_out, demo_wheel, tmp_path, monkeypatch):
    """Every optimizer step sleeps and moves the clocks on by 100 s: a machine thousands of times
    slower. Nothing that decides a result may notice. The slowing is a step pre-hook (torch's
    public callback), so the optimizers' own behaviour is untouched."""
    import time

    import torch
    from safetensors.torch import load_file
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    root, _ = demo_out
    offset = [0.0]
    real_perf, real_mono = time.perf_counter, time.monotonic
    monkeypatch.setattr(time, "perf_counter", lambda: real_perf() + offset[0])
    monkeypatch.setattr(time, "monotonic", lambda: real_mono() + offset[0])

    def slow_step(optimizer, args, kwargs):
        time.sleep(0.01)
        offset[0] += 100.0

    handle = register_optimizer_step_pre_hook(slow_step)
    try:
        run_demo(
            tmp_path / "out", config=reduced_config(), cache_dir=tmp_path / "cache",
            wheel=demo_wheel, max_studies=16, model_config=DemoModelConfig.tiny(),
        )  # fmt: skip
    finally:
        handle.remove()
    assert offset[0] > 100 * 60  # the model's and the SAE's steps all ran slowed
    fast = json.loads((root / "out" / "summary.json").read_text())
    slow = json.loads((tmp_path / "out" / "summary.json").read_text())
    model_fast, model_slow = fast["model"]["checkpoint"], slow["model"]["checkpoint"]
    w_fast = load_file(f"{model_fast}/model.safetensors")
    w_slow = load_file(f"{model_slow}/model.safetensors")
    assert w_fast.keys() == w_slow.keys()
    assert all(torch.equal(w_fast[k], w_slow[k]) for k in w_fast)
    sae_fast = load_file(f"{fast['sae']['path']}/sae_weights.safetensors")
    sae_slow = load_file(f"{slow['sae']['path']}/sae_weights.safetensors")
    assert sae_fast.keys() == sae_slow.keys()
    assert all(torch.equal(sae_fast[k], sae_slow[k]) for k in sae_fast)

    def figures(facts: dict, base: str) -> str:
        facts = {k: v for k, v in facts.items() if k not in ("timings", "cpu_timings")}
        text = json.dumps(facts, sort_keys=True).replace(base, "ROOT")
        return text

    assert figures(fast, str(root)) == figures(slow, str(tmp_path))
