"""The skipped-study record every command shares: summary line, JSON report, all-skipped error."""

import json

import numpy as np
import pytest
from PIL import Image

from sae_lens_maira.data import load_manifest
from sae_lens_maira.data.skips import (
    AllStudiesSkippedError,
    SkipCollector,
    SkippedStudy,
    keep_usable,
    skip_reason,
)
from sae_lens_maira.data.study import Study
from sae_lens_maira.processing.images import ImageLoadError


def test_summary_line_and_report(tmp_path):
    skips = SkipCollector()
    skips.add("b", "missing_image", "b.png not found")
    skips.add_error("a", ImageLoadError("too big", "image_too_large", "a.png"))
    skips.add_error("c", ValueError("prompt too long"))
    assert skips.summary(40, "x/cache_info.json") == (
        "skipped 3 of 40 studies: 1 image_too_large, 1 invalid_study, 1 missing_image; "
        "see x/cache_info.json"
    )
    path = skips.write(tmp_path / "out" / "skipped_studies.json", 40)
    data = json.loads(path.read_text())
    assert data["n_studies"] == 40 and data["n_skipped"] == 3
    assert data["counts"] == {"image_too_large": 1, "invalid_study": 1, "missing_image": 1}
    assert [SkippedStudy.from_dict(d) for d in data["skipped_studies"]] == skips.items
    assert SkipCollector().summary(5) == "skipped 0 of 5 studies"
    assert skip_reason(KeyError("x")) == "invalid_study"


def test_every_study_skipped_is_an_error():
    skips = SkipCollector([SkippedStudy("a", "image_too_small", "a.png is 1 x 1")])
    skips.check_some_left(2, "cache")  # one study left
    with pytest.raises(
        AllStudiesSkippedError,
        match=r"cache skipped every one of its 1 studies \(1 image_too_small\)",
    ):
        skips.check_some_left(1, "cache")
    SkipCollector().check_some_left(0)  # no studies at all is not this error


def test_keep_usable_stops_at_the_limit():
    studies = [Study(s, np.zeros((40, 40))) for s in "abcd"]

    def check(study):
        if study.study_id in "bd":
            raise ImageLoadError(f"{study.study_id} broken", "unreadable_image")

    skips = SkipCollector()
    kept = keep_usable(studies, check, skips, limit=2)
    assert [s.study_id for s in kept] == ["a", "c"] and [s.study_id for s in skips] == ["b"]


def test_manifest_names_the_study_of_a_missing_file(tmp_path):
    Image.new("L", (40, 40)).save(tmp_path / "a.png")
    lines = [{"study_id": "a", "frontal": "a.png"}, {"study_id": "b", "frontal": "gone.png"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in lines))
    result = load_manifest(tmp_path / "m.jsonl", on_missing="skip")
    (skip,) = result.skipped_studies
    assert skip.study_id == "b" and skip.reason == "missing_image" and "gone.png" in skip.detail
