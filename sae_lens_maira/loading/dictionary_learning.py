"""Convert dictionary_learning ``MatryoshkaBatchTopKSAE`` checkpoints into ``matryoshka`` SAEs.

A checkpoint is a folder with ``ae.pt`` (state dict: W_enc [d, F], b_enc [F], W_dec [F, d],
b_dec [d], k, threshold, group_sizes) and ``config.json`` (``{"trainer": {...}, "buffer": {...}}``,
the buffer section optional). dictionary_learning folds its input normalisation into b_enc, b_dec
and threshold before saving ``ae.pt``, so the weights take raw activations; a ``norm_factor`` in
the config is recorded in the metadata only. Groups, k and the threshold are kept.

Three entry points share one converter: a SAELens hub loader (``SAE.from_pretrained``), a disk
converter (``SAE.load_from_disk(path, converter=dictionary_learning_disk_loader)``) and
:func:`load_dictionary_learning_sae`.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from sae_lens import __version__ as sae_lens_version
from sae_lens.util import str_to_dtype

from sae_lens_maira.loading.hub_folders import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    download,
    resolve_sae_folder,
)
from sae_lens_maira.saes.config import ARCHITECTURE

DICT_CLASS = "MatryoshkaBatchTopKSAE"
_REQUIRED_KEYS = ("W_enc", "b_enc", "W_dec", "b_dec")
# cfg_overrides keys that set config fields; "d_in"/"d_sae" are checked; the rest is metadata.
_CONFIG_OVERRIDES = {"device", "dtype", "decoder_impl"}
_CHECKED_OVERRIDES = {"d_in", "d_sae"}


def read_trainer_config(path: Path) -> dict[str, Any]:
    """The ``trainer`` (and optional ``buffer``) sections of a dictionary_learning config.json."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a dictionary_learning SAE folder needs {CONFIG_FILE} next to "
            f"{WEIGHTS_FILE} (it is written by dictionary_learning's trainSAE)."
        )
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or not isinstance(config.get("trainer"), dict):
        raise ValueError(
            f"{path} has no 'trainer' section; expected dictionary_learning's "
            '{"trainer": {...}, "buffer": {...}} config.'
        )
    return config


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """``ae.pt`` loaded with ``weights_only=True`` (tensors only, no arbitrary pickles)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: a dictionary_learning SAE folder needs {WEIGHTS_FILE} next to "
            f"{CONFIG_FILE}."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path} holds objects other than tensors and was refused (weights_only=True); "
            "re-save it as a plain state dict of tensors."
        ) from err
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as err:
        raise ValueError(
            f"{path} is truncated or not a torch checkpoint ({type(err).__name__}: {err}); "
            "download or copy it again."
        ) from err
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    return state


def _int_list(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(v) for v in value]


def convert(
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    *,
    device: str = "cpu",
    cfg_overrides: dict[str, Any] | None = None,
    source: str = "dictionary_learning checkpoint",
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SAELens ``matryoshka`` cfg dict and state dict from a dictionary_learning checkpoint."""
    trainer = config["trainer"]
    buffer = config.get("buffer") if isinstance(config.get("buffer"), dict) else None
    dict_class = trainer.get("dict_class")
    if dict_class != DICT_CLASS:
        raise ValueError(
            f"{source}: dict_class is {dict_class!r}, but this loader converts "
            f"dictionary_learning's {DICT_CLASS!r} only (for other dictionary_learning SAEs use "
            "SAELens's 'dictionary_learning_1' loader)."
        )
    missing = [key for key in _REQUIRED_KEYS if key not in state]
    if missing:
        raise ValueError(f"{source}: {WEIGHTS_FILE} lacks {missing}; is it a {DICT_CLASS}?")

    W_enc, W_dec = state["W_enc"], state["W_dec"]
    d_in, d_sae = W_enc.shape
    if (
        W_dec.shape != (d_sae, d_in)
        or state["b_enc"].shape != (d_sae,)
        or state["b_dec"].shape != (d_in,)
    ):
        raise ValueError(
            f"{source}: inconsistent shapes W_enc {tuple(W_enc.shape)}, W_dec "
            f"{tuple(W_dec.shape)}, b_enc {tuple(state['b_enc'].shape)}, b_dec "
            f"{tuple(state['b_dec'].shape)}."
        )
    for key, expected in (("activation_dim", d_in), ("dict_size", d_sae)):
        if key in trainer and int(trainer[key]) != expected:
            raise ValueError(
                f"{source}: config.json says {key}={trainer[key]} but {WEIGHTS_FILE} has "
                f"{expected}; the config and weights do not belong together."
            )

    overrides = dict(cfg_overrides or {})
    for key, actual in (("d_in", d_in), ("d_sae", d_sae)):
        expected = overrides.pop(key, None)
        if expected is not None and int(expected) != actual:
            raise ValueError(
                f"{source}: {key} is {actual} but {expected} was expected (this release is for "
                f"a model with {key}={expected}); pick the SAE trained on that model."
            )

    k_state = int(state["k"]) if "k" in state else None
    k_cfg = int(trainer["k"]) if trainer.get("k") is not None else None
    if k_state is not None and k_cfg is not None and k_state != k_cfg:
        raise ValueError(f"{source}: k is {k_state} in {WEIGHTS_FILE} but {k_cfg} in config.json.")
    k = k_state if k_state is not None else k_cfg
    if k is None:
        raise ValueError(f"{source}: neither {WEIGHTS_FILE} nor config.json gives k.")

    if "group_sizes" in state:
        group_sizes = _int_list(state["group_sizes"])
    elif trainer.get("group_sizes") is not None:
        group_sizes = _int_list(trainer["group_sizes"])
    else:
        raise ValueError(f"{source}: no group_sizes in {WEIGHTS_FILE} or config.json.")
    if sum(group_sizes) != d_sae:
        raise ValueError(
            f"{source}: group_sizes {group_sizes} sum to {sum(group_sizes)}, not d_sae={d_sae}."
        )

    threshold = state.get("threshold", torch.tensor(-1.0))
    dtype = str(overrides.pop("dtype", "float32"))
    torch_dtype = str_to_dtype(dtype)
    device = str(overrides.pop("device", device))
    decoder_impl = overrides.pop("decoder_impl", "auto")
    overrides.pop("architecture", None)

    metadata: dict[str, Any] = {
        "sae_lens_version": sae_lens_version,
        "sae_lens_training_version": None,  # trained with dictionary_learning
        "model_name": str(trainer["lm_name"]).split("/")[-1] if trainer.get("lm_name") else None,
        "hook_name": f"blocks.{trainer['layer']}.hook_resid_post"
        if trainer.get("layer") is not None
        else None,
        "hook_head_index": None,
        "prepend_bos": True,
        "source_format": "dictionary_learning",
        "dictionary_learning_trainer": {
            key: trainer[key] for key in sorted(trainer) if _is_json_scalar_or_list(trainer[key])
        },
    }
    if trainer.get("norm_factor") is not None:
        # already folded into ae.pt by dictionary_learning's trainSAE; kept for the record
        metadata["dictionary_learning_norm_factor"] = float(trainer["norm_factor"])
    if buffer is not None:
        metadata["dictionary_learning_buffer"] = {
            key: buffer[key] for key in sorted(buffer) if _is_json_scalar_or_list(buffer[key])
        }
        if buffer.get("ctx_len") is not None:
            metadata["context_size"] = int(buffer["ctx_len"])
    metadata.update(overrides)

    cfg_dict = {
        "architecture": ARCHITECTURE,
        "d_in": int(d_in),
        "d_sae": int(d_sae),
        "k": k,
        "group_sizes": group_sizes,
        "dtype": dtype,
        "device": device,
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "decoder_impl": decoder_impl,
        "metadata": metadata,
    }
    state_dict = {
        key: state[key].to(device=device, dtype=torch_dtype).contiguous() for key in _REQUIRED_KEYS
    }
    state_dict["threshold"] = threshold.to(device=device, dtype=torch.float32).reshape(())
    return cfg_dict, state_dict


