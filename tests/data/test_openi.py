"""Open-I reports from the torchxrayvision wheel: parsing, MeSH labels, studies, caching."""

from __future__ import annotations

import subprocess
import zipfile

import numpy as np
import pytest
from openi_fakes import FAKE_REPORTS, make_tgz

from sae_lens_maira.data import openi
from sae_lens_maira.data.openi import (
    ensure_openi_wheel,
    label_counts,
    load_openi_reports,
    mesh_labels,
    openi_studies,
)
from sae_lens_maira.data.splits import hash_split, split_studies
from sae_lens_maira.data.synthetic_xray import SyntheticXrayRenderer


def test_reads_reports_from_wheel_without_extracting(fake_wheel):
    reports = load_openi_reports(fake_wheel)
    assert [r.uid for r in reports] == ["CXR1", "CXR2", "CXR3", "CXR5", "CXR7", "CXR10"]
    r1 = reports[0]
    assert r1.indication == "Positive TB test"
    assert r1.comparison == "None."
    assert "There are no XXXX of a pleural effusion." in r1.findings  # de-identification kept
    assert r1.impression == "Normal chest x-XXXX."
    assert r1.image_ids == ("CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001")
    assert r1.image_views == {"CXR1_1_IM-0001-3001": "PA", "CXR1_1_IM-0001-4001": "LL"}
    assert r1.mesh_automatic == ("Lung",)
    assert r1.captions[0] == "Xray Chest PA and Lateral"
    empty = next(r for r in reports if r.uid == "CXR5")
    assert empty.findings is None and empty.image_ids == ()


def test_tgz_and_folder_inputs_match_wheel(fake_wheel, tmp_path):
    tgz = tmp_path / "NLMCXR_reports.tgz"
    tgz.write_bytes(make_tgz(FAKE_REPORTS))
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    from openi_fakes import report_xml

    for r in FAKE_REPORTS:
        (folder / f"{r['uid'][3:]}.xml").write_text(report_xml(r))
    from_wheel = [(r.uid, r.findings, r.labels) for r in load_openi_reports(fake_wheel)]
    assert [(r.uid, r.findings, r.labels) for r in load_openi_reports(tgz)] == from_wheel
    assert [(r.uid, r.findings, r.labels) for r in load_openi_reports(folder)] == from_wheel


def test_mesh_label_mapping():
    assert mesh_labels(["Cardiomegaly/mild"])["cardiomegaly"]
    assert mesh_labels(["Cardiac Shadow/enlarged/mild"])["cardiomegaly"]
    assert not mesh_labels(["Cardiac Shadow/borderline"])["cardiomegaly"]
    assert mesh_labels(["Pleural Effusion/left/small"])["pleural_effusion"]
    assert not mesh_labels(["Costophrenic Angle/left/blunted"])["pleural_effusion"]
    for term in (
        "Catheters, Indwelling/right",
        "Implanted Medical Device/left",
        "Tube, Inserted/trachea",
        "Medical Device",
    ):
        assert mesh_labels([term])["devices"], term
    assert not mesh_labels(["Tuberculosis"])["devices"]  # "tube" is a whole word
    assert not mesh_labels(["Surgical Instruments/mediastinum", "Stents/coronary vessels"])[
        "devices"
    ]
    assert mesh_labels(["normal"])["normal"] and not mesh_labels(["Lung/hyperdistention"])["normal"]


def test_labels_from_fake_reports(fake_wheel):
    by_uid = {r.uid: r for r in load_openi_reports(fake_wheel)}
    assert by_uid["CXR10"].labels == {
        "cardiomegaly": True,
        "pleural_effusion": False,
        "devices": True,
        "normal": False,
    }
    assert by_uid["CXR7"].labels["cardiomegaly"] and by_uid["CXR7"].labels["pleural_effusion"]
    assert not by_uid["CXR7"].labels["devices"]  # Tuberculosis
    assert by_uid["CXR3"].labels["devices"]
    counts = label_counts(list(by_uid.values()))
    assert counts == {
        "reports": 5,
        "cardiomegaly": 2,
        "pleural_effusion": 1,
        "devices": 2,
        "normal": 1,
    }


def test_render_spec_uses_mesh_hints(fake_wheel):
    by_uid = {r.uid: r for r in load_openi_reports(fake_wheel)}
    spec = openi.render_spec(by_uid["CXR10"], 3)
    assert spec.cardiomegaly and set(spec.devices) == {"pacemaker", "central_line"}
    assert openi.render_spec(by_uid["CXR7"], 3).effusion == "bilateral"
    assert openi.render_spec(by_uid["CXR3"], 3).devices == ("endotracheal_tube",)


