"""Find dictionary_learning SAE folders in a Hugging Face repo from its file listing.

The folder names inside ``microsoft/maira-2-sae`` are not documented, so nothing here guesses one:
the listing comes from the Hub when online, else from the local cache (the cached tree listing
that ``snapshot_download`` leaves, or the cached snapshot's files), and each folder holding a
dictionary_learning ``config.json`` is identified by what that config says (expansion factor).
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from huggingface_hub.file_download import repo_folder_name

WEIGHTS_FILE = "ae.pt"
CONFIG_FILE = "config.json"


def _download_hint(repo_id: str) -> str:
    return (
        f"download it once while online (`hf download {repo_id}`, or "
        f"`huggingface_hub.snapshot_download('{repo_id}')`) or unset HF_HUB_OFFLINE"
    )


def _cached_snapshot_files(repo_id: str, revision: str) -> list[str] | None:
    storage = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model")
    ref = storage / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = storage / "snapshots" / commit
    if not snapshot.is_dir():
        return None
    return sorted(p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file())


def _cached_tree_files(repo_id: str, revision: str) -> list[str] | None:
    try:  # public in huggingface_hub >= 2.4; older versions have no cached tree listing
        from huggingface_hub import get_cached_repo_tree
    except ImportError:
        return None
    try:
        return sorted(f.path for f in get_cached_repo_tree(repo_id, revision=revision))
    except Exception:  # no cached listing for this repo/revision
        return None


def list_repo_files(repo_id: str, revision: str = "main") -> list[str]:
    """Every file path in the repo: from the Hub when reachable, else from the local cache."""
    online_error: Exception | None = None
    if not constants.HF_HUB_OFFLINE:
        from huggingface_hub import HfApi

        try:
            return sorted(HfApi().list_repo_files(repo_id, revision=revision))
        except (RepositoryNotFoundError, GatedRepoError):
            raise
        except Exception as err:  # network down: fall back to the cache
            online_error = err
    for lister in (_cached_tree_files, _cached_snapshot_files):
        files = lister(repo_id, revision)
        if files:
            return files
    reason = f" (the Hub said: {online_error})" if online_error is not None else ""
    raise FileNotFoundError(
        f"No listing of '{repo_id}' in the local Hugging Face cache {constants.HF_HUB_CACHE}"
        f"{reason}; {_download_hint(repo_id)}."
    )


def download(repo_id: str, filename: str, force_download: bool = False) -> Path:
    """``hf_hub_download`` with a FileNotFoundError that names the file and the fix."""
    try:
        return Path(hf_hub_download(repo_id, filename, force_download=force_download))
    except (EntryNotFoundError, LocalEntryNotFoundError) as err:
        where = "the local cache" if constants.HF_HUB_OFFLINE else "the repo"
        raise FileNotFoundError(
            f"'{filename}' of '{repo_id}' is not in {where}: a dictionary_learning SAE folder "
            f"needs both {WEIGHTS_FILE} and {CONFIG_FILE}; {_download_hint(repo_id)}."
        ) from err


@dataclass(frozen=True)
class DictionaryLearningFolder:
    """A repo folder with a dictionary_learning ``config.json`` (and what it says)."""

    folder: str
    trainer: dict[str, Any]
    has_weights: bool

    @property
    def expansion_factor(self) -> float:
        return int(self.trainer["dict_size"]) / int(self.trainer["activation_dim"])

    def describe(self) -> str:
        parts = [
            f"'{self.folder or '.'}'",
            f"dict_class={self.trainer.get('dict_class')}",
            f"d_in={self.trainer.get('activation_dim')}",
            f"d_sae={self.trainer.get('dict_size')}",
            f"k={self.trainer.get('k')}",
        ]
        if not self.has_weights:
            parts.append(f"no {WEIGHTS_FILE}")
        return " ".join(parts)


def discover_folders(
    repo_id: str, files: list[str], force_download: bool = False
) -> list[DictionaryLearningFolder]:
    """Read every ``config.json`` with a ``trainer`` section and describe its folder."""
    file_set = set(files)
    found = []
    for path in files:
        if posixpath.basename(path) != CONFIG_FILE:
            continue
        with open(download(repo_id, path, force_download)) as f:
            try:
                config = json.load(f)
            except json.JSONDecodeError:
                continue
        trainer = config.get("trainer") if isinstance(config, dict) else None
        if not isinstance(trainer, dict) or not {"dict_size", "activation_dim"} <= trainer.keys():
            continue
        folder = posixpath.dirname(path)
        weights = posixpath.join(folder, WEIGHTS_FILE) if folder else WEIGHTS_FILE
        found.append(DictionaryLearningFolder(folder, trainer, weights in file_set))
    return found


_EF = re.compile(r"ef(\d+)", re.IGNORECASE)


def resolve_sae_folder(repo_id: str, sae_id: str, force_download: bool = False) -> str:
    """Folder of ``sae_id`` in the repo: an exact folder path, or ``ef<N>`` by expansion factor."""
    files = list_repo_files(repo_id)
    folders = discover_folders(repo_id, files, force_download)
    if any(f.folder == sae_id.strip("/") for f in folders):
        return sae_id.strip("/")
    match = _EF.fullmatch(sae_id)
    listing = "; ".join(f.describe() for f in folders) or "none"
    if match is None:
        raise ValueError(
            f"SAE id '{sae_id}' is neither a folder of '{repo_id}' nor 'ef<N>' (expansion "
            f"factor). Folders with a dictionary_learning config: {listing}."
        )
    ef = int(match.group(1))
    hits = [f for f in folders if f.expansion_factor == ef]
    if not hits:
        raise ValueError(
            f"No SAE with expansion factor {ef} (d_sae = {ef} * d_in) in '{repo_id}'. "
            f"Folders with a dictionary_learning config: {listing}."
        )
    if len(hits) > 1:
        raise ValueError(
            f"{len(hits)} folders of '{repo_id}' have expansion factor {ef}: "
            + "; ".join(h.describe() for h in hits)
            + ". Load one by folder with "
            "sae_lens_maira.loading.load_dictionary_learning_sae(repo_id=..., folder=...)."
        )
    return hits[0].folder
