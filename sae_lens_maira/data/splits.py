"""Deterministic train / held-out splits that do not depend on order, process or Python's hash."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Literal

from .study import Study

Split = Literal["train", "held_out"]


def hash_split(key: str, held_out_fraction: float = 0.15, *, salt: str = "sae-lens-maira") -> Split:
    """Assign ``key`` (e.g. a study or patient id) to a split by a SHA-256 of the key.

    The same key always lands in the same split, whatever else is in the collection, so
    held-out studies stay held out when the collection grows.
    """
    if not 0.0 <= held_out_fraction <= 1.0:
        raise ValueError(f"held_out_fraction must be in [0, 1], got {held_out_fraction}")
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    return "held_out" if u < held_out_fraction else "train"


def split_studies(
    studies: Iterable[Study],
    held_out_fraction: float = 0.15,
    *,
    key: str = "study_id",
    salt: str = "sae-lens-maira",
) -> tuple[list[Study], list[Study]]:
    """Split studies into (train, held_out) by :func:`hash_split` of ``study.<key>`` or
    ``study.meta[key]`` (use ``key="subject_id"`` to keep a patient's studies together)."""
    train: list[Study] = []
    held: list[Study] = []
    for study in studies:
        value = getattr(study, key, None) if key == "study_id" else study.meta.get(key)
        if value is None:
            raise ValueError(f"study {study.study_id!r} has no {key!r} to split on")
        (
            held if hash_split(str(value), held_out_fraction, salt=salt) == "held_out" else train
        ).append(study)
    return train, held
