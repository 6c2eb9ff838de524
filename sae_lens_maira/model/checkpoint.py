"""Reading and writing MAIRA-2 checkpoint folders in the hub's layout.

A folder holds ``config.json``, weights as ``model.safetensors`` or shards plus
``model.safetensors.index.json`` (``pytorch_model*.bin`` is read with ``weights_only=True``), the
tokenizer files and ``preprocessor_config.json``. A hub repo id resolves through the local hub
cache only: nothing is downloaded here. Resolving a folder and reading its config live in
:mod:`sae_lens_maira.checkpoint_config` (shared with the processor).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import save_file

SAFE_SINGLE = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"


def weight_files(folder: Path) -> list[Path]:
    """The weight files of a checkpoint, from its index when sharded."""
    for index_name in (SAFE_INDEX, BIN_INDEX):
        index = folder / index_name
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index} has no weight_map")
            files = [folder / f for f in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{index} lists shards that are missing from {folder}: {missing}"
                )
            return files
    for single in (SAFE_SINGLE, BIN_SINGLE):
        if (folder / single).is_file():
            return [folder / single]
    raise FileNotFoundError(
        f"no weights in {folder}: expected {SAFE_SINGLE} or shards with {SAFE_INDEX}"
    )


def iter_tensors(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    """Stream (key, tensor) pairs, one shard open at a time."""
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            yield from state.items()
            del state


def save_state_dict(
    state_dict: dict[str, torch.Tensor], folder: Path, max_shard_size: str | int = "5GB"
) -> None:
    """Write safetensors shards (+ index when more than one), as ``save_pretrained`` does."""
    folder.mkdir(parents=True, exist_ok=True)
    split = split_torch_state_dict_into_shards(
        state_dict, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size
    )
    for filename, keys in split.filename_to_tensors.items():
        save_file(
            {k: state_dict[k].contiguous() for k in keys},
            str(folder / filename),
            metadata={"format": "pt"},
        )
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        (folder / SAFE_INDEX).write_text(json.dumps(index, indent=2))
