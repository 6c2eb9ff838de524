"""The ``steer:`` section of an experiment YAML as a typed record (unknown keys are errors).

Two modes: ``clamp`` (default) sets the feature's activation to ``coefficient x scale`` where
``where`` says (:func:`~sae_lens_maira.steering.clamp.parse_where`: ``image``,
``image+generated``, ``image+first4``, ``generated``, ``boundary1``, ...; the demo screens every placement
listed, the ``steer`` command uses the first); ``add`` adds ``coefficient x`` the unit decoder
direction at ``positions`` (``generated``, ``prompt`` or ``both``), the study's original recipe.
Suppression clamps the feature to zero at ``suppress_where``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sae_lens_maira.config_sections import check_keys


@dataclass(frozen=True)
class SteerSettings:
    finding: str = "pleural_effusion"
    features: tuple[int, ...] = ()
    mode: str = "clamp"
    #: clamp: multiples of the feature's typical activation on studies with the finding;
    #: add: multiples of the unit decoder direction
    coefficients: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
    where: tuple[str, ...] = ("boundary1", "image+generated")
    suppress_where: str = "image+generated"
    positions: str = "generated"
    scale: float = 1.0
    n_studies: int = 48
    max_new_tokens: int = 48
    batch_size: int = 16
    detector_candidates: int = 5
    hook_name: str | None = None
    sae: str | None = None
    out: str = "steering"

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> SteerSettings:
        section = dict(section or {})
        check_keys("steer", section, [f.name for f in fields(cls)])
        if isinstance(section.get("where"), str):
            section["where"] = [section["where"]]
        for key, kind in (("features", int), ("coefficients", float), ("where", str)):
            if section.get(key) is not None:
                section[key] = tuple(kind(v) for v in section[key])
            elif key in section:
                section.pop(key)
        if section.get("mode", "clamp") not in ("clamp", "add"):
            raise ValueError(f"steer.mode must be 'clamp' or 'add', not {section['mode']!r}")
        from sae_lens_maira.steering.clamp import parse_where

        for w in (*section.get("where", ()), section.get("suppress_where", "image")):
            parse_where(w)
        return cls(**section)
