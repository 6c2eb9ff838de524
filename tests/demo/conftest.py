"""Fixtures for the demo tests: a small fake Open-I wheel and its rendered studies."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.data.openi_fakes import FAKE_REPORTS, build_fake_wheel


def fake_reports(n_copies: int = 6) -> list[dict]:
    """The fake wheel's real-format reports, repeated under new ids (identical normal texts
    included, as in the real collection)."""
    out = []
    for k in range(n_copies):
        for r in FAKE_REPORTS:
            r = copy.deepcopy(r)
            r["uid"] = f"CXR{int(r['uid'][3:]) + 100 * k}"
            out.append(r)
    return out


@pytest.fixture(scope="session")
def demo_wheel(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheel")
    return build_fake_wheel(folder / "torchxrayvision-1.5.7-py3-none-any.whl", fake_reports())


@pytest.fixture(scope="session")
def demo_split(tmp_path_factory, demo_wheel):
    from sae_lens_maira.demo.studies import demo_studies

    cache = tmp_path_factory.mktemp("demo_cache")
    return demo_studies(cache, wheel=demo_wheel, held_out_fraction=0.2, progress=False)
