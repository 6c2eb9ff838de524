"""`dashboards collect` on a manifest with a bomb PNG, a 1x1 PNG, a missing and a broken file:
it completes on the good studies and writes every skip, with its reason, to skipped_studies.json."""

import json

import pytest

from sae_lens_maira.checkpoint_config import read_config
from sae_lens_maira.cli import main
from sae_lens_maira.dashboards.feature_stats import FeatureStats
from tests.messy_studies import BAD, GOOD, ORDER, save_sae, write_config, write_messy_manifest


@pytest.fixture
def config(tmp_path, hub_checkpoint):
    def make(order=ORDER):
        manifest = write_messy_manifest(tmp_path / "m", order)
        save_sae(tmp_path / "exp" / "sae", read_config(hub_checkpoint).d_model)
        return write_config(tmp_path / "exp", hub_checkpoint, manifest,
                            dashboards={"sae": "sae", "batch_size": 2})  # fmt: skip

    return make


def test_collect_skips_bad_studies_and_writes_the_list(config, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    out = tmp_path / "stats"
    assert main(["dashboards", "collect", "--config", str(config()), "--out", str(out)]) == 0
    report = json.loads((out / "skipped_studies.json").read_text())
    got = [(s["study_id"], s["reason"]) for s in report["skipped_studies"]]
    assert got == [("gone", "missing_image"), ("bomb", "image_too_large"),
                   ("tiny", "image_too_small"), ("broken", "unreadable_image")]  # fmt: skip
    assert dict(got) == BAD and report["n_studies"] == len(ORDER) and report["n_skipped"] == 4
    stats = FeatureStats.load(out)
    assert stats.n_sequences == len(GOOD)  # every good study was run, none of the bad ones
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "skipped 4 of 8 studies: 1 image_too_large, 1 image_too_small, 1 missing_image, "
        f"1 unreadable_image; see {out / 'skipped_studies.json'}"
    )


def test_collect_with_every_study_skipped_is_a_clear_error(config, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    cfg = config(["bomb", "tiny", "gone"])
    assert main(["dashboards", "collect", "--config", str(cfg), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: dashboards collect skipped every one of its 2 studies")
    assert not (tmp_path / "s").exists()
