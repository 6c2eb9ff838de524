"""`cache` on a manifest with a bomb PNG, a 1x1 PNG, a missing and a broken file: it completes,
lists every skipped study with its reason in cache_info.json and on the console, and caches the
good studies; a resumed run gives the same cache_info.json; all skipped is a clear error."""

import json

import datasets
import numpy as np
import pytest

from sae_lens_maira.activations import cache as cache_mod
from sae_lens_maira.activations.commands import cache_from_experiment
from sae_lens_maira.cli import main
from sae_lens_maira.experiment import Experiment
from tests.messy_studies import BAD, GOOD, ORDER, write_config, write_messy_manifest

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return write_messy_manifest(tmp_path_factory.mktemp("messy"))


def test_cache_skips_bad_studies_and_reports_them(
    manifest, hub_checkpoint, tmp_path, capsys, caplog, monkeypatch
):
    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    # one study per shard: the shards of the bad studies hold no position at all
    config = write_config(tmp_path, hub_checkpoint, manifest, shard_studies=1)
    assert main(["cache", "--config", str(config)]) == 0
    out = tmp_path / "acts"
    info = json.loads((out / "cache_info.json").read_text())
    skipped = [(s["study_id"], s["reason"]) for s in info["skipped_studies"]]
    # the file the source could not find first, then the decode failures in study order
    assert skipped == [("gone", "missing_image"), ("bomb", "image_too_large"),
                       ("tiny", "image_too_small"), ("broken", "unreadable_image")]  # fmt: skip
    assert dict(skipped) == BAD and info["n_studies_listed"] == len(ORDER)
    assert all(s["detail"] for s in info["skipped_studies"])
    # the good studies were cached: their indices in the loaded list, and only theirs
    loaded = [s for s in ORDER if s != "gone"]
    assert info["study_ids"] == loaded
    ds = datasets.load_from_disk(str(out))
    found = {loaded[int(i)] for i in np.unique(np.asarray(ds["study_index"]))}
    assert set(GOOD[:-1]) <= found <= set(GOOD)  # the last study may end in the dropped tail
    captured = capsys.readouterr()
    assert captured.out.startswith(f"cached {info['n_rows']} rows from 7 studies")
    assert captured.err.strip().splitlines()[-1] == (
        "skipped 4 of 8 studies: 1 image_too_large, 1 image_too_small, 1 missing_image, "
        f"1 unreadable_image; see {out / 'cache_info.json'}"
    )
    # the skip line is shown once (it was also logged as a warning, so the console showed it twice)
    line = captured.err.strip().splitlines()[-1]
    assert (captured.err + "\n".join(caplog.messages)).count(line) == 1
    # a rerun says it found the finished cache instead of claiming to have cached it again
    assert main(["cache", "--config", str(config)]) == 0
    again = capsys.readouterr()
    assert again.out.startswith(f"already held {info['n_rows']} rows from 7 studies in {out}")
    assert "nothing to do" in again.out and again.err.strip().splitlines()[-1] == line


def test_interrupted_cache_with_skips_resumes_to_the_same_info(
    manifest, hub_checkpoint, tmp_path, monkeypatch
):
    ref = Experiment.from_yaml(write_config(tmp_path / "ref", hub_checkpoint, manifest))
    cache_from_experiment(ref)
    config = write_config(tmp_path / "run", hub_checkpoint, manifest)
    real = cache_mod._RankWriter.write_shard

    def write_then_die(self, index, parts, skipped):
        real(self, index, parts, skipped)
        if index == 0:
            raise KeyboardInterrupt  # the run dies after its first shard (it skipped 'bomb')

    monkeypatch.setattr(cache_mod._RankWriter, "write_shard", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        cache_from_experiment(Experiment.from_yaml(config))
    monkeypatch.undo()
    result = cache_from_experiment(Experiment.from_yaml(config))
    want = json.loads((tmp_path / "ref" / "acts" / "cache_info.json").read_text())
    assert json.loads((tmp_path / "run" / "acts" / "cache_info.json").read_text()) == want
    assert [s.study_id for s in result.skipped_studies] == ["gone", "bomb", "tiny", "broken"]


@pytest.mark.parametrize("order", [["bomb", "tiny", "broken"], ["gone"]])
def test_all_studies_skipped_is_a_clear_error(order, hub_checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SAE_LENS_MAIRA_DEBUG", raising=False)
    manifest = write_messy_manifest(tmp_path / "m", order)
    config = write_config(tmp_path, hub_checkpoint, manifest)
    assert main(["cache", "--config", str(config)]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bar, if any
    assert err.startswith("error: ") and f"skipped every one of its {len(order)} studies" in err
    assert not (tmp_path / "acts" / "cache_info.json").exists()
