"""SAE.from_pretrained("maira-2-sae", ...) from a fake offline Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants as hf_constants
import pytest
import torch
from fake_dictionary_learning import (
    hub_snapshot,
    reference_decode,
    reference_encode,
    write_dl_folder,
)
from sae_lens import SAE
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

import sae_lens_maira  # noqa: F401
from sae_lens_maira.loading import MAIRA2_RELEASE, MAIRA2_REPO_ID
from sae_lens_maira.loading.hub_folders import list_repo_files
from sae_lens_maira.saes import MatryoshkaSAE


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return hub_snapshot(tmp_path, MAIRA2_REPO_ID)


@pytest.fixture
def small_release(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fake SAEs have d_in 32, not MAIRA-2's 4096: relax the release's check."""
    lookup = get_pretrained_saes_directory()[MAIRA2_RELEASE]
    assert lookup.config_overrides is not None
    monkeypatch.setitem(lookup.config_overrides, "d_in", 32)


def populate(snapshot: Path) -> dict[int, dict[str, torch.Tensor]]:
    """Three SAEs in folders whose names say nothing about their expansion factor."""
    return {
        2: write_dl_folder(snapshot / "run_a" / "trainer_0", ef=2, seed=1),
        4: write_dl_folder(snapshot / "run_a" / "trainer_1", ef=4, seed=2, buffer=False),
        8: write_dl_folder(snapshot / "run_b" / "trainer_0", ef=8, seed=3, norm_factor=5.0),
    }


@pytest.mark.parametrize("ef", [2, 4, 8])
def test_from_pretrained_resolves_by_expansion_factor(
    offline_cache: Path, small_release: None, ef: int
) -> None:
    states = populate(offline_cache)
    sae = SAE.from_pretrained(MAIRA2_RELEASE, f"ef{ef}")
    assert isinstance(sae, MatryoshkaSAE)
    assert sae.cfg.d_sae == 32 * ef and sae.cfg.k == 8
    assert sae.cfg.group_sizes == [4 * ef, 12 * ef, 16 * ef]
    meta = sae.cfg.metadata
    assert meta.model_name == "maira-2" and meta.hook_name == "blocks.15.hook_resid_post"
    assert meta.repo_id == MAIRA2_REPO_ID
    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(ef))
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(f, reference_encode(states[ef], x))
        torch.testing.assert_close(sae.decode(f), reference_decode(states[ef], f))


def test_listing_comes_from_the_cache(offline_cache: Path) -> None:
    populate(offline_cache)
    files = list_repo_files(MAIRA2_REPO_ID)
    assert "run_a/trainer_1/ae.pt" in files and "run_b/trainer_0/config.json" in files


def test_real_maira2_width_without_relaxing_the_release(offline_cache: Path) -> None:
    state = write_dl_folder(offline_cache / "x", d_in=4096, ef=2, k=64, weights_dtype=torch.float16)
    sae = SAE.from_pretrained(MAIRA2_RELEASE, "ef2")
    assert sae.cfg.d_in == 4096 and sae.cfg.d_sae == 8192
    assert sae.cfg.group_sizes == [1024, 3072, 4096]
    x = torch.randn(3, 4096, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), reference_encode(state, x), rtol=1e-4, atol=1e-4)


def test_missing_weights_file_is_named(offline_cache: Path, small_release: None) -> None:
    populate(offline_cache)
    (offline_cache / "run_a" / "trainer_1" / "ae.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"run_a/trainer_1/ae\.pt.*not in the local cache"):
        SAE.from_pretrained(MAIRA2_RELEASE, "ef4")


def test_wrong_architecture_is_named(offline_cache: Path, small_release: None) -> None:
    write_dl_folder(offline_cache / "topk", ef=4, dict_class="BatchTopKSAE")
    with pytest.raises(ValueError, match="dict_class is 'BatchTopKSAE'"):
        SAE.from_pretrained(MAIRA2_RELEASE, "ef4")


def test_d_in_that_does_not_match_maira2_is_named(offline_cache: Path) -> None:
    populate(offline_cache)
    with pytest.raises(ValueError, match="d_in is 32 but 4096 was expected"):
        SAE.from_pretrained(MAIRA2_RELEASE, "ef4")


def test_unknown_expansion_factor_lists_what_exists(
    offline_cache: Path, small_release: None
) -> None:
    populate(offline_cache)
    with pytest.raises(ValueError, match="No SAE with expansion factor 16.*run_a/trainer_0"):
        from sae_lens_maira.loading.hub_folders import resolve_sae_folder

        resolve_sae_folder(MAIRA2_REPO_ID, "ef16")
    with pytest.raises(ValueError, match="ID ef16 not found in release maira-2-sae"):
        SAE.from_pretrained(MAIRA2_RELEASE, "ef16")


def test_two_candidates_for_one_factor_are_not_guessed(
    offline_cache: Path, small_release: None
) -> None:
    populate(offline_cache)
    write_dl_folder(offline_cache / "run_c" / "trainer_9", ef=4, seed=9)
    with pytest.raises(ValueError, match="2 folders .* expansion factor 4"):
        SAE.from_pretrained(MAIRA2_RELEASE, "ef4")


def test_empty_cache_says_how_to_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="hf download microsoft/maira-2-sae"):
        SAE.from_pretrained(MAIRA2_RELEASE, "ef4")
