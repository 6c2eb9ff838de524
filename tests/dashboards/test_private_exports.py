"""``--private``: no byte of either export (nor of the viewer) carries study text, study ids, images,
the dataset's name or free text that names it."""

from __future__ import annotations

import copy
import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest

from sae_lens_maira.dashboards.commands import export
from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.feature_stats import _PRIVATE_ROLES
from sae_lens_maira.dashboards.synthetic import TOKEN_FEATURE
from sae_lens_maira.dashboards.viewer import write_viewer
from sae_lens_maira.dashboards.viewer_batches import write_viewer_from_saedashboard

MARK = "zqx-marker-7731"  # stands for a name or date inside a report
DATASET = "physionet-cxr-restricted-v9"


@pytest.fixture(scope="module")
def marked(stats, tmp_path_factory):
    """The statistics with the marker in every token string that only study text uses, in every
    study id, and the dataset name in the metadata (also nested in the SAE's config)."""
    t = stats.tensors
    private_ids, public_ids = set(), set()
    for prefix in ("top", "quant"):
        for kind in ("win", "ctx"):
            ids, roles = t[f"{prefix}.{kind}_ids"].flatten(), t[f"{prefix}.{kind}_roles"].flatten()
            for i, r in zip(ids.tolist(), roles.tolist(), strict=True):
                (private_ids if r in _PRIVATE_ROLES else public_ids).add(i)
    only_private = private_ids - public_ids
    assert only_private
    m = copy.copy(stats)
    m.token_strings = {i: (f"{s}{MARK}" if i in only_private else s)
                       for i, s in stats.token_strings.items()}  # fmt: skip
    m.study_ids = [f"{MARK}-{i}" for i in range(len(stats.study_ids))]
    m.meta = replace(stats.meta, dataset=DATASET, description=f"SAE trained on {DATASET} reports",
                     saelens_config={"dataset_path": DATASET, "context_size": 1024,
                                     "metadata": {"dataset_path": DATASET, "note": f"from {DATASET}",
                                                  "hook_name": "blocks.3.hook_resid_post"}})  # fmt: skip
    m._groups = None
    d = tmp_path_factory.mktemp("marked") / "stats"
    m.save(d)
    return d


def _all_bytes(root: Path) -> bytes:
    out = b""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            out += gzip.decompress(data) if p.suffix == ".gz" else data
            out += p.name.encode()
    return out


def _explanations(path: Path, private: bool) -> Path:
    text = "report words about effusion" + ("" if private else f" like {MARK}")
    e = Explanation(TOKEN_FEATURE, text, "gpt-4o-mini", "gpt-4o-mini", private=private)
    path.write_text(json.dumps(e.__dict__) + "\n")
    return path


def test_private_exports_leak_nothing(marked, tmp_path):
    exps = _explanations(tmp_path / "exp.jsonl", private=True)
    out = tmp_path / "private"
    np_dir, sd_dir = export(marked, out, "both", exps, private=True, d_model=12)
    write_viewer_from_saedashboard(sd_dir, tmp_path / "private" / "viewer-from-batch")
    from sae_lens_maira.dashboards.feature_stats import FeatureStats

    write_viewer(FeatureStats.load(marked), out / "viewer", private=True)
    blob = _all_bytes(out)
    assert MARK.encode() not in blob and DATASET.encode() not in blob
    assert b"data:image/png" not in blob and not list(out.rglob("*.png"))  # no X-ray pixels
    assert b"<report>" in blob and b"report words about effusion" in blob  # still a useful export
    source = json.loads((np_dir / "source.jsonl").read_text())
    assert source["dataset"] == "(private)"
    assert json.loads(source["saelensConfig"])["context_size"] == 1024  # harmless keys stay
    batch = json.loads((sd_dir / "batch-0.json").read_text())
    assert {f["dataset"] for f in batch["features"]} == {"(private)"}


def test_the_marker_is_there_without_private(marked, tmp_path):
    """The check above can fail: without --private the same export carries all of it."""
    out = tmp_path / "open"
    export(marked, out, "both", _explanations(tmp_path / "e.jsonl", private=False), d_model=12,
           explanation_model="gpt-4o-mini")  # fmt: skip
    blob = _all_bytes(out)
    assert MARK.encode() in blob and DATASET.encode() in blob and list(out.rglob("*.png"))


def test_private_export_refuses_explanations_written_from_study_text(marked, tmp_path):
    exps = _explanations(tmp_path / "exp.jsonl", private=False)
    with pytest.raises(ValueError, match="written from non-private examples"):
        export(marked, tmp_path / "out", "neuronpedia", exps, private=True, d_model=12)
    assert not (tmp_path / "out").exists()
