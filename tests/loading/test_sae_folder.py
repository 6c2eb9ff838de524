"""Broken SAE files name the file and what is wrong (not a bare KeyError / SafetensorError)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fake_dictionary_learning import write_dl_folder
from sae_lens import StandardSAE, StandardSAEConfig

from sae_lens_maira.loading import load_dictionary_learning_sae
from sae_lens_maira.loading.sae_folder import SAEFileError, load_sae_folder


def _saved(folder: Path) -> Path:
    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=8, d_sae=16))
    sae.save_model(str(folder))
    return folder


def test_a_good_folder_loads(tmp_path: Path) -> None:
    sae = load_sae_folder(_saved(tmp_path / "sae"))
    assert sae.cfg.d_sae == 16


def test_typod_architecture_is_named_with_a_suggestion(tmp_path: Path) -> None:
    folder = _saved(tmp_path / "sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["architecture"] = "standrad"
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(SAEFileError, match=r"cfg.json: unknown SAE architecture 'standrad' \(did you mean 'standard'\?\)"):  # fmt: skip
        load_sae_folder(folder)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_safetensors_is_named(tmp_path: Path, keep: float) -> None:
    folder = _saved(tmp_path / "sae")
    weights = folder / "sae_weights.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SAEFileError, match=r"sae_weights.safetensors is truncated"):
        load_sae_folder(folder)


def test_missing_and_damaged_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no SAE folder at"):
        load_sae_folder(tmp_path / "nowhere")
    folder = _saved(tmp_path / "sae")
    (folder / "sae_weights.safetensors").unlink()
    with pytest.raises(SAEFileError, match="sae_weights.safetensors is missing"):
        load_sae_folder(folder)
    (folder / "cfg.json").write_text("{not json")
    with pytest.raises(SAEFileError, match="cfg.json is not valid JSON"):
        load_sae_folder(folder)
    (folder / "cfg.json").unlink()
    with pytest.raises(SAEFileError, match="cfg.json is missing"):
        load_sae_folder(folder)


@pytest.mark.parametrize("keep", [0.1, 0.6, 0.98])
def test_truncated_ae_pt_is_named(tmp_path: Path, keep: float) -> None:
    write_dl_folder(tmp_path / "dl")
    ae = tmp_path / "dl" / "ae.pt"
    data = ae.read_bytes()
    ae.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match=r"ae.pt is truncated or not a torch checkpoint"):
        load_dictionary_learning_sae(tmp_path / "dl")
