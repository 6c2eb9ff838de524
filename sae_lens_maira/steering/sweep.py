"""Steering sweeps: generate reports at several coefficients and label them for a finding.

For each coefficient the same studies are generated greedily with the feature's direction added at
the hook; a rule-based labeller (:mod:`sae_lens_maira.data.labeller`) marks each report as
mentioning the finding (positive), negating it, uncertain or silent. The sweep reports the rates
per coefficient and draws mention rate against coefficient.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from tqdm.auto import tqdm

from sae_lens_maira.data.labeller import Status, label_report
from sae_lens_maira.data.study import Study
from sae_lens_maira.model.generation import generate_findings
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.steering.hooks import Positions, SteeringHook, steering


@dataclass
class SweepPoint:
    coefficient: float
    reports: list[str]
    rates: dict[str, float]  # status -> fraction of reports


@dataclass
class SweepResult:
    finding: str
    hook_name: str
    features: list[int]
    positions: str
    study_ids: list[str]
    points: list[SweepPoint] = field(default_factory=list)

    def mention_rate(self) -> list[tuple[float, float]]:
        return [(p.coefficient, p.rates[Status.POSITIVE.value]) for p in self.points]

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "steering.json").write_text(json.dumps(asdict(self), indent=1))
        plot_sweep(self, folder / "steering.png")
        return folder


def generate_reports(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    *,
    hook: SteeringHook | Any | None = None,
    hook_name: str | None = None,
    batch_size: int = 4,
    max_new_tokens: int = 96,
) -> list[str]:
    """Greedy findings for each study (:func:`~sae_lens_maira.model.generation.generate_findings`),
    optionally with a steering hook attached (a :class:`SteeringHook`, a
    :class:`~sae_lens_maira.steering.clamp.FeatureClamp` or any hook with ``prepare(batch)``)."""

    def attached(batch: Any) -> AbstractContextManager[Any]:
        assert hook is not None
        hook.prepare(batch)
        return steering(model, hook_name or "", hook)

    return generate_findings(
        model, processor, studies, max_new_tokens=max_new_tokens, batch_size=batch_size,
        during=None if hook is None else attached,
    )  # fmt: skip


def steering_sweep(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    *,
    direction: torch.Tensor | None = None,
    hook_name: str,
    coefficients: Sequence[float],
    finding: str,
    features: Sequence[int] = (),
    positions: Positions | str = "generated",
    batch_size: int = 4,
    max_new_tokens: int = 96,
    make_hook: Callable[[float], Any] | None = None,
) -> SweepResult:
    """Mention / negation rates of ``finding`` in reports generated at each coefficient.

    The hook per coefficient is ``make_hook(coefficient)`` (e.g. a
    :class:`~sae_lens_maira.steering.clamp.FeatureClamp`), else ``coefficient x direction``
    added at ``positions``.
    """
    if not studies:
        raise ValueError("a steering sweep needs at least one study")
    if make_hook is None:
        if direction is None:
            raise ValueError("give a steering direction or make_hook")
        steer, where = direction, cast(Positions, positions)

        def add_direction(coef: float) -> SteeringHook:
            return SteeringHook(steer, float(coef), prompt_len=0, positions=where)

        make_hook = add_direction

    result = SweepResult(
        finding, hook_name, list(features), str(positions), [s.study_id for s in studies]
    )
    for coef in tqdm(list(coefficients), desc=f"steering {finding}", unit="coef"):
        reports = generate_reports(model, processor, studies, hook=make_hook(float(coef)),
                                   hook_name=hook_name, batch_size=batch_size,
                                   max_new_tokens=max_new_tokens)  # fmt: skip
        labels = [label_report(r, [finding])[finding] for r in reports]
        rates = {s.value: sum(lab is s for lab in labels) / len(labels) for s in Status}
        result.points.append(SweepPoint(float(coef), reports, rates))
    return result


def plot_sweep(result: SweepResult, path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coefs = [p.coefficient for p in result.points]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    for status, style in (("positive", "o-"), ("negated", "s--"), ("uncertain", "^:")):
        ax.plot(coefs, [p.rates[status] for p in result.points], style, label=f"{status}")
    feats = ",".join(map(str, result.features)) or "direction"
    ax.set_title(f"Steering feature {feats} at {result.hook_name}", fontsize=9)
    ax.set_xlabel(f"coefficient ({result.positions} positions)")
    ax.set_ylabel(f"reports mentioning {result.finding.replace('_', ' ')}")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
