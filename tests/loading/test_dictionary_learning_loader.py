"""Local dictionary_learning folders: conversion, formats, and errors a user can act on."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from fake_dictionary_learning import reference_decode, reference_encode, write_dl_folder
from sae_lens import SAE

import sae_lens_maira  # noqa: F401
from sae_lens_maira.loading import dictionary_learning_disk_loader, load_dictionary_learning_sae
from sae_lens_maira.saes import MatryoshkaSAE


@pytest.mark.parametrize(
    ("buffer", "norm_factor"), [(True, None), (False, None), (True, 2.5), (False, 7.0)]
)
def test_folder_converts_with_groups_k_threshold(
    tmp_path: Path, buffer: bool, norm_factor: float | None
) -> None:
    state = write_dl_folder(tmp_path / "sae", buffer=buffer, norm_factor=norm_factor)
    sae = SAE.load_from_disk(tmp_path / "sae", converter=dictionary_learning_disk_loader)
    assert isinstance(sae, MatryoshkaSAE)
    assert sae.cfg.group_sizes == [16, 48, 64] and sae.cfg.k == 8 and sae.cfg.d_sae == 128
    assert float(sae.threshold) == pytest.approx(0.4)
    meta = sae.cfg.metadata
    assert meta.hook_name == "blocks.15.hook_resid_post" and meta.model_name == "maira-2"
    assert meta.context_size == (1024 if buffer else None)
    assert meta.dictionary_learning_norm_factor == norm_factor
    x = torch.randn(6, 32, generator=torch.Generator().manual_seed(0)) + state["b_dec"]
    with torch.no_grad():
        f = sae.encode(x)
        torch.testing.assert_close(f, reference_encode(state, x))
        assert 0 < int((f > 0).sum()) < f.numel()
        torch.testing.assert_close(sae.decode(f), reference_decode(state, f))


def test_convenience_loader_and_dtype(tmp_path: Path) -> None:
    state = write_dl_folder(tmp_path / "sae", weights_dtype=torch.bfloat16)
    sae = load_dictionary_learning_sae(tmp_path / "sae", dtype="float32")
    assert sae.W_enc.dtype == torch.float32
    torch.testing.assert_close(sae.W_enc, state["W_enc"])
    half = load_dictionary_learning_sae(tmp_path / "sae", dtype="bfloat16")
    assert half.W_dec.dtype == torch.bfloat16 and half.threshold.dtype == torch.float32


def test_saved_conversion_round_trips_without_the_converter(tmp_path: Path) -> None:
    write_dl_folder(tmp_path / "dl")
    sae = load_dictionary_learning_sae(tmp_path / "dl")
    sae.save_model(tmp_path / "saelens")
    again = SAE.load_from_disk(tmp_path / "saelens")
    x = torch.randn(4, 32)
    with torch.no_grad():
        torch.testing.assert_close(again(x), sae(x))
    assert again.cfg.group_sizes == sae.cfg.group_sizes


def test_missing_files_are_named(tmp_path: Path) -> None:
    write_dl_folder(tmp_path / "a")
    (tmp_path / "a" / "ae.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ae\.pt not found"):
        load_dictionary_learning_sae(tmp_path / "a")
    write_dl_folder(tmp_path / "b")
    (tmp_path / "b" / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"config\.json not found"):
        load_dictionary_learning_sae(tmp_path / "b")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_dictionary_learning_sae(tmp_path / "nope")


def test_wrong_architecture_is_refused(tmp_path: Path) -> None:
    write_dl_folder(tmp_path / "sae", dict_class="AutoEncoderTopK")
    with pytest.raises(ValueError, match="dict_class is 'AutoEncoderTopK'.*MatryoshkaBatchTopKSAE"):
        load_dictionary_learning_sae(tmp_path / "sae")


def test_config_and_weights_that_disagree_are_refused(tmp_path: Path) -> None:
    write_dl_folder(tmp_path / "a", d_in=32)
    write_dl_folder(tmp_path / "b", d_in=16)
    (tmp_path / "a" / "ae.pt").replace(tmp_path / "b" / "ae.pt")
    (tmp_path / "a" / "config.json").replace(tmp_path / "b" / "config.json")
    write_dl_folder(tmp_path / "c", d_in=16)
    (tmp_path / "b" / "config.json").replace(tmp_path / "c" / "config.json")
    with pytest.raises(ValueError, match="activation_dim=32 but ae.pt has 16"):
        load_dictionary_learning_sae(tmp_path / "c")


def test_expected_d_in_is_checked(tmp_path: Path) -> None:
    write_dl_folder(tmp_path / "sae", d_in=32)
    with pytest.raises(ValueError, match="d_in is 32 but 4096 was expected"):
        load_dictionary_learning_sae(tmp_path / "sae", cfg_overrides={"d_in": 4096})


class _NotATensor:
    pass


def test_pickles_with_objects_are_refused(tmp_path: Path) -> None:
    write_dl_folder(tmp_path / "sae")
    state = torch.load(tmp_path / "sae" / "ae.pt", weights_only=True)
    state["payload"] = _NotATensor()
    with open(tmp_path / "sae" / "ae.pt", "wb") as f:
        torch.save(state, f, pickle_module=pickle)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_dictionary_learning_sae(tmp_path / "sae")
