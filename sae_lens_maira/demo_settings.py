"""The ``demo:`` section of the shipped YAML as a typed record: one default per setting.

It lives outside ``demo/`` because :mod:`sae_lens_maira.experiment` reads every section and only
the CLI may import the demo package.

The defaults here equal ``configs/small_default.yaml`` (a test holds them together), so the demo
does the same thing whether a setting is spelled out or left out; an unknown key is an error
naming the nearest known one, not a silently ignored typo.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from sae_lens_maira.config_sections import check_keys
from sae_lens_maira.data.labeller import DEFAULT_FINDINGS


@dataclass(frozen=True)
class DemoSettings:
    #: the findings the report labeller has rules for (and the synthetic radiographs show)
    findings: tuple[str, ...] = DEFAULT_FINDINGS
    #: intra-op threads, fixed (with deterministic algorithms) so runs repeat; None: all cores
    threads: int | None = 2
    #: seed 0 never learnt to mention cardiomegaly on the reference machine
    model_seed: int = 1
    held_out_fraction: float = 0.2
    image_size: int = 112
    held_out_negatives: int = 200
    top_features_per_finding: int = 5
    steer_report_candidates: int = 8
    steer_writer_candidates: int = 5
    #: training studies without (and with) the finding that screen the steering candidates
    steer_screen_studies: int = 12
    autointerp_top_features: int = 64
    #: training positions the SAE's health (EV, L0, dead latents) is measured on
    health_positions: int = 50_000

    @classmethod
    def from_section(cls, section: dict[str, Any] | None) -> DemoSettings:
        section = dict(section or {})
        check_keys("demo", section, [f.name for f in fields(cls)])
        if "findings" in section:
            section["findings"] = tuple(section["findings"])
        return cls(**section)
