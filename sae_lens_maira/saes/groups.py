"""Matryoshka group bookkeeping: sizes from fractions, validation, prefix ends, weights.

The rules are dictionary_learning's ``MatryoshkaBatchTopKTrainer``: every group but the last gets
``int(fraction * d_sae)`` latents, the last takes the remainder; weights default to uniform.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# dictionary_learning's demo configs (F = 16384 -> 512, 1024, 2048, 4096, 8704 latents).
DEFAULT_GROUP_FRACTIONS: tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2 + 1 / 32)


def group_sizes_from_fractions(fractions: Sequence[float], d_sae: int) -> list[int]:
    """Split ``d_sae`` latents into groups the way dictionary_learning does."""
    if len(fractions) == 0:
        raise ValueError("group_fractions is empty: give at least one fraction, e.g. [1.0].")
    if any(f <= 0 for f in fractions):
        raise ValueError(f"group_fractions must all be positive, got {list(fractions)}.")
    if not math.isclose(sum(fractions), 1.0):
        raise ValueError(
            f"group_fractions must sum to 1.0, got {list(fractions)} (sum {sum(fractions):.6g})."
        )
    sizes = [int(f * d_sae) for f in fractions[:-1]]
    sizes.append(d_sae - sum(sizes))
    validate_group_sizes(sizes, d_sae)
    return sizes


def validate_group_sizes(sizes: Sequence[int], d_sae: int) -> None:
    """Raise a ValueError that names the fix unless ``sizes`` is a valid partition of d_sae."""
    if len(sizes) == 0:
        raise ValueError("group_sizes is empty: give the number of latents in each nested group.")
    if any(int(s) != s or s <= 0 for s in sizes):
        raise ValueError(f"group_sizes must be positive integers, got {list(sizes)}.")
    if sum(sizes) != d_sae:
        raise ValueError(
            f"group_sizes {list(sizes)} sum to {sum(sizes)} but d_sae is {d_sae}; "
            "they must add up to d_sae."
        )


def group_ends(sizes: Sequence[int]) -> list[int]:
    """Cumulative widths: the latent count of every nested prefix (the last equals d_sae)."""
    ends: list[int] = []
    total = 0
    for s in sizes:
        total += int(s)
        ends.append(total)
    return ends


def resolve_group_weights(weights: Sequence[float] | None, n_groups: int) -> list[float]:
    """Uniform ``1 / n_groups`` unless weights are given (then they must match the groups)."""
    if weights is None:
        return [1.0 / n_groups] * n_groups
    if len(weights) != n_groups:
        raise ValueError(
            f"group_weights has {len(weights)} entries but there are {n_groups} groups; "
            "give one weight per group."
        )
    if any(w < 0 for w in weights):
        raise ValueError(f"group_weights must be non-negative, got {list(weights)}.")
    return [float(w) for w in weights]
