"""The demo's report card: each target with its value, its threshold and PASS / FAIL.

The demo is a study, and a study that did not work must say so: the summary opens with the
verdict, ``summary.json`` holds one field per target, and ``sae-lens-maira demo`` exits non-zero
with a one-line reason when any target fails. The thresholds are the issue's acceptance bar and
live here only, so the model cache's retry rule and the report card agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

#: The model writes a finding: held-out mention rate on positives at least this ...
MENTION_POSITIVES_MIN = 0.5
#: ... and on negatives at most this.
MENTION_NEGATIVES_MAX = 0.1
#: A feature (chosen on training studies) detects the finding on held-out studies.
DETECTOR_BALANCED_ACCURACY_MIN = 0.8
#: The SAE on the positions it was trained on.
SAE_EXPLAINED_VARIANCE_MIN = 0.7
SAE_L0_FACTOR = 2.0
SAE_DEAD_MAX = 0.2
#: Steering: share of reports that state / drop the finding (fluent reports only).
STEER_RATE_MIN = 0.5
#: Fluency: share of reports with a repeated phrase or the finding's word stuffed in.
STEER_DISFLUENT_MAX = 0.2


@dataclass
class Target:
    """One target: ``value`` compared with ``threshold`` by ``op`` (``>=``, ``<=`` or
    ``between``, where ``threshold`` is ``[low, high]``)."""

    name: str
    description: str
    value: float | None
    threshold: float | list[float]
    op: str

    @property
    def passed(self) -> bool:
        v = self.value
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return False
        t = self.threshold
        if self.op == ">=" and not isinstance(t, list):
            return v >= t
        if self.op == "<=" and not isinstance(t, list):
            return v <= t
        if self.op == "between" and isinstance(t, list):
            low, high = t
            return low <= v <= high
        raise ValueError(f"unknown comparison {self.op!r} with threshold {t!r}")

    def line(self) -> str:
        """``description: value op threshold`` in words, for logs and the exit message."""
        value = "not measured" if self.value is None else _fmt(self.value)
        t = self.threshold
        if self.op == "between" and isinstance(t, list):
            bound = f"within [{_fmt(t[0])}, {_fmt(t[1])}]"
        else:
            bound = f"{self.op} {_fmt(self.threshold)}"
        return f"{self.description}: {value} (target {bound})"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = "PASS" if self.passed else "FAIL"
        return d


def _fmt(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)


@dataclass
class ReportCard:
    targets: list[Target] = field(default_factory=list)

    def add(self, name: str, description: str, value: float | None, threshold: Any, op: str) -> None:
        self.targets.append(Target(name, description, value, threshold, op))

    @property
    def passed(self) -> bool:
        return all(t.passed for t in self.targets)

    @property
    def failed(self) -> list[Target]:
        return [t for t in self.targets if not t.passed]

    def reason(self) -> str:
        """One line naming every failed target (empty when all pass)."""
        bad = self.failed
        if not bad:
            return ""
        return f"{len(bad)} of {len(self.targets)} targets failed: " + "; ".join(
            t.line() for t in bad
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": "PASS" if self.passed else "FAIL",
            "reason": self.reason(),
            "targets": {t.name: t.to_dict() for t in self.targets},
        }


def model_targets(
    card: ReportCard, generated: Mapping[str, Mapping[str, float]], findings: Sequence[str],
    where: str = "held-out",
) -> None:  # fmt: skip
    """Mention rates of the model's greedy reports (``mention_summary`` rows) per finding."""
    for f in findings:
        g = generated.get(f, {})
        card.add(f"model_writes_{f}_positives", f"{where} reports mention {f} on positives",
                 g.get("positives") if g.get("n_positives") else None, MENTION_POSITIVES_MIN, ">=")
        card.add(f"model_writes_{f}_negatives", f"{where} reports mention {f} on negatives",
                 g.get("negatives") if g.get("n_negatives") else None, MENTION_NEGATIVES_MAX, "<=")  # fmt: skip


def model_passes(generated: Mapping[str, Mapping[str, float]], findings: Sequence[str]) -> bool:
    card = ReportCard()
    model_targets(card, generated, findings)
    return card.passed


def detector_targets(card: ReportCard, detectors: Mapping[str, list[dict]]) -> None:
    """The feature chosen on training studies (the first row), scored on held-out studies."""
    for f, rows in detectors.items():
        value = rows[0]["held_out_balanced_accuracy"] if rows else None
        feat = f" (feature {rows[0]['feature']})" if rows else ""
        card.add(f"feature_detects_{f}", f"held-out balanced accuracy of the {f} feature{feat}",
                 value, DETECTOR_BALANCED_ACCURACY_MIN, ">=")  # fmt: skip


def sae_targets(card: ReportCard, health: Mapping[str, float], k: int) -> None:
    card.add("sae_explained_variance", "SAE explained variance on its training positions",
             health.get("explained_variance"), SAE_EXPLAINED_VARIANCE_MIN, ">=")
    card.add("sae_l0", f"SAE L0 on its training positions (k = {k})", health.get("l0"),
             [k / SAE_L0_FACTOR, k * SAE_L0_FACTOR], "between")
    card.add("sae_dead_latents", "share of SAE latents that never fire on its training positions",
             health.get("dead_fraction"), SAE_DEAD_MAX, "<=")  # fmt: skip


def steering_targets(card: ReportCard, steering: Mapping[str, Any]) -> None:
    """Both directions: state the finding on negatives, drop it on positives, fluently."""
    finding = steering.get("finding", "the finding")
    add = steering.get("add", {})
    card.add("steering_adds_finding",
             f"held-out studies without {finding}: best fluent mention rate when steered",
             add.get("best_fluent_rate"), STEER_RATE_MIN, ">=")
    card.add("steering_add_fluency",
             "share of disfluent reports at that coefficient (repeated phrase or word stuffed in)",
             add.get("best_disfluent"), STEER_DISFLUENT_MAX, "<=")
    card.add("unsteered_fluency", "share of disfluent unsteered reports",
             add.get("unsteered_disfluent"), STEER_DISFLUENT_MAX, "<=")
    remove = steering.get("remove", {})
    card.add("steering_removes_finding",
             f"held-out studies with {finding} mentioned unsteered: share where suppressing the "
             "feature removes the mention", remove.get("removed_rate"), STEER_RATE_MIN, ">=")  # fmt: skip