def _is_json_scalar_or_list(value: Any) -> bool:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return True
    return isinstance(value, (list, tuple)) and all(
        isinstance(v, (str, int, float, bool)) or v is None for v in value
    )


def dictionary_learning_disk_loader(
    path: str | Path, device: str = "cpu", cfg_overrides: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """SAELens disk converter: ``SAE.load_from_disk(folder, converter=this)``."""
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} is not a folder (expected {WEIGHTS_FILE} + {CONFIG_FILE})."
        )
    config = read_trainer_config(folder / CONFIG_FILE)
    state = read_weights(folder / WEIGHTS_FILE)
    return convert(config, state, device=device, cfg_overrides=cfg_overrides, source=str(folder))


def _hub_files(
    repo_id: str, folder_name: str, force_download: bool
) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    folder = resolve_sae_folder(repo_id, folder_name, force_download)
    prefix = f"{folder}/" if folder else ""
    config = read_trainer_config(download(repo_id, prefix + CONFIG_FILE, force_download))
    state = read_weights(download(repo_id, prefix + WEIGHTS_FILE, force_download))
    return folder, config, state


def get_dictionary_learning_config_from_hf(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """SAELens config getter (``NAMED_PRETRAINED_SAE_CONFIG_GETTERS``)."""
    cfg_dict, _, _ = dictionary_learning_hub_loader(
        repo_id, folder_name, device, force_download, cfg_overrides
    )
    return cfg_dict


def dictionary_learning_hub_loader(
    repo_id: str,
    folder_name: str,
    device: str = "cpu",
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor], torch.Tensor | None]:
    """SAELens hub loader (``NAMED_PRETRAINED_SAE_LOADERS``); ``folder_name`` may be ``ef<N>``."""
    folder, config, state = _hub_files(repo_id, folder_name, force_download)
    source = f"{repo_id}/{folder}" if folder else repo_id
    cfg_dict, state_dict = convert(
        config, state, device=device, cfg_overrides=cfg_overrides, source=source
    )
    cfg_dict["metadata"]["repo_id"] = repo_id
    cfg_dict["metadata"]["repo_folder"] = folder
    return cfg_dict, state_dict, None