def test_studies_skip_missing_findings_and_are_deterministic(fake_wheel):
    reports = load_openi_reports(fake_wheel)
    renderer = SyntheticXrayRenderer(96)
    studies = openi_studies(reports, renderer, progress=False)
    assert [s.study_id for s in studies] == ["CXR1", "CXR2", "CXR3", "CXR7", "CXR10"]
    s1 = studies[0]
    assert s1.findings.startswith("The cardiac silhouette")
    assert s1.indication == "Positive TB test" and s1.comparison == "None." and s1.technique is None
    assert s1.lateral is not None and s1.prior_frontal is None
    cxr7 = next(s for s in studies if s.study_id == "CXR7")
    assert cxr7.lateral is None  # the real study had one image
    assert cxr7.labels["pleural_effusion"] and cxr7.meta["render"]["effusion"] == "bilateral"
    again = openi_studies(reports, renderer, progress=False)
    for a, b in zip(studies, again, strict=True):
        assert np.array_equal(np.asarray(a.frontal), np.asarray(b.frontal))
    other_seed = openi_studies(reports, renderer, seed=1, progress=False)
    assert not np.array_equal(np.asarray(studies[0].frontal), np.asarray(other_seed[0].frontal))
    never = openi_studies(reports, renderer, lateral="never", progress=False)
    assert all(s.lateral is None for s in never)
    with pytest.raises(ValueError, match="lateral must be"):
        openi_studies(reports, renderer, lateral="sometimes")


def test_studies_written_to_image_dir_and_reused(fake_wheel, tmp_path):
    reports = load_openi_reports(fake_wheel)
    renderer = SyntheticXrayRenderer(80)
    studies = openi_studies(reports, renderer, image_dir=tmp_path, progress=False)
    path = studies[0].frontal
    assert path.exists() and path.suffix == ".png"
    mtime = path.stat().st_mtime_ns
    again = openi_studies(reports, renderer, image_dir=tmp_path, progress=False)
    assert again[0].frontal == path and path.stat().st_mtime_ns == mtime


def test_hash_split_is_deterministic_and_independent_of_order(fake_wheel):
    import hashlib

    key = "CXR1234"
    u = (
        int.from_bytes(hashlib.sha256(b"sae-lens-maira:" + key.encode()).digest()[:8], "big")
        / 2**64
    )
    assert hash_split(key, 0.3) == ("held_out" if u < 0.3 else "train")
    ids = [f"CXR{i}" for i in range(2000)]
    held = sum(hash_split(i, 0.2) == "held_out" for i in ids)
    assert 330 < held < 470
    studies = openi_studies(
        load_openi_reports(fake_wheel), SyntheticXrayRenderer(64), progress=False
    )
    train, test = split_studies(studies, 0.5)
    train_r, test_r = split_studies(studies[::-1], 0.5)
    assert {s.study_id for s in test} == {s.study_id for s in test_r}
    assert len(train) + len(test) == len(studies)
    with pytest.raises(ValueError, match="held_out_fraction"):
        hash_split("x", 1.5)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="ensure_openi_wheel"):
        load_openi_reports(tmp_path / "nope.whl")
    bad = tmp_path / "other.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("x/y.txt", "hi")
    with pytest.raises(ValueError, match="NLMCXR_reports.tgz"):
        load_openi_reports(bad)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "1.xml").write_text("<eCitation><uId id='CXR1'/>")
    with pytest.raises(ValueError, match="not well-formed"):
        load_openi_reports(broken)
    (broken / "1.xml").write_text("<eCitation/>")
    with pytest.raises(ValueError, match="no <uId"):
        load_openi_reports(broken)


def test_ensure_wheel_never_redownloads(tmp_path, monkeypatch):
    present = tmp_path / "torchxrayvision-1.5.7-py3-none-any.whl"
    present.write_bytes(b"")

    def boom(*a, **k):
        raise AssertionError("pip must not run when the wheel is cached")

    monkeypatch.setattr(subprocess, "run", boom)
    assert ensure_openi_wheel(tmp_path) == present


def test_ensure_wheel_runs_pip_and_reports_failures(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        (tmp_path / "torchxrayvision-1.5.7-py3-none-any.whl").write_bytes(b"")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    wheel = ensure_openi_wheel(tmp_path)
    assert wheel.exists()
    cmd = calls[0]
    assert (
        cmd[1:4] == ["-m", "pip", "download"]
        and "--no-deps" in cmd
        and "torchxrayvision==1.5.7" in cmd
    )
    assert cmd[cmd.index("-d") + 1] == str(tmp_path)

    other = tmp_path / "empty"
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda cmd, **k: subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version\nnetwork unreachable"
        ),
    )
    with pytest.raises(RuntimeError, match="network unreachable.*Fix: check network access"):
        ensure_openi_wheel(other)
    monkeypatch.setattr(
        subprocess,
        "run",
        lambda cmd, **k: subprocess.CompletedProcess(
            cmd, 1, "", "/usr/bin/python: No module named pip"
        ),
    )
    with pytest.raises(RuntimeError, match="ensurepip"):
        ensure_openi_wheel(other)


def test_real_collection_counts(real_reports):
    """Counts on the real collection (skipped unless the wheel is cached)."""
    assert len(real_reports) == 3955
    counts = label_counts(real_reports)
    assert counts["reports"] == 3425
    assert 311 <= counts["cardiomegaly"] <= 375
    assert 127 <= counts["pleural_effusion"] <= 172
    assert 200 <= counts["devices"] <= 260
    assert 1100 <= counts["normal"] <= 1391
    assert sum("XXXX" in (r.findings or "") for r in real_reports) > 500
