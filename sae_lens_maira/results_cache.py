"""Reuse a deterministic step's results while everything that determines them is unchanged.

The demo's later steps (activation cache, SAE, detectors, dashboards, steering) run with fixed
seeds, a fixed thread count and deterministic algorithms, so the same inputs give the same outputs
bit for bit. A :class:`ResultsCache` entry stores a step's output folders and its summary facts
under the SHA-256 of a description of those inputs: the digests of the input files (model
weights, manifests), the config sections the step reads, the source of the whole package and the
versions of the libraries that compute it. Any change, to a setting, an input or one line of code,
gives a new key and the step runs again; nothing stale is reused. An entry is written to a
temporary sibling and renamed into place when complete, so an interrupted run never leaves a
half entry that looks finished.

Paths inside the stored facts that point into the run's output folder are stored relative to it
(``{out}``) and restored against the new run's folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

_DONE = "COMPLETE"
_FACTS = "facts.json"
_OUT = "{out}"
#: Libraries whose code computes the cached results (their versions are part of every key).
LIBRARIES = ("torch", "sae-lens", "transformer-lens", "transformers", "datasets", "numpy")


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_fingerprint(root: Path | None = None) -> str:
    """SHA-256 over every Python file and shipped config of the ``sae_lens_maira`` package."""
    root = Path(root) if root is not None else Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(p for ext in ("*.py", "*.yaml") for p in root.rglob(ext)):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def environment() -> dict[str, str]:
    """Python, machine and the computing libraries' versions (a new build may round otherwise)."""
    env = {"python": platform.python_version(), "machine": platform.machine()}
    for lib in LIBRARIES:
        try:
            env[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            env[lib] = "absent"
    return env


def results_key(parts: dict[str, Any]) -> str:
    """The SHA-256 of ``parts`` as canonical JSON (keys sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _swap(value: Any, old: str, new: str) -> Any:
    """``value`` with every path string under folder ``old`` moved under ``new`` (nested)."""
    if isinstance(value, str):
        if value == old:
            return new
        return new + value[len(old) :] if value.startswith(old + "/") else value
    if isinstance(value, dict):
        return {k: _swap(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_swap(v, old, new) for v in value]
    return value


class ResultsCache:
    """Stored results of named steps under ``root``, one folder per (step, key)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def entry(self, step: str, key: str) -> Path:
        return self.root / step / key

    def restore(self, step: str, key: str, out: Path) -> dict[str, Any] | None:
        """Copy the entry's folders into ``out`` and return its facts; ``None`` on a miss."""
        entry = self.entry(step, key)
        if not (entry / _DONE).is_file():
            return None
        try:
            facts = json.loads((entry / _FACTS).read_text())
        except (OSError, json.JSONDecodeError):
            return None
        for folder in json.loads((entry / _DONE).read_text())["folders"]:
            target = out / folder
            shutil.rmtree(target, ignore_errors=True)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(entry / "files" / folder, target)
        return _swap(facts, _OUT, str(out))

    def store(
        self, step: str, key: str, out: Path, folders: Sequence[str], facts: dict[str, Any]
    ) -> Path:
        """Keep ``folders`` (relative to ``out``; missing ones skipped) and ``facts``."""
        entry = self.entry(step, key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=entry.parent))
        try:
            kept = [f for f in folders if (out / f).exists()]
            for folder in kept:
                shutil.copytree(out / folder, tmp / "files" / folder)
            (tmp / _FACTS).write_text(json.dumps(_swap(facts, str(out), _OUT), default=str))
            (tmp / _DONE).write_text(json.dumps({"folders": kept}))
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(tmp, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return entry


def digests(paths: Iterable[str | Path]) -> dict[str, str]:
    """``{file name: SHA-256}`` for each existing file."""
    return {Path(p).name: file_digest(p) for p in paths if Path(p).is_file()}
