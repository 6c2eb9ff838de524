"""Studies from a manifest file: bring your own images and report sections.

A manifest is JSON Lines (``.jsonl``, one object per line) or CSV (``.csv``, header row) with::

    study_id, frontal, lateral, prior_frontal, indication, technique, comparison, prior_report,
    findings, labels

``study_id`` and ``frontal`` are required; empty values mean "not given". Image paths are
relative to the manifest's folder or absolute. ``labels`` is a JSON object of booleans
(``{"cardiomegaly": true}``) or, in CSV, ``label_<name>`` columns holding true/false/1/0/yes/no.
Any other column goes to ``Study.meta``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .loaded import LoadResult
from .study import Study

IMAGE_FIELDS = ("frontal", "lateral", "prior_frontal")
TEXT_FIELDS = ("indication", "technique", "comparison", "prior_report", "findings")
KNOWN_FIELDS = ("study_id", *IMAGE_FIELDS, *TEXT_FIELDS, "labels")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}


class ManifestError(ValueError):
    """A manifest entry is invalid; the message names the file, line and field."""


def _bool(value: Any, where: str) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None:
        return None
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text == "":
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ManifestError(
        f"{where}: label value {value!r} is not a boolean (use true/false, 1/0 or yes/no)"
    )


def _records(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, record) pairs; line numbers are 1-based file lines."""
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        out = []
        for i, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ManifestError(
                    f"{path}:{i}: not valid JSON ({exc.msg} at column {exc.colno})"
                ) from exc
            if not isinstance(obj, dict):
                raise ManifestError(
                    f"{path}:{i}: expected a JSON object per line, got {type(obj).__name__}"
                )
            out.append((i, obj))
        return out
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines(keepends=True))
        if reader.fieldnames is None:
            raise ManifestError(
                f"{path}: empty CSV, expected a header row with study_id, frontal, ..."
            )
        # csv reports the physical line the record ended on, which handles quoted newlines.
        return [(reader.line_num, row) for row in reader]
    raise ManifestError(f"{path}: unsupported manifest type {path.suffix!r}; use .jsonl or .csv")


def load_manifest(
    path: str | Path, *, on_missing: str = "error", check_files: bool = True
) -> LoadResult:
    """Read a manifest into Studies.

    ``on_missing``: ``"error"`` raises FileNotFoundError naming the line and field of a missing
    image; ``"skip"`` skips such studies and counts them in the result.
    """
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    base = path.parent
    result = LoadResult(studies=[])
    seen: dict[str, int] = {}
    for line, rec in _records(path):
        where = f"{path}:{line}"
        study_id = str(rec.get("study_id") or "").strip()
        if not study_id:
            raise ManifestError(f"{where}: field 'study_id' is missing or empty")
        if study_id in seen:
            raise ManifestError(
                f"{where}: field 'study_id' {study_id!r} repeats line {seen[study_id]}"
            )
        seen[study_id] = line
        images: dict[str, Path | None] = {}
        for name in IMAGE_FIELDS:
            value = rec.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                images[name] = None
                continue
            if not isinstance(value, str):
                raise ManifestError(
                    f"{where}: field {name!r} must be a file path, got {type(value).__name__}"
                )
            p = Path(value.strip()).expanduser()
            images[name] = p if p.is_absolute() else base / p
        if images["frontal"] is None:
            raise ManifestError(
                f"{where}: field 'frontal' is missing or empty (every study needs a frontal image)"
            )
        texts: dict[str, str | None] = {}
        for name in TEXT_FIELDS:
            value = rec.get(name)
            if value is not None and not isinstance(value, str):
                raise ManifestError(
                    f"{where}: field {name!r} must be text, got {type(value).__name__}"
                )
            texts[name] = value.strip() if value and value.strip() else None
        labels: dict[str, bool] = {}
        raw = rec.get("labels")
        if isinstance(raw, str) and raw.strip():
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise ManifestError(
                    f"{where}: field 'labels' is not valid JSON ({exc.msg})"
                ) from exc
        if isinstance(raw, dict):
            for k, v in raw.items():
                b = _bool(v, f"{where}: field 'labels.{k}'")
                if b is not None:
                    labels[str(k)] = b
        elif raw not in (None, ""):
            raise ManifestError(f"{where}: field 'labels' must be a JSON object of booleans")
        meta: dict[str, Any] = {"source": "manifest", "manifest_line": line}
        for key, value in rec.items():
            if key is None:
                raise ManifestError(f"{where}: more values than header columns")
            if key.startswith("label_"):
                b = _bool(value, f"{where}: field {key!r}")
                if b is not None:
                    labels[key[len("label_") :]] = b
            elif key not in KNOWN_FIELDS:
                meta[key] = value
        if check_files:
            missing = [f"{k}={p}" for k, p in images.items() if p is not None and not p.exists()]
            if missing:
                msg = f"{where}: image file(s) not found: " + ", ".join(missing)
                if on_missing == "error":
                    raise FileNotFoundError(msg + " (fix the path, or pass on_missing='skip')")
                result.skip("missing_image", msg, study_id)
                continue
        result.studies.append(
            Study(
                study_id=study_id,
                frontal=images["frontal"],
                lateral=images["lateral"],
                prior_frontal=images["prior_frontal"],
                labels=labels,
                meta=meta,
                **texts,
            )
        )
    return result


#: What :func:`write_manifest` writes per study (absent text stays null, read back as None).
WRITTEN_FIELDS = ("study_id", "frontal", "lateral", "indication", "comparison", "findings", "labels")


def write_manifest(studies: Iterable[Study], path: str | Path) -> Path:
    """Studies as a JSONL manifest that :func:`load_manifest` reads back: absolute image paths,
    the :data:`WRITTEN_FIELDS` (technique, priors and ``meta`` are not written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in studies:
        rec = {
            "study_id": s.study_id,
            "frontal": str(s.frontal),
            "lateral": str(s.lateral) if s.lateral is not None else None,
            "indication": s.indication,
            "comparison": s.comparison,
            "findings": s.findings,
            "labels": s.labels,
        }
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path
