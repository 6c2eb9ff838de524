"""Our Neuronpedia export replayed through Neuronpedia's importer rules (creation order, foreign keys,
required columns, registered explanation names, creator ids), and bad input refused before anything
is written: a tampered stats.json, unregistered explanation names, an SAE of another model."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from sae_lens_maira.cli import main
from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.export_neuronpedia import write_neuronpedia_export
from sae_lens_maira.dashboards.export_saedashboard import write_saedashboard
from sae_lens_maira.dashboards.feature_stats import FeatureStats
from sae_lens_maira.dashboards.neuronpedia_rules import NeuronpediaRuleError
from sae_lens_maira.dashboards.schemas import read_jsonl
from sae_lens_maira.dashboards.synthetic import REGION_FEATURE, TOKEN_FEATURE
from tests.dashboards.neuronpedia_importer import BOT_USER, Database, ImportError_, import_export

EXPS = {
    TOKEN_FEATURE: Explanation(TOKEN_FEATURE, 'the word "effusion"', "gpt-4o-mini", "gpt-4o-mini",
                               detection={"balanced_accuracy": 0.9}),
    REGION_FEATURE: Explanation(REGION_FEATURE, "lower-left frontal patches", "gpt-4o-mini",
                                "gpt-4o-mini", method="np_max-act"),
}  # fmt: skip


@pytest.fixture
def export(stats, tmp_path):
    return write_neuronpedia_export(stats, tmp_path / "exports", explanations=EXPS, batch_size=5)


def _n_rows(export: Path, sub: str) -> int:
    return sum(len(read_jsonl(p)) for p in (export / sub).glob("*.jsonl.gz"))


def test_importer_accepts_every_row_in_its_order(export, stats):
    db = import_export(Database(), export)
    assert db.log == []  # the release was created too (its errors are only logged)
    key = ("maira-2-synthetic", "3-res-syn")
    assert len(db.rows["Neuron"]) == len(stats.alive_features()) == _n_rows(export, "features")
    assert len(db.rows["Activation"]) == _n_rows(export, "activations")  # ids unique: none lost
    assert len(db.rows["Explanation"]) == 2
    model = db.rows["Model"][("maira-2-synthetic",)]
    assert model["creatorId"] == BOT_USER and model["defaultSourceSetName"] is None
    assert db.rows["Source"][key]["setName"] == "res-syn"
    exp = db.rows["Explanation"][(f"maira-2-synthetic@3-res-syn:{TOKEN_FEATURE}:explanation",)]
    assert (exp["typeName"], exp["explanationModelName"]) == ("np_max-act-logits", "gpt-4o-mini")
    region = next(e for e in db.rows["Explanation"].values() if e["index"] == str(REGION_FEATURE))
    assert region["typeName"] == "np_max-act"  # a registered method of the explanation is kept
    # only our namespaced extras are dropped; every Neuron / Activation field lands in a column
    assert db.dropped == {"Neuron": set(), "Activation": {"sae_lens_maira"},
                          "Explanation": {"sae_lens_maira"}}  # fmt: skip
    neuron = db.rows["Neuron"][(*key, str(TOKEN_FEATURE))]
    assert neuron["decoder_weights_dist"] == [] and neuron["sourceSetName"] == "res-syn"
    # a re-import (or a second layer) changes nothing and fails nowhere
    before = {t: len(r) for t, r in db.rows.items()}
    import_export(db, export)
    assert {t: len(r) for t, r in db.rows.items()} == before


def test_second_layer_joins_the_existing_model_and_set(stats, export, tmp_path):
    db = import_export(Database(), export)
    stats2 = replace(stats, meta=replace(stats.meta, layer=4, hook_name="blocks.4.hook_resid_post"))
    export2 = write_neuronpedia_export(stats2, tmp_path / "exports", explanations=EXPS)
    import_export(db, export2)
    assert {k[1] for k in db.rows["Source"]} == {"3-res-syn", "4-res-syn"}
    assert len(db.rows["Neuron"]) == 2 * len(stats.alive_features())


def _rewrite(path: Path, change) -> None:
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    path.write_text("".join(json.dumps(change(r)) + "\n" for r in rows))


def _rewrite_gz(path: Path, change) -> None:
    import gzip

    rows = read_jsonl(path)
    with gzip.open(path, "wt") as fh:
        fh.write("".join(json.dumps(change(r)) + "\n" for r in rows))


@pytest.mark.parametrize(
    "what, change, error",
    [
        ("model names its source set", lambda d: _rewrite(d / "model.jsonl", lambda r: r | {
            "defaultSourceSetName": "res-syn"}), "Model_defaultSourceSetName_id_fkey"),
        ("creator is a name", lambda d: _rewrite(d / "model.jsonl", lambda r: r | {
            "creatorId": "sae-lens-maira"}), "Model_creatorId_fkey"),
        ("unknown field in a metadata row", lambda d: _rewrite(d / "source.jsonl", lambda r: r | {
            "sae_lens_maira": {}}), "Unknown argument 'sae_lens_maira'"),
        ("our old explanation type", lambda d: [_rewrite_gz(p, lambda r: r | {
            "typeName": "sae-lens-maira-autointerp"}) for p in (d / "explanations").glob("*.gz")],
         "Explanation_typeName_fkey"),
        ("empty explanation model", lambda d: [_rewrite_gz(p, lambda r: r | {
            "explanationModelName": ""}) for p in (d / "explanations").glob("*.gz")],
         "Explanation_explanationModelName_fkey"),
        ("activation before its feature", lambda d: [p.unlink() for p in (d / "features").glob("*")],
         "Activation_modelId_layer_index_fkey"),
    ],
)  # fmt: skip
def test_the_replay_catches_what_the_real_import_refuses(export, what, change, error):
    """The replay is strict where Neuronpedia is: each of these aborted real imports."""
    change(export)
    with pytest.raises(ImportError_, match=error):
        import_export(Database(), export)


# ---------------------------------------------------------------- bad input: refused, nothing written
def _saved(stats, tmp_path: Path, **meta_changes) -> Path:
    d = tmp_path / "stats"
    stats.save(d)
    doc = json.loads((d / "stats.json").read_text())
    for k, v in meta_changes.items():
        if k.startswith("top_"):
            doc[k[4:]] = v
        else:
            doc["meta"][k] = v
    (d / "stats.json").write_text(json.dumps(doc))
    return d


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"model_id": "../../evil"}, "model id '../../evil' is not one Neuronpedia accepts"),
        ({"source_set": "../x"}, "source set name '../x'"),
        ({"sae_set": "../../x"}, "sae_set '../../x' cannot be a folder name"),
        ({"sae_id_suffix": "a/../../b"}, "cannot be a folder name"),
        ({"layer": "3"}, "meta.layer must be int"),
        ({"model_id": 7}, "meta.model_id must be str"),
        ({"top_n_sequences": "48"}, "n_sequences must be int"),
        ({"top_thumbnails": {"0": ["../../x.png"]}}, "not a plain .png file name"),
        ({"saelens_config": {"model_name": "gpt2"}}, "the SAE was trained on 'gpt2'"),
    ],
)  # fmt: skip
def test_tampered_stats_are_refused_before_anything_is_written(stats, tmp_path, capsys, change,
                                                               message):  # fmt: skip
    d = _saved(stats, tmp_path, **change)
    before = _files_under(tmp_path)
    for fmt in ("neuronpedia", "saedashboard"):
        code = main(["dashboards", "export", "--stats", str(d), "--out", str(tmp_path / "out"),
                     "--format", fmt])  # fmt: skip
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and err[0].startswith("error: "), err
        assert message in err[0], err[0]
        assert _files_under(tmp_path) == before  # nothing inside --out, nothing outside it


def test_model_row_takes_the_shape_collect_recorded(stats, tmp_path):
    """No --n-layers/--d-model: the model row is the statistics' own model, never MAIRA-2's
    32 x 4096 for another model; older statistics without a shape must name the flags."""
    import json

    assert (stats.meta.n_layers, stats.meta.d_model) == (8, 12)
    root = write_neuronpedia_export(stats, tmp_path / "a", explanations=EXPS, batch_size=5)
    model_rows = [json.loads(line) for line in (root / "model.jsonl").read_text().splitlines()]
    assert model_rows and all((r["layers"], r["neuronsPerLayer"], r["dimension"]) == (8, 12, 12)
                              for r in model_rows)  # fmt: skip
    old = replace(stats, meta=replace(stats.meta, n_layers=None, d_model=None))
    with pytest.raises(ValueError, match="do not record its layer count.*--n-layers and --d-model"):
        write_neuronpedia_export(old, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    write_neuronpedia_export(old, tmp_path / "c", n_layers=6, d_model=12)  # flags still win
    maira = replace(old, meta=replace(old.meta, model_id="maira-2"))
    from sae_lens_maira.dashboards.export_records import MAIRA2_SHAPE, model_shape

    assert model_shape(maira.meta) == MAIRA2_SHAPE


def test_sae_of_another_model_is_refused(stats, tmp_path):
    wide = replace(stats, meta=replace(stats.meta, saelens_config={"d_in": 2048}))
    for write in (write_neuronpedia_export, write_saedashboard):
        with pytest.raises(ValueError, match="2048-dim activations but the model's d_model is 4096"):
            write(wide, tmp_path / "out", d_model=4096)
    other = replace(stats, meta=replace(stats.meta, saelens_config={
        "metadata": {"model_name": "google/gemma-2-2b"}}))  # fmt: skip
    with pytest.raises(ValueError, match="trained on 'google/gemma-2-2b'"):
        write_saedashboard(other, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unregistered_explanation_names_are_refused_with_the_accepted_list(stats, tmp_path, capsys):
    exp = tmp_path / "exp.jsonl"
    exp.write_text(json.dumps({"feature": 0, "text": "x", "explainer": "gpt-4o-mini"}) + "\n")
    d = _saved(stats, tmp_path)
    base = ["dashboards", "export", "--stats", str(d), "--out", str(tmp_path / "out"),
            "--explanations", str(exp), "--format", "neuronpedia"]  # fmt: skip
    assert main([*base, "--explanation-method", "sae-lens-maira-autointerp"]) == 1
    err = capsys.readouterr().err
    assert "explanation method 'sae-lens-maira-autointerp' is not registered" in err
    assert "np_max-act-logits, np_max-act" in err  # the list of accepted ones
    assert main([*base, "--explanation-model", "gpt4"]) == 1
    err = capsys.readouterr().err
    assert "explanation model 'gpt4' is not registered" in err and "gpt-4o-mini" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(NeuronpediaRuleError, match="not a Neuronpedia user id"):
        write_neuronpedia_export(stats, tmp_path / "out", creator_id="Jane Doe <jane@x>")
    assert not (tmp_path / "out").exists()
    assert set(os.listdir(tmp_path)) == {"exp.jsonl", "stats"}
    assert FeatureStats.load(d).meta.model_id == stats.meta.model_id
