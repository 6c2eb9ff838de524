"""Registration with SAELens: on import, idempotent, conflict-aware, release directory lazy."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from sae_lens.loading import pretrained_sae_loaders, pretrained_saes_directory
from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY, get_sae_class
from sae_lens.saes import sae as sae_module
from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

import sae_lens_maira
from sae_lens_maira.loading.releases import LOADER_NAME, MAIRA2_RELEASE, MAIRA2_REPO_ID
from sae_lens_maira.registration import register
from sae_lens_maira.saes import MatryoshkaSAE, MatryoshkaTrainingSAE

ROOT = Path(__file__).resolve().parents[2]


def test_import_registers_both_classes_and_the_loader() -> None:
    assert get_sae_class("matryoshka")[0] is MatryoshkaSAE
    assert SAE_TRAINING_CLASS_REGISTRY["matryoshka"][0] is MatryoshkaTrainingSAE
    assert LOADER_NAME in pretrained_sae_loaders.NAMED_PRETRAINED_SAE_LOADERS
    assert LOADER_NAME in pretrained_sae_loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS
    assert "matryoshka_batchtopk" in SAE_TRAINING_CLASS_REGISTRY  # SAELens's own is untouched


def test_registering_again_or_reimporting_is_harmless() -> None:
    register()
    register()
    importlib.reload(sae_lens_maira)
    assert get_sae_class("matryoshka")[0] is MatryoshkaSAE


def test_a_foreign_class_under_our_name_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(SAE_CLASS_REGISTRY, "matryoshka", (StandardSAE, StandardSAEConfig))
    with pytest.raises(ValueError, match="already has a SAE class .*StandardSAE"):
        register()


def test_release_is_in_the_pretrained_directory_seen_by_sae_from_pretrained() -> None:
    directory = sae_module.get_pretrained_saes_directory()
    lookup = directory[MAIRA2_RELEASE]
    assert lookup.repo_id == MAIRA2_REPO_ID and lookup.conversion_func == LOADER_NAME
    assert set(lookup.saes_map) == {"ef2", "ef4", "ef8"}
    assert pretrained_sae_loaders.get_conversion_loader_name(MAIRA2_RELEASE) == LOADER_NAME
    assert pretrained_saes_directory.get_repo_id_and_folder_name(MAIRA2_RELEASE, "ef4") == (
        MAIRA2_REPO_ID,
        "ef4",
    )
    assert "gpt2-small-res-jb" in directory  # SAELens's own releases remain


def test_import_is_light_and_registers_once_sae_lens_loads() -> None:
    code = (
        "import sys\n"
        "import sae_lens_maira\n"
        "assert 'sae_lens' not in sys.modules and 'triton' not in sys.modules\n"
        "from sae_lens import SAE\n"
        "from sae_lens.registry import SAE_CLASS_REGISTRY\n"
        "assert SAE_CLASS_REGISTRY['matryoshka'][0].__name__ == 'MatryoshkaSAE'\n"
        "from sae_lens.loading import pretrained_saes_directory as d\n"
        "assert d.get_pretrained_saes_directory.__wrapped__.cache_info().currsize == 0\n"
        "import importlib; importlib.reload(sae_lens_maira)\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("first", ["sae_lens_maira.saes", "sae_lens_maira.loading"])
def test_a_package_of_ours_that_imports_sae_lens_first_still_registers(first: str) -> None:
    """The package imports SAELens while half-defined; registration waits for its last line."""
    code = (
        "import sys\n"
        f"import {first}\n"
        "assert 'sae_lens' in sys.modules\n"
        "from sae_lens.registry import SAE_CLASS_REGISTRY\n"
        "from sae_lens.loading import pretrained_sae_loaders as loaders\n"
        "from sae_lens.saes import sae\n"
        "assert SAE_CLASS_REGISTRY['matryoshka'][0].__name__ == 'MatryoshkaSAE'\n"
        f"assert {LOADER_NAME!r} in loaders.NAMED_PRETRAINED_SAE_LOADERS\n"
        f"assert {MAIRA2_RELEASE!r} in sae.get_pretrained_saes_directory()\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")
