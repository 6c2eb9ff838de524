"""YAML sections as dataclasses: unknown keys are errors that name the nearest valid key.

SAELens builds its runner from one typed config; a run's YAML here holds several sections, each
read into its own dataclass with :func:`section_from_dict`. A misspelt key (``training_token``)
fails at load with ``did you mean 'training_tokens'?`` instead of being silently ignored, and each
key's default lives in exactly one place: its dataclass field.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def unknown_key_message(where: str, key: str, valid: Iterable[str]) -> str:
    valid = sorted(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    return f"unknown key {key!r} in {where}{hint} Valid keys: {', '.join(valid)}"


def check_keys(where: str, values: Mapping[str, Any], valid: Iterable[str]) -> None:
    """Raise ValueError for the first key of ``values`` not in ``valid``."""
    valid = set(valid)
    for key in values:
        if key not in valid:
            raise ValueError(unknown_key_message(where, str(key), valid))


def field_names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def section_from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """``cls(**values)`` after checking every key; a missing required key is named too."""
    values = dict(values or {})
    check_keys(where, values, field_names(cls))
    required = [
        f.name
        for f in fields(cls)  # type: ignore[arg-type]  (cls is a dataclass)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in values
    ]
    if required:
        raise ValueError(f"{where} needs {', '.join(repr(r) for r in required)}")
    return cls(**values)


def section_dict(instance: Any) -> dict[str, Any]:
    """A section dataclass back as a plain dict (every key, defaults filled in)."""
    assert is_dataclass(instance) and not isinstance(instance, type)
    return asdict(instance)
