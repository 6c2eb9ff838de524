"""Screen steering candidates by their causal effect on the labelled outcome, both directions.

A feature that detects a finding need not steer it, and one that makes the model write the word
may only stuff it in. So each candidate is judged by what it does to the reports: clamped
(:class:`~sae_lens_maira.steering.clamp.FeatureClamp`) at multiples of its typical activation
(:func:`feature_scales`) on studies without the finding, the share of *fluent* reports that now
state it (:func:`add_sweep`, best over the multiples and over each placement screened); clamped
to zero on studies whose unsteered report states it, the share that no longer does
(:func:`remove_sweep`). :func:`screen_candidates` keeps the candidate with the largest sum.
Mentions come from the report labeller, fluency from :mod:`.fluency`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from sae_lens_maira.data.labeller import Status, label_report
from sae_lens_maira.steering.clamp import FeatureClamp
from sae_lens_maira.steering.fluency import fluency_summary, is_fluent
from sae_lens_maira.steering.settings import SteerSettings
from sae_lens_maira.steering.sweep import generate_reports


def mentions(texts: Sequence[str], finding: str) -> list[bool]:
    """Per text: does the report labeller call ``finding`` positive?"""
    return [label_report(t, [finding])[finding] is Status.POSITIVE for t in texts]


class ReportGenerator:
    """Greedy reports for studies under one clamp (or none), with the settings' decoding; a
    sweep reads the coefficients and the suppression placement from ``spec``."""

    def __init__(self, model, processor, sae, spec: SteerSettings, hook_name: str) -> None:
        self.model, self.processor, self.sae, self.spec, self.hook_name = (
            model, processor, sae, spec, hook_name,
        )  # fmt: skip

    def __call__(self, studies, feature: int | None = None, value: float | None = None,
                 where: str | None = None) -> list[str]:  # fmt: skip
        hook = None
        if feature is not None:
            hook = FeatureClamp.at(self.sae, feature, value, where or self.spec.where[0],
                                  tokenizer=self.processor.tokenizer)  # fmt: skip
        return generate_reports(
            self.model, self.processor, list(studies), hook=hook, hook_name=self.hook_name,
            batch_size=self.spec.batch_size, max_new_tokens=self.spec.max_new_tokens,
        )  # fmt: skip


def add_sweep(gen: ReportGenerator, studies, feature: int, scale: float, finding: str,
              where: str) -> dict[str, Any]:  # fmt: skip
    """Clamp ``feature`` to ``coefficient * scale`` at ``where`` on studies without ``finding``;
    the best point has the highest fluent mention rate (ties: the smallest coefficient)."""
    points = []
    for coef in gen.spec.coefficients:
        texts = gen(studies, feature, float(coef) * scale, where)
        said = mentions(texts, finding)
        fluent = [is_fluent(t, finding) for t in texts]
        points.append({
            "coefficient": float(coef), "value": float(coef) * scale,
            "mention_rate": sum(said) / len(texts),
            "fluent_mention_rate": sum(a and b for a, b in zip(said, fluent, strict=True)) / len(texts),
            **{f"share_{k}": v for k, v in fluency_summary(texts, finding).items() if k != "n"},
            "reports": texts,
        })  # fmt: skip
    best = max(points, key=lambda p: (p["fluent_mention_rate"], -p["coefficient"]))
    return {"points": points, "best": best}


def remove_sweep(gen: ReportGenerator, studies, feature: int, finding: str,
                 baseline: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """Clamp ``feature`` to zero on studies whose unsteered report (``baseline``) states
    ``finding``; ``removed_rate`` None when none does."""
    said = mentions(baseline, finding)
    chosen = [s for s, m in zip(studies, said, strict=True) if m]
    if not chosen:
        return {"n": 0, "removed_rate": None, "reports": [], "study_ids": []}
    texts = gen(chosen, feature, 0.0, gen.spec.suppress_where)
    still = mentions(texts, finding)
    return {
        "n": len(chosen),
        "removed_rate": 1.0 - sum(still) / len(chosen),
        **{f"share_{k}": v for k, v in fluency_summary(texts, finding).items() if k != "n"},
        "reports": texts,
        "unsteered": [b for b, m in zip(baseline, said, strict=True) if m],
        "study_ids": [s.study_id for s in chosen],
    }


def feature_scales(train_maxima: torch.Tensor, labels: Sequence[bool], features: Sequence[int],
                   all_maxima: torch.Tensor | None = None) -> dict[int, float]:  # fmt: skip
    """Each feature's typical activation on training studies with the finding (mean of its
    per-study maxima over positives; the largest maximum over all studies when it never fires
    there): the unit the clamp's coefficients are counted in."""
    y = torch.tensor(list(labels), dtype=torch.bool)
    out = {}
    for f in features:
        col = train_maxima[:, f]
        pos = col[y]
        value = float(pos[pos > 0].mean()) if bool((pos > 0).any()) else 0.0
        if value <= 0 and all_maxima is not None:
            value = float(all_maxima[:, f].max())
        out[int(f)] = value if value > 0 else 1.0
    return out


def screen_candidates(
    gen: ReportGenerator,
    candidates: Sequence[int],
    scales: dict[int, float],
    finding: str,
    negatives: Sequence[Any],
    positives: Sequence[Any],
    log: Callable[[int, dict[str, Any]], None] | None = None,
) -> tuple[int, dict[int, dict[str, Any]]]:
    """(best candidate, screening per candidate): each is added at every placement in
    ``gen.spec.where`` on ``negatives`` (the placement with the highest fluent mention rate is
    kept, ties to the earlier) and removed on the ``positives`` whose unsteered report states
    the finding; score = fluent mention rate + removed rate, ties to the earlier candidate.
    ``log(feature, row)`` sees each row as it is measured."""
    wheres = gen.spec.where
    baseline = gen(positives)
    screening: dict[int, dict[str, Any]] = {}
    for f in candidates:
        rem = remove_sweep(gen, positives, f, finding, baseline)
        tries = {w: add_sweep(gen, negatives, f, scales[f], finding, w)["best"] for w in wheres}
        where = max(wheres, key=lambda w: (tries[w]["fluent_mention_rate"], -wheres.index(w)))
        add = tries[where]
        score = add["fluent_mention_rate"] + (rem["removed_rate"] or 0.0)
        screening[f] = {"add": add["fluent_mention_rate"], "add_coefficient": add["coefficient"],
                        "where": where, "remove": rem["removed_rate"], "score": score,
                        "by_where": {w: t["fluent_mention_rate"] for w, t in tries.items()}}  # fmt: skip
        if log is not None:
            log(f, {**screening[f], "n_remove": rem["n"]})
    best = max(candidates, key=lambda f: (screening[f]["score"], -list(candidates).index(f)))
    return best, screening


def examples(reports: list[str], finding: str, n: int = 2) -> list[str]:
    """Up to ``n`` reports, those that mention ``finding`` (positively) first."""
    said = mentions(reports, finding)
    positive = [r for r, m in zip(reports, said, strict=True) if m]
    return (positive + [r for r in reports if r not in positive])[:n]