def load_dictionary_learning_sae(
    path: str | Path | None = None,
    *,
    repo_id: str | None = None,
    folder: str | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    force_download: bool = False,
    cfg_overrides: dict[str, Any] | None = None,
) -> Any:
    """A dictionary_learning Matryoshka SAE as a ``MatryoshkaSAE``, from a folder or a hub repo.

    ``load_dictionary_learning_sae("path/to/folder")`` or
    ``load_dictionary_learning_sae(repo_id="microsoft/maira-2-sae", folder="ef4")``.
    """
    from sae_lens_maira.saes.matryoshka_sae import MatryoshkaSAE

    overrides = dict(cfg_overrides or {})
    if dtype is not None:
        overrides["dtype"] = dtype
    if (path is None) == (repo_id is None):
        raise ValueError("Give either a local folder path or repo_id=... (with folder=...).")
    if path is not None:
        cfg_dict, state_dict = dictionary_learning_disk_loader(path, device, overrides)
    else:
        assert repo_id is not None
        if folder is None:
            raise ValueError("folder=... is required with repo_id (a folder path or 'ef<N>').")
        cfg_dict, state_dict, _ = dictionary_learning_hub_loader(
            repo_id, folder, device, force_download, overrides
        )
    return MatryoshkaSAE.from_state(cfg_dict, state_dict)
