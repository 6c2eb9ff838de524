"""`steer` with unreadable images no longer aborts: it steers the readable studies and writes
every skipped study, with its reason, to <out>/skipped_studies.json."""

import json

from sae_lens_maira.checkpoint_config import read_config
from sae_lens_maira.cli import main
from tests.messy_studies import BAD, GOOD, save_sae, write_config, write_messy_manifest


def test_steer_skips_unreadable_images_and_reports_them(
    tmp_path, hub_checkpoint, capsys, monkeypatch
):
    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    order = ["g0", "broken", "g1", "tiny", "gone", "bomb", "g2"]
    manifest = write_messy_manifest(tmp_path / "m", order)
    save_sae(tmp_path / "exp" / "sae", read_config(hub_checkpoint).d_model)
    steer = {"sae": "sae", "features": [0], "finding": "pleural_effusion", "mode": "add",
             "coefficients": [0.0, 2.0], "n_studies": 10, "max_new_tokens": 2, "batch_size": 2,
             "out": "steering"}  # fmt: skip
    config = write_config(tmp_path / "exp", hub_checkpoint, manifest, steer=steer)
    assert main(["steer", "--config", str(config)]) == 0
    out = tmp_path / "exp" / "steering"
    sweep = json.loads((out / "steering.json").read_text())
    assert sweep["study_ids"] == ["g0", "g1", "g2"]  # the readable studies, in order
    assert [len(p["reports"]) for p in sweep["points"]] == [3, 3]
    report = json.loads((out / "skipped_studies.json").read_text())
    got = [(s["study_id"], s["reason"]) for s in report["skipped_studies"]]
    assert got == [("gone", "missing_image"), ("broken", "unreadable_image"),
                   ("tiny", "image_too_small"), ("bomb", "image_too_large")]  # fmt: skip
    assert all(BAD[sid] == reason for sid, reason in got) and report["n_studies"] == len(order)
    assert "skipped 4 of 7 studies" in capsys.readouterr().err
    assert set(GOOD) >= set(sweep["study_ids"])


def test_steer_with_n_studies_takes_the_first_readable_ones(tmp_path, hub_checkpoint, monkeypatch):
    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    manifest = write_messy_manifest(tmp_path / "m", ["broken", "g0", "g1", "tiny"])
    save_sae(tmp_path / "exp" / "sae", read_config(hub_checkpoint).d_model)
    steer = {"sae": "sae", "features": [0], "finding": "pleural_effusion", "mode": "add",
             "coefficients": [1.0], "n_studies": 1, "max_new_tokens": 1, "out": "steering"}  # fmt: skip
    config = write_config(tmp_path / "exp", hub_checkpoint, manifest, steer=steer)
    assert main(["steer", "--config", str(config)]) == 0
    out = tmp_path / "exp" / "steering"
    assert json.loads((out / "steering.json").read_text())["study_ids"] == ["g0"]
    report = json.loads((out / "skipped_studies.json").read_text())
    assert [s["study_id"] for s in report["skipped_studies"]] == ["broken"]  # tiny never reached
