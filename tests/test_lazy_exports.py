"""The lazily exported packages: ``__all__`` (a literal list, so type checkers read it) names exactly
the lazy table's names, and each resolves to the object its module defines."""

from __future__ import annotations

import importlib

import pytest

# package -> the name of its lazy table (name -> module)
LAZY_PACKAGES = {
    "sae_lens_maira": "_LAZY",
    "sae_lens_maira.autointerp": "_LAZY",
    "sae_lens_maira.dashboards": "_LAZY",
    "sae_lens_maira.demo": "_EXPORTS",
}


@pytest.mark.parametrize("package", sorted(LAZY_PACKAGES))
def test_all_matches_the_lazy_table(package):
    pkg = importlib.import_module(package)
    table = getattr(pkg, LAZY_PACKAGES[package])
    assert set(pkg.__all__) - {"__version__"} == set(table)
    assert len(pkg.__all__) == len(set(pkg.__all__))
    for name, module in table.items():
        source = module if module.startswith("sae_lens_maira") else f"{package}.{module}"
        assert getattr(pkg, name) is getattr(importlib.import_module(source), name), name
    with pytest.raises(AttributeError):
        pkg.no_such_name  # noqa: B018
