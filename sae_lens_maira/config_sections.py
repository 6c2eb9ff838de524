"""YAML sections as dataclasses: unknown keys are errors that name the nearest valid key.

SAELens builds its runner from one typed config; a run's YAML here holds several sections, each
read into its own dataclass with :func:`section_from_dict`. A misspelt key (``training_token``)
fails at load with ``did you mean 'training_tokens'?`` instead of being silently ignored, and each
key's default lives in exactly one place: its dataclass field.
"""

from __future__ import annotations

import difflib
import os
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, fields, is_dataclass
from typing import Any, ClassVar, Protocol, TypeVar


class DataclassInstance(Protocol):
    """What every dataclass has (typeshed's private protocol of the same name, spelled here)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]


T = TypeVar("T", bound=DataclassInstance)  # a section dataclass


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


_SCALARS = (bool, int, float, str)


def _scalar_types(hint: Any) -> tuple[tuple[type, ...], bool] | None:
    """``(types, None allowed)`` of a scalar field's hint (``int``, ``float | None``, ...);
    None for other hints (lists, mappings, Any), which are left unchecked."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or (
        typing.get_origin(hint) is typing.Union) else (hint,)  # fmt: skip
    allowed = tuple(a for a in args if a is not type(None))
    if not allowed or not all(a in _SCALARS for a in allowed):
        return None
    return allowed, len(allowed) < len(args)


def _coerce(value: Any, allowed: tuple[type, ...]) -> Any:
    """``value`` as one of ``allowed``; raises ValueError. YAML 1.1 reads ``1e-3`` and ``5e8`` as
    strings, so numeric strings are taken as numbers; an int field takes a whole float."""
    if isinstance(value, os.PathLike) and str in allowed:
        return os.fspath(value)
    if isinstance(value, bool):
        if bool in allowed:
            return value
        raise ValueError
    if isinstance(value, str) and str not in allowed:
        value = float(value)  # ValueError when it is no number
    if isinstance(value, (int, float)):
        if int in allowed and (isinstance(value, int) or float(value).is_integer()):
            return int(value) if float not in allowed or isinstance(value, int) else value
        if float in allowed:
            return float(value)
        if str in allowed:
            return str(value)
    if isinstance(value, str) and str in allowed:
        return value
    raise ValueError


def typed_values(cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``values`` with each scalar field's value checked against (and coerced to) its type hint;
    a wrong type is a ValueError naming the key, its type and the value."""
    hints = typing.get_type_hints(cls)
    out = dict(values)
    for key, value in values.items():
        scalar = _scalar_types(hints.get(key))
        if scalar is None or (value is None and scalar[1]):
            continue
        try:
            out[key] = _coerce(value, scalar[0])
        except ValueError:
            names = " or ".join(t.__name__ for t in scalar[0]) + (" or null" if scalar[1] else "")
            raise ValueError(f"{where}.{key} must be {names}, not {value!r}") from None
    return out


def section_from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """``cls(**values)`` after checking every key and each scalar value's type; a missing
    required key is named too."""
    values = dict(values or {})
    check_keys(where, values, field_names(cls))
    values = typed_values(cls, values, where)
    required = [
        f.name
        for f in fields(cls)
        if f.default is MISSING and f.default_factory is MISSING and f.name not in values
    ]
    if required:
        raise ValueError(f"{where} needs {', '.join(repr(r) for r in required)}")
    return cls(**values)


def section_dict(instance: Any) -> dict[str, Any]:
    """A section dataclass back as a plain dict (every key, defaults filled in)."""
    assert is_dataclass(instance) and not isinstance(instance, type)
    return asdict(instance)
