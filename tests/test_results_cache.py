"""The results cache: a step's stored output comes back only for the very same key, whole."""

from __future__ import annotations

import json

from sae_lens_maira.results_cache import ResultsCache, package_fingerprint, results_key


def _run(out, text="x"):
    (out / "sae").mkdir(parents=True)
    (out / "sae" / "w.bin").write_text(text)
    return {"sae": {"path": str(out / "sae"), "ev": 0.9, "elsewhere": "/data/cache/model"}}


def test_restore_gives_back_folders_and_facts_under_the_new_output(tmp_path):
    cache = ResultsCache(tmp_path / "cache")
    facts = _run(tmp_path / "a")
    key = results_key({"settings": {"k": 16}})
    cache.store("train", key, tmp_path / "a", ["sae", "missing"], facts)
    got = cache.restore("train", key, tmp_path / "b")
    assert got == {"sae": {"path": str(tmp_path / "b" / "sae"), "ev": 0.9,
                           "elsewhere": "/data/cache/model"}}  # fmt: skip
    assert (tmp_path / "b" / "sae" / "w.bin").read_text() == "x"
    assert not (tmp_path / "b" / "missing").exists()


def test_another_key_or_a_half_written_entry_is_a_miss(tmp_path):
    cache = ResultsCache(tmp_path / "cache")
    cache.store("train", results_key({"k": 16}), tmp_path / "a", ["sae"], _run(tmp_path / "a"))
    assert cache.restore("train", results_key({"k": 32}), tmp_path / "b") is None
    key = results_key({"k": 16})
    (cache.entry("train", key) / "COMPLETE").unlink()  # as if the run died while storing
    assert cache.restore("train", key, tmp_path / "b") is None


def test_key_is_canonical_and_follows_every_part():
    assert results_key({"a": 1, "b": [1, 2]}) == results_key({"b": [1, 2], "a": 1})
    assert results_key({"a": 1}) != results_key({"a": 1.5})


def test_package_fingerprint_changes_with_one_line_of_code(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "sub" / "m.py").write_text("x = 1\n")
    (pkg / "c.yaml").write_text("a: 1\n")
    before = package_fingerprint(pkg)
    (pkg / "sub" / "m.py").write_text("x = 2\n")
    assert package_fingerprint(pkg) != before
    (pkg / "sub" / "m.py").write_text("x = 1\n")
    assert package_fingerprint(pkg) == before
    (pkg / "c.yaml").write_text("a: 2\n")
    assert package_fingerprint(pkg) != before
    json.dumps(before)
