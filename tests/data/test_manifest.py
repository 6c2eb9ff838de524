"""Manifest source: JSONL and CSV, relative paths, labels, validation errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from sae_lens_maira.data.manifest import ManifestError, load_manifest


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "img").mkdir()
    for name in ("f1", "l1", "p1", "f2"):
        Image.new("L", (4, 4)).save(tmp_path / "img" / f"{name}.png")
    return tmp_path


def test_jsonl(folder):
    absolute = str(folder / "img" / "f2.png")
    lines = [
        {
            "study_id": "a",
            "frontal": "img/f1.png",
            "lateral": "img/l1.png",
            "prior_frontal": "img/p1.png",
            "indication": "Cough.",
            "technique": "PA and lateral",
            "comparison": "",
            "prior_report": "Normal.",
            "findings": "Small left effusion.",
            "labels": {"pleural_effusion": True, "devices": False},
            "subject_id": "p9",
        },
        {"study_id": "b", "frontal": absolute, "findings": "Normal."},
    ]
    path = folder / "m.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    result = load_manifest(path)
    a, b = result.studies
    assert a.frontal == folder / "img" / "f1.png" and a.lateral == folder / "img" / "l1.png"
    assert a.prior_frontal == folder / "img" / "p1.png"
    assert a.comparison is None and a.technique == "PA and lateral" and a.prior_report == "Normal."
    assert a.labels == {"pleural_effusion": True, "devices": False}
    assert a.meta["subject_id"] == "p9" and a.meta["manifest_line"] == 1
    assert b.frontal == Path(absolute) and b.lateral is None and b.labels == {}


def test_csv_with_label_columns(folder):
    path = folder / "m.csv"
    path.write_text(
        "study_id,frontal,findings,label_cardiomegaly,label_devices,labels\n"
        'a,img/f1.png,"Enlarged heart,\nstable.",yes,0,\n'
        'b,img/f2.png,Normal.,,,"{""pleural_effusion"": false}"\n'
    )
    a, b = load_manifest(path).studies
    assert a.findings == "Enlarged heart,\nstable." and a.labels == {
        "cardiomegaly": True,
        "devices": False,
    }
    assert b.labels == {"pleural_effusion": False}
    assert b.meta["manifest_line"] == 4  # quoted newline: b is on the file's fourth line


@pytest.mark.parametrize(
    "line,match",
    [
        ({"frontal": "img/f1.png"}, r"m.jsonl:2: field 'study_id' is missing"),
        ({"study_id": "x"}, r"m.jsonl:2: field 'frontal' is missing"),
        (
            {"study_id": "a", "frontal": "img/f1.png"},
            r"m.jsonl:2: field 'study_id' 'a' repeats line 1",
        ),
        (
            {"study_id": "x", "frontal": "img/f1.png", "labels": {"cardiomegaly": "maybe"}},
            r"m.jsonl:2: field 'labels.cardiomegaly'.*not a boolean",
        ),
        (
            {"study_id": "x", "frontal": "img/f1.png", "findings": 3},
            r"m.jsonl:2: field 'findings' must be text",
        ),
        ({"study_id": "x", "frontal": 5}, r"m.jsonl:2: field 'frontal' must be a file path"),
    ],
)
def test_validation_names_line_and_field(folder, line, match):
    path = folder / "m.jsonl"
    path.write_text(
        json.dumps({"study_id": "a", "frontal": "img/f1.png"}) + "\n" + json.dumps(line) + "\n"
    )
    with pytest.raises(ManifestError, match=match):
        load_manifest(path)


def test_bad_json_and_types(folder):
    path = folder / "m.jsonl"
    path.write_text('{"study_id": "a", "frontal": "img/f1.png"}\n{"study_id": \n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: not valid JSON"):
        load_manifest(path)
    other = folder / "m.txt"
    other.write_text("x")
    with pytest.raises(ManifestError, match="use .jsonl or .csv"):
        load_manifest(other)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_manifest(folder / "none.jsonl")


def test_missing_images_error_or_skip(folder):
    path = folder / "m.jsonl"
    path.write_text(
        json.dumps({"study_id": "a", "frontal": "img/f1.png"})
        + "\n"
        + json.dumps({"study_id": "b", "frontal": "img/f1.png", "lateral": "img/gone.png"})
        + "\n"
    )
    with pytest.raises(
        FileNotFoundError, match=r"m.jsonl:2: image file\(s\) not found: lateral=.*gone.png"
    ):
        load_manifest(path)
    result = load_manifest(path, on_missing="skip")
    assert [s.study_id for s in result.studies] == ["a"]
    assert result.skipped == {"missing_image": 1} and "gone.png" in result.problems[0]
    assert "1 studies, 1 skipped (missing_image)" == result.summary()
    assert len(load_manifest(path, check_files=False)) == 2


def test_written_manifests_read_back(folder):
    from sae_lens_maira.data.manifest import write_manifest
    from sae_lens_maira.data.study import Study

    studies = [
        Study("a", folder / "img" / "f1.png", lateral=folder / "img" / "l1.png", indication="Cough.",
              findings="Small left effusion.", labels={"pleural_effusion": True}),
        Study("b", folder / "img" / "f2.png", comparison="None.", findings="Normal.",
              technique="PA", labels={}),
    ]  # fmt: skip
    path = write_manifest(studies, folder / "out" / "m.jsonl")
    a, b = load_manifest(path).studies
    for got, want in ((a, studies[0]), (b, studies[1])):
        assert (got.study_id, got.frontal, got.lateral) == (want.study_id, want.frontal, want.lateral)
        assert (got.indication, got.comparison, got.findings) == (want.indication, want.comparison, want.findings)
        assert got.labels == want.labels
    assert b.technique is None  # not written
    assert len(path.read_text().splitlines()) == 2
