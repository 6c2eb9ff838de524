"""Fixtures for the data tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from openi_fakes import build_fake_wheel, cached_real_wheel


@pytest.fixture
def fake_wheel(tmp_path: Path) -> Path:
    """A zip laid out like the torchxrayvision 1.5.7 wheel, with a few real-format reports."""
    return build_fake_wheel(tmp_path / "torchxrayvision-1.5.7-py3-none-any.whl")


@pytest.fixture(scope="session")
def real_reports():
    wheel = cached_real_wheel()
    if wheel is None:
        pytest.skip(
            "real Open-I wheel not cached (run ensure_openi_wheel() once)"
        )
    from sae_lens_maira.data.openi import load_openi_reports

    return load_openi_reports(wheel)
