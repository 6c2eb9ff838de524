"""Load a saved SAE folder (SAELens layout) with errors that name the file and what is wrong.

``SAE.load_from_disk`` reports a typo'd architecture as a bare ``KeyError``, a truncated
``sae_weights.safetensors`` as a ``SafetensorError`` and a missing file as a deep ``OSError``;
this checks ``cfg.json`` and the weights' header first and turns what remains into a
``ValueError`` naming the folder.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"


class SAEFileError(ValueError):
    """A saved SAE folder is missing a file or holds a broken one."""


def check_sae_folder(folder: str | Path) -> dict[str, Any]:
    """Validate ``folder``'s ``cfg.json`` (architecture registered) and weights header; return the cfg."""
    from sae_lens_maira.compat.sae_lens import sae_architectures

    folder = Path(folder)
    cfg_path, weights = folder / CFG_FILE, folder / WEIGHTS_FILE
    if not folder.is_dir():
        raise FileNotFoundError(
            f"no SAE folder at {folder}; train one first or point the config at it"
        )
    if not cfg_path.is_file():
        raise SAEFileError(f"{cfg_path} is missing: {folder} is not a saved SAE (SAELens layout)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise SAEFileError(f"{cfg_path} is not valid JSON ({err}); the file is damaged") from err
    if not isinstance(cfg, dict):
        raise SAEFileError(f"{cfg_path} holds {type(cfg).__name__}, not a config object")
    arch = cfg.get("architecture")
    registered = sae_architectures()
    if arch not in registered:
        near = difflib.get_close_matches(str(arch), registered, n=1)
        raise SAEFileError(
            f"{cfg_path}: unknown SAE architecture {arch!r}"
            + (f" (did you mean {near[0]!r}?)" if near else "")
            + f"; registered: {registered}"
        )
    if not weights.is_file():
        raise SAEFileError(f"{weights} is missing next to {CFG_FILE}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            for key in keys:
                f.get_slice(key)  # header offsets checked against the file size
    except (SafetensorError, OSError) as err:
        raise SAEFileError(
            f"{weights} is truncated or not a safetensors file ({err}); re-save or re-download it"
        ) from err
    size = weights.stat().st_size
    with open(weights, "rb") as fh:
        header_len = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_len))
    end = max(
        (int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0
    )
    if 8 + header_len + end > size:
        raise SAEFileError(
            f"{weights} is truncated: its header needs {8 + header_len + end} bytes, the file has {size}"
        )
    return cfg


def load_sae_folder(folder: str | Path, device: str = "cpu") -> Any:
    """``SAE.load_from_disk`` after :func:`check_sae_folder`, any remaining failure naming the folder."""
    from sae_lens import SAE

    check_sae_folder(folder)
    try:
        return SAE.load_from_disk(str(folder), device=device)
    except (KeyError, RuntimeError, SafetensorError, OSError, TypeError) as err:
        raise SAEFileError(
            f"{folder} could not be loaded as an SAE ({type(err).__name__}: {err}); check that "
            f"{CFG_FILE} and {WEIGHTS_FILE} belong together"
        ) from err
