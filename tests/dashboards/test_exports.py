"""Exports validated against the schemas; upload round trip against a local fake Neuronpedia."""

from __future__ import annotations

import gzip
import json

import pytest

from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.export_neuronpedia import write_neuronpedia_export
from sae_lens_maira.dashboards.export_saedashboard import write_saedashboard
from sae_lens_maira.dashboards.schemas import (
    read_jsonl,
    validate,
    validate_neuronpedia_export,
    validate_saedashboard_dir,
)
from sae_lens_maira.dashboards.synthetic import REGION_FEATURE, TOKEN_FEATURE

EXPLANATIONS = {TOKEN_FEATURE: Explanation(TOKEN_FEATURE, 'the word "effusion"', "gpt-4o-mini", "offline",
                                           detection={"balanced_accuracy": 0.9, "f1": 0.88})}  # fmt: skip


def test_saedashboard_batches_match_schema(stats, tmp_path):
    folder = write_saedashboard(stats, tmp_path, batch_size=10)
    assert folder.name == "maira-2-synthetic_synthetic_blocks.3.hook_resid_post_24"
    assert validate_saedashboard_dir(folder) == len(stats.alive_features())
    batch = json.loads((folder / "batch-0.json").read_text())
    assert len(batch["features"]) == 10
    feat = next(f for f in batch["features"] if f["feature_index"] == TOKEN_FEATURE)
    top = [a for a in feat["activations"] if a["bin_min"] == -1]
    assert 0 < len(top) <= 20 and top[0]["bin_max"] == pytest.approx(
        float(stats.max_act[0]), abs=1e-3
    )
    assert top[0]["tokens"][top[0]["qualifying_token_index"]] == "effusion"
    quant = [a for a in feat["activations"] if a["bin_min"] >= 0]
    assert quant and all(a["bin_min"] < max(a["values"]) + 1e-3 for a in quant)
    assert all(v == round(v, 3) for v in feat["pos_values"])
    region = next(f for b in folder.glob("extras-*.json") for f in json.loads(b.read_text())["features"]
                  if f["feature_index"] == REGION_FEATURE)  # fmt: skip
    heat = region["activations"][0]["heatmap"]  # in the sidecar: SAE-Dashboard has no such field
    assert heat["slot"] == "frontal" and len(heat["values"]) == 64


def test_neuronpedia_export_matches_schema(stats, tmp_path):
    out = write_neuronpedia_export(
        stats, tmp_path / "exports", explanations=EXPLANATIONS, batch_size=8
    )
    assert out == tmp_path / "exports" / "maira-2-synthetic" / "3-res-syn"
    counts = validate_neuronpedia_export(out)
    n = len(stats.alive_features())
    assert counts["features"] == n and counts["explanations"] == 1
    assert counts["activations"] > n  # top plus interval examples for each
    assert len(list((out / "features").glob("batch-*.jsonl.gz"))) == -(-n // 8)
    acts = read_jsonl(out / "activations" / "batch-0.jsonl.gz")
    assert all(len(a["tokens"]) <= 1024 for a in acts)
    a0 = next(a for a in acts if a["index"] == "0")
    assert a0["tokens"][a0["maxValueTokenIndex"]] == "effusion" and a0["layer"] == "3-res-syn"
    exp = read_jsonl(out / "explanations" / "batch-0.jsonl.gz")[0]
    assert exp["description"] == 'the word "effusion"'
    assert exp["sae_lens_maira"]["detection"]["balanced_accuracy"] == 0.9


def test_private_export_drops_study_text(stats, tmp_path):
    out = write_neuronpedia_export(stats, tmp_path / "exports", private=True)
    validate_neuronpedia_export(out)
    text = b"".join(gzip.open(p).read() for p in (out / "activations").glob("*.gz")).decode()
    assert "effusion" not in text and '"s000' not in text  # neither study text nor study ids
    assert "<report>" in text and "<img0:" in text  # placeholders and patch names remain


def test_schema_rejects_broken_records():
    good = {"id": "x", "tokens": ["a", "b"], "values": [1.0, 0.0], "index": "3", "layer": "3-res",
            "modelId": "m", "maxValue": 1.0, "maxValueTokenIndex": 0, "minValue": 0.0, "creatorId": "c"}  # fmt: skip
    validate(good, "np_activation")
    with pytest.raises(ValueError, match="maxValue"):
        validate({k: v for k, v in good.items() if k != "maxValue"}, "np_activation")
    with pytest.raises(ValueError, match="2 tokens but 1 values"):
        validate(good | {"values": [1.0]}, "np_activation")
    with pytest.raises(ValueError, match="1024"):
        validate(good | {"tokens": ["a"] * 1025, "values": [0.0] * 1025}, "np_activation")
    with pytest.raises(ValueError, match="index"):
        validate(good | {"index": 3}, "np_activation")
    with pytest.raises(ValueError, match="unknown schema"):
        validate(good, "nope")
