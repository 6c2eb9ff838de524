"""Our SAE-Dashboard batches read by SAE-Dashboard 0.8's own classes and by the logic of Neuronpedia's
``convert-saedashboard-to-neuronpedia-export.py``; bins and histograms with SAE-Dashboard's meaning
checked against the raw activations; the viewer renders from batch + sidecar."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import pytest
import torch

from sae_lens_maira.dashboards.export_saedashboard import extras_name, write_saedashboard
from sae_lens_maira.dashboards.schemas import validate_saedashboard_dir
from sae_lens_maira.dashboards.synthetic import REGION_FEATURE, TOKEN_FEATURE
from tests.dashboards.test_stats_pass import _reference

# The constructor parameters of sae_dashboard 0.8.0, neuronpedia/neuronpedia_dashboard.py
# (NeuronpediaDashboardBatch / Feature / Activation); checked against the package where installed.
BATCH_FIELDS = ["model_id", "layer", "sae_set", "sae_id_suffix", "features"]
FEATURE_FIELDS = [
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "n_prompts_total", "n_tokens_in_prompt", "dataset", "activations", "decoder_weights_dist",
    "vector",
]  # fmt: skip
ACTIVATION_FIELDS = ["bin_min", "bin_max", "bin_contains", "tokens", "values",
                     "qualifying_token_index", "dfa_values", "dfa_maxValue", "dfa_targetIndex"]  # fmt: skip


@pytest.fixture(scope="module")
def folder(stats, tmp_path_factory):
    return write_saedashboard(stats, tmp_path_factory.mktemp("sd"), batch_size=7)


def _batches(folder: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("batch-*.json"))]


def _feature(folder: Path, f: int) -> dict:
    return next(x for b in _batches(folder) for x in b["features"] if x["feature_index"] == f)


def test_batches_have_exactly_sae_dashboards_fields(folder, stats):
    assert validate_saedashboard_dir(folder) == len(stats.alive_features())
    for batch in _batches(folder):
        assert list(batch) == BATCH_FIELDS
        for feat in batch["features"]:
            assert set(feat) == set(FEATURE_FIELDS)  # decoder_weights_dist included, nothing else
            assert feat["decoder_weights_dist"] == []
            for act in feat["activations"]:
                assert set(act) <= set(ACTIVATION_FIELDS)
    skipped = json.loads((folder / "skipped_indexes.json").read_text())
    assert skipped["layer"] == "3"  # SAE-Dashboard writes str(layer) there


def test_real_sae_dashboard_loads_every_batch(folder):
    nd = pytest.importorskip(
        "sae_dashboard.neuronpedia.neuronpedia_dashboard",
        reason="sae-dashboard 0.8.0 not installed (pip install --no-deps sae-dashboard==0.8.0)",
    )
    for cls, fields in ((nd.NeuronpediaDashboardBatch, BATCH_FIELDS),
                        (nd.NeuronpediaDashboardFeature, FEATURE_FIELDS),
                        (nd.NeuronpediaDashboardActivation, ACTIVATION_FIELDS)):  # fmt: skip
        assert list(inspect.signature(cls.__init__).parameters)[1:] == fields, cls.__name__
    for batch in _batches(folder):
        loaded = nd.NeuronpediaDashboardBatch(**batch)  # TypeError on any unknown key
        assert loaded.to_dict() == batch  # and nothing is lost on the way back


def _convert_like_neuronpedia(batch: dict, source_set: str, model_id: str) -> tuple[list, list]:
    """The data flow of ``process_data`` in Neuronpedia's
    utils/neuronpedia-utils/neuronpedia_utils/convert-saedashboard-to-neuronpedia-export.py
    (commit ebb8426): the same keys read the same way (``[...]`` where it indexes, ``in`` where it
    tests), into rows with the fields of its db_models Feature and Activation."""
    layer_num, suffix = batch["layer"], batch["sae_id_suffix"]
    source_id = str(layer_num) + "-" + source_set + ("__" + suffix if suffix else "")
    features, activations = [], []
    for fd in batch["features"]:
        feature = {
            "modelId": model_id, "layer": source_id, "index": fd["feature_index"],
            "hasVector": "vector" in fd and len(fd["vector"]) > 0,
            "vector": fd["vector"] if "vector" in fd else [],
            "hookName": f"blocks.{layer_num}.hook_resid_post" if "vector" in fd else None,
            **{k: fd[k] for k in (
                "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
                "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
                "correlated_features_indices", "correlated_features_pearson",
                "correlated_features_l1", "neg_str", "neg_values", "pos_str", "pos_values",
                "frac_nonzero", "freq_hist_data_bar_heights", "freq_hist_data_bar_values",
                "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
                "decoder_weights_dist")},
        }  # fmt: skip
        max_act_approx = 0
        for ad in fd["activations"]:
            max_value = max(ad["values"])
            max_value_token_index = ad["values"].index(max_value)
            max_act_approx = max(max_act_approx, max_value)
            activations.append({
                "tokens": ad["tokens"], "modelId": model_id, "layer": source_id,
                "index": fd["feature_index"], "maxValue": max_value,
                "maxValueTokenIndex": max_value_token_index, "minValue": min(ad["values"]),
                "values": ad["values"],
                "dfaValues": ad["dfa_values"] if "dfa_values" in ad else [],
                "dfaTargetIndex": ad["dfa_targetIndex"] if "dfa_targetIndex" in ad else None,
                "dfaMaxValue": ad["dfa_maxValue"] if "dfa_maxValue" in ad else None,
                "lossValues": ad["loss_values"] if "loss_values" in ad else [],
                "logitContributions": ad["logit_contributions"] if "logit_contributions" in ad else None,
                "binContains": ad["bin_contains"], "binMax": ad["bin_max"], "binMin": ad["bin_min"],
                "qualifyingTokenIndex": ad["qualifying_token_index"],
            })  # fmt: skip
        feature["maxActApprox"] = max_act_approx
        features.append(feature)
    return features, activations


def test_neuronpedias_convert_script_reads_our_batches(folder, stats):
    # the script lists every file starting with "batch-": the sidecars must not
    assert all(not extras_name(p.name).startswith("batch-") for p in folder.glob("batch-*.json"))
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith("batch-")) == sorted(
        p.name for p in folder.glob("batch-*.json")
    )
    n = 0
    for batch in _batches(folder):
        features, acts = _convert_like_neuronpedia(batch, "res-syn", "maira-2-synthetic")
        n += len(features)
        for row in features:
            assert row["maxActApprox"] == pytest.approx(float(stats.max_act[row["index"]]), abs=1e-3)
        top = [a for a in acts if a["binMin"] == -1]
        assert top and all(a["binMax"] == round(float(stats.max_act[a["index"]]), 3) for a in top)
    assert n == len(stats.alive_features())


def test_top_group_and_intervals_mean_what_sae_dashboard_means(folder, stats, synthetic):
    acts, *_, counted = _reference(synthetic)
    n_tokens = int(counted.sum())
    for f in (TOKEN_FEATURE, REGION_FEATURE, 5):
        feat = _feature(folder, f)
        a = acts[..., f][counted]
        top = [x for x in feat["activations"] if x["bin_min"] == -1]
        # SAE-Dashboard: one top group titled "MAX = <feature max>": the same bin_max for all
        assert {x["bin_max"] for x in top} == {round(float(a.max()), 3)}
        assert all(x["bin_contains"] == -1 for x in top)
        intervals = [x for x in feat["activations"] if x["bin_min"] >= 0]
        lows = [x["bin_min"] for x in intervals]
        assert lows == sorted(lows, reverse=True)  # highest interval first
        seen = {}
        for x in intervals:
            lo, hi = x["bin_min"], x["bin_max"]
            ref = float(((a >= lo) & (a <= hi)).sum()) / n_tokens  # share of ALL tokens
            assert x["bin_contains"] == pytest.approx(ref, rel=0.15, abs=3e-4), (f, lo, hi)
            seen[lo] = x["bin_contains"]
            assert lo - 1e-3 <= max(x["values"]) <= hi + 1e-3
        if 0.0 in seen:  # the lowest interval starts at 0 and so holds the zeros too
            assert seen[0.0] >= 1 - float(stats.density[f]) - 1e-3


def test_activation_histogram_bins_like_sae_dashboard(folder, synthetic, stats, decoder):
    acts, *_, counted = _reference(synthetic)
    logits = decoder[0] @ decoder[1]
    for f in (TOKEN_FEATURE, REGION_FEATURE, 5):
        feat = _feature(folder, f)
        nz = acts[..., f][counted]
        nz = nz[nz > 0].float()
        # HistogramData.from_data: 50 bins over [min, max] of the nonzero activations
        lo, hi = float(nz.min()), float(nz.max())
        size = (hi - lo) / 50
        ref_centres = [round(round(x, 5), 3) for x in
                       (torch.linspace(lo, hi, 51)[:-1] + size / 2).tolist()]  # fmt: skip
        ref_heights = torch.histc(nz, bins=50).int().tolist()
        assert feat["freq_hist_data_bar_values"] == pytest.approx(ref_centres, abs=1.1e-3)
        heights = feat["freq_hist_data_bar_heights"]
        assert all(isinstance(h, int) for h in heights) and sum(heights) == sum(ref_heights)
        # heights come from the streaming histogram (16 bins here): mass lands in nearby bins
        ref_cdf = torch.tensor(ref_heights).cumsum(0).float() / sum(ref_heights)
        cdf = torch.tensor(heights).cumsum(0).float() / sum(heights)
        assert float((cdf - ref_cdf).abs().max()) < 0.1, f
        assert feat["frac_nonzero"] == pytest.approx(float(stats.density[f]))
        # the logit histogram is exact: 50 bins over [min, max] of W_dec[f] @ W_U
        assert feat["logits_hist_data_bar_heights"] == torch.histc(logits[f], bins=50).int().tolist()
        lo, hi = float(logits[f].min()), float(logits[f].max())
        centres = (torch.linspace(lo, hi, 51)[:-1] + (hi - lo) / 100).tolist()
        assert feat["logits_hist_data_bar_values"] == pytest.approx(centres, abs=1.1e-3)


def test_sidecar_holds_what_the_batch_cannot(folder, stats):
    batch = json.loads((folder / "batch-0.json").read_text())
    side = json.loads((folder / "extras-0.json").read_text())
    assert side["batch"] == "batch-0.json"
    assert [f["feature_index"] for f in side["features"]] == [
        f["feature_index"] for f in batch["features"]
    ]
    region = next(
        json.loads(p.read_text())["features"]
        for p in sorted(folder.glob("extras-*.json"))
        if any(f["feature_index"] == REGION_FEATURE for f in json.loads(p.read_text())["features"])
    )
    region = next(f for f in region if f["feature_index"] == REGION_FEATURE)
    heat = region["activations"][0]["heatmap"]
    assert heat["slot"] == "frontal" and len(heat["values"]) == 64
    thumb = region["activations"][0]["thumbnail"]
    assert thumb and (folder / thumb).is_file()
    assert "sae_lens_maira" not in (folder / "batch-0.json").read_text()
