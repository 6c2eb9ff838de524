"""MIMIC-CXR-JPG source on a tiny folder in the exact PhysioNet layout."""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import pytest
from PIL import Image

from sae_lens_maira.data.mimic_cxr import image_path, load_mimic_cxr, parse_report_sections

REPORT = """                                 FINAL REPORT
 EXAMINATION:  CHEST (PA AND LAT)

 INDICATION:  ___F with new onset ascites  // eval for infection

 TECHNIQUE:  Chest PA and lateral

 COMPARISON:  None.

 FINDINGS:

 There is no focal consolidation, pleural effusion or pneumothorax.  Bilateral
 nodular opacities that most likely represent nipple shadows.

 IMPRESSION:

 No acute cardiopulmonary process.
"""

# (dicom_id, subject, study, view, date, time)
IMAGES = [
    ("d-old-pa", "10000032", "50000001", "PA", "21800506", "213014.531"),
    ("d-ap", "10000032", "50000002", "AP", "21800626", "165500.312"),
    ("d-pa", "10000032", "50000002", "PA", "21800626", "165600.000"),
    ("d-lat", "10000032", "50000002", "LATERAL", "21800626", "165700.000"),
    ("d-ll", "10000764", "50000003", "LL", "21320101", "100000"),  # lateral only: skipped
    ("d-nofind", "10000764", "50000004", "AP", "21320102", "100000"),  # no findings: skipped
    ("d-test", "11000011", "50000005", "AP", "21100101", "080000"),
]
SPLIT = {
    "50000001": "train",
    "50000002": "train",
    "50000003": "train",
    "50000004": "validate",
    "50000005": "test",
}


def _write_csv(path: Path, header: list[str], rows: list[list[str]], gz: bool) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    data = buf.getvalue().encode()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)


def make_mimic(root: Path, gz: bool = True, sectioned: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    meta = [
        [d, subj, st, view, date, time, "CHEST (PA AND LAT)"]
        for d, subj, st, view, date, time in IMAGES
    ]
    _write_csv(
        root / "mimic-cxr-2.0.0-metadata.csv",
        [
            "dicom_id",
            "subject_id",
            "study_id",
            "ViewPosition",
            "StudyDate",
            "StudyTime",
            "PerformedProcedureStepDescription",
        ],
        meta,
        gz,
    )
    _write_csv(
        root / "mimic-cxr-2.0.0-split.csv",
        ["dicom_id", "study_id", "subject_id", "split"],
        [[d, st, subj, SPLIT[st]] for d, subj, st, *_ in IMAGES],
        gz,
    )
    for d, subj, st, *_ in IMAGES:
        p = image_path(root, subj, st, d)
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (8, 8), 128).save(p, "JPEG")
    reports = {
        ("10000032", "50000001"): REPORT.replace(
            "No acute cardiopulmonary process.", "Old study impression."
        ),
        ("10000032", "50000002"): REPORT,
        ("10000764", "50000004"): " INDICATION: cough\n\n IMPRESSION: No acute process.\n",
        ("11000011", "50000005"): " FINDINGS: Right IJ line tip in the SVC.\n",
    }
    for (subj, st), text in reports.items():
        p = root / "files" / f"p{subj[:2]}" / f"p{subj}" / f"s{st}.txt"
        p.write_text(text)
    if sectioned:
        _write_csv(
            root / "mimic_cxr_sectioned.csv",
            ["study", "impression", "findings", "last_paragraph", "comparison"],
            [
                [
                    "s50000001",
                    "Old study impression.",
                    "Prior findings: mild cardiomegaly.\nStable.",
                    "",
                    "",
                ]
            ],
            gz,
        )
    return root


def test_parse_report_sections():
    sec = parse_report_sections(REPORT)
    assert sec["indication"] == "___F with new onset ascites // eval for infection"
    assert sec["technique"] == "Chest PA and lateral"
    assert sec["comparison"] == "None."
    assert (
        sec["findings"].startswith("There is no focal consolidation")
        and "nipple shadows." in sec["findings"]
    )
    assert sec["impression"] == "No acute cardiopulmonary process."


@pytest.mark.parametrize("gz", [True, False])
def test_studies_frontal_lateral_prior(tmp_path, gz):
    root = make_mimic(tmp_path / "mimic", gz=gz)
    result = load_mimic_cxr(root, progress=False)
    by_id = {s.study_id: s for s in result.studies}
    assert sorted(by_id) == ["s50000001", "s50000002", "s50000005"]
    s = by_id["s50000002"]
    assert Path(s.frontal).name == "d-pa.jpg"  # PA preferred over AP
    assert Path(s.lateral).name == "d-lat.jpg"
    assert Path(s.prior_frontal).name == "d-old-pa.jpg"
    assert s.prior_report == "Prior findings: mild cardiomegaly. Stable."  # from the sectioned CSV
    assert s.indication.startswith("___F with new onset ascites")
    assert s.technique == "Chest PA and lateral" and s.comparison == "None."
    assert s.findings.startswith("There is no focal consolidation")
    assert s.meta["subject_id"] == "10000032" and s.meta["split"] == "train"
    assert s.meta["prior_study_id"] == "s50000001"
    first = by_id["s50000001"]
    assert first.prior_frontal is None and first.prior_report is None and first.lateral is None
    assert first.findings == "Prior findings: mild cardiomegaly. Stable."  # CSV over text
    assert result.skipped == {"no_frontal": 1, "no_findings": 1}
    assert any("s50000004" in p and "FINDINGS" in p for p in result.problems)


def test_split_filter_and_no_prior(tmp_path):
    root = make_mimic(tmp_path / "m", sectioned=False)
    test = load_mimic_cxr(root, split="test", progress=False)
    assert [s.study_id for s in test.studies] == ["s50000005"]
    assert test.skipped["not_in_split"] == 4
    train = load_mimic_cxr(root, split=["train"], with_prior=False, progress=False)
    s = next(s for s in train.studies if s.study_id == "s50000002")
    assert s.prior_frontal is None and s.prior_report is None
    with pytest.raises(ValueError, match="unknown split"):
        load_mimic_cxr(root, split="dev", progress=False)


def test_missing_files_reported(tmp_path):
    root = make_mimic(tmp_path / "m")
    image_path(root, "10000032", "50000002", "d-lat").unlink()
    with pytest.raises(
        FileNotFoundError,
        match=r"s50000002: missing image file\(s\) lateral=.*d-lat.jpg.*on_missing='skip'",
    ):
        load_mimic_cxr(root, progress=False)
    result = load_mimic_cxr(root, on_missing="skip", progress=False)
    assert result.skipped["missing_image"] == 1
    assert "s50000002" not in {s.study_id for s in result.studies}
    with pytest.raises(FileNotFoundError, match="mimic-cxr-2.0.0-metadata"):
        load_mimic_cxr(tmp_path, progress=False)
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="split.csv"):
        load_mimic_cxr(root, split="train", progress=False)
