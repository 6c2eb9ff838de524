"""The demo's steering study: does a feature change the *finding* the model reports, both ways?

1. Candidates for ``steer.finding``: features that read it (detectors on image/prompt positions
   and on report positions) and features whose decoder direction raises its words' logits.
2. Screening on training studies, by causal effect on the labelled outcome: each candidate is
   clamped (:class:`~sae_lens_maira.steering.clamp.FeatureClamp`) at multiples of its typical
   activation on studies with the finding, on studies without it (share of *fluent* reports that
   now state the finding, best over the multiples), and clamped to zero on studies whose
   unsteered report states it (share that no longer does). The candidate with the largest sum
   is kept.
3. The kept feature on held-out studies: the same two sweeps, with fluency (repeated phrases,
   the word stuffed in) and the mean log-likelihood of the reports under the unsteered model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sae_lens_maira.data.labeller import Status, label_report
from sae_lens_maira.steering.clamp import FeatureClamp
from sae_lens_maira.steering.fluency import fluency_summary, is_fluent, mean_log_likelihood
from sae_lens_maira.steering.settings import SteerSettings
from sae_lens_maira.steering.sweep import generate_reports


def _mentions(texts: Sequence[str], finding: str) -> list[bool]:
    return [label_report(t, [finding])[finding] is Status.POSITIVE for t in texts]


class _Generator:
    """Greedy reports for studies under one clamp (or none), with the settings' decoding."""

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


def add_sweep(gen: _Generator, studies, feature: int, scale: float, finding: str,
              where: str) -> dict[str, Any]:  # fmt: skip
    """Clamp ``feature`` to ``coefficient * scale`` at ``where`` on studies without ``finding``."""
    points = []
    for coef in gen.spec.coefficients:
        texts = gen(studies, feature, float(coef) * scale, where)
        said = _mentions(texts, finding)
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


def remove_sweep(gen: _Generator, studies, feature: int, finding: str,
                 baseline: Sequence[str]) -> dict[str, Any]:  # fmt: skip
    """Clamp ``feature`` to zero on studies whose unsteered report states ``finding``."""
    said = _mentions(baseline, finding)
    chosen = [s for s, m in zip(studies, said, strict=True) if m]
    if not chosen:
        return {"n": 0, "removed_rate": None, "reports": [], "study_ids": []}
    texts = gen(chosen, feature, 0.0, gen.spec.suppress_where)
    still = _mentions(texts, finding)
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


def steer_finding(exp, held_exp, run, sae, train, held_out, finding: str, settings) -> dict[str, Any]:
    """Screen candidates on training studies, then both sweeps with the best on held-out ones."""
    import datasets

    from sae_lens_maira.analysis.finding_features import (
        finding_detectors,
        labels_of,
        study_maxima_from_cache,
    )
    from sae_lens_maira.processing.roles import Role
    from sae_lens_maira.steering.candidates import finding_token_ids, writer_features

    spec = SteerSettings.from_section(exp.section("steer", required=False))
    if finding not in run.facts["detectors"]:
        raise ValueError(
            f"steer.finding is {finding!r}, but the demo's findings are "
            f"{sorted(run.facts['detectors'])}; set steer.finding to one of them"
        )
    hook_name = spec.hook_name or exp.section("cache")["hook_name"]
    model, processor = exp.load_model(), exp.load_processor()
    train_studies = exp.load_studies()
    cache = datasets.load_from_disk(str(exp.path("activations/train")))
    cache_hook = exp.section("cache")["hook_name"]
    detect_max = study_maxima_from_cache(cache, sae, cache_hook, len(train_studies))
    report_max = study_maxima_from_cache(cache, sae, cache_hook, len(train_studies),
                                         roles=(Role.REPORT,))  # fmt: skip
    labels = labels_of(train_studies, [finding])

    kinds: dict[int, str] = {}
    for d in run.facts["detectors"][finding][: spec.detector_candidates]:
        kinds.setdefault(int(d["feature"]), "image/prompt detector")
    rows = finding_detectors(report_max, labels, top=settings.steer_report_candidates)[finding]
    for r in rows:
        kinds.setdefault(int(r.feature), "report detector")
    try:
        words = finding_token_ids(processor.tokenizer, finding)
    except ValueError as err:  # a tiny vocabulary may not spell the finding in one token
        print(f"   no writer candidates: {err}")
        words = []
    if words:
        for f in writer_features(sae.W_dec, model.W_U, words, top=settings.steer_writer_candidates):
            kinds.setdefault(int(f), "writes the finding")
    candidates = list(kinds)
    scales = feature_scales(detect_max, labels[finding], candidates, all_maxima=report_max)

    gen = _Generator(model, processor, sae, spec, hook_name)
    n_screen = settings.steer_screen_studies
    screen_neg = [s for s in train if not s.labels.get(finding)][:n_screen]
    screen_pos_all = [s for s in train if s.labels.get(finding)][: 2 * n_screen]
    screen_base = gen(screen_pos_all)
    screening: dict[int, dict[str, Any]] = {}
    for f in candidates:
        rem = remove_sweep(gen, screen_pos_all, f, finding, screen_base)
        tries = {w: add_sweep(gen, screen_neg, f, scales[f], finding, w)["best"] for w in spec.where}
        where = max(spec.where, key=lambda w: (tries[w]["fluent_mention_rate"], -spec.where.index(w)))
        add = tries[where]
        score = add["fluent_mention_rate"] + (rem["removed_rate"] or 0.0)
        screening[f] = {"add": add["fluent_mention_rate"], "add_coefficient": add["coefficient"],
                        "where": where, "remove": rem["removed_rate"], "score": score,
                        "by_where": {w: t["fluent_mention_rate"] for w, t in tries.items()}}  # fmt: skip
        print(f"   screening feature {f} ({kinds[f]}): {add['fluent_mention_rate']:.0%} of "
              f"training studies without it state {finding} fluently (x{add['coefficient']:g} at "
              f"{where}); suppressing removes it from "
              + ("n/a" if rem["removed_rate"] is None else f"{rem['removed_rate']:.0%}")
              + f" of {rem['n']}")  # fmt: skip
    best = max(candidates, key=lambda f: (screening[f]["score"], -candidates.index(f)))
    where = screening[best]["where"]

    negatives = [s for s in held_out if not s.labels.get(finding)][: spec.n_studies]
    positives = [s for s in held_out if s.labels.get(finding)][: spec.n_studies]
    base_neg = gen(negatives)
    add = add_sweep(gen, negatives, best, scales[best], finding, where)
    base_pos = gen(positives)
    remove = remove_sweep(gen, positives, best, finding, base_pos)
    ll_base = mean_log_likelihood(model, processor, negatives, base_neg)
    ll_best = mean_log_likelihood(model, processor, negatives, add["best"]["reports"])
    unsteered = fluency_summary(base_neg, finding)
    best_point = add["best"]
    for p in add["points"]:
        print(f"   x{p['coefficient']:g}: {p['mention_rate']:.0%} of held-out studies without "
              f"{finding} state it ({p['fluent_mention_rate']:.0%} fluently)")  # fmt: skip
    if remove["removed_rate"] is not None:
        print(f"   suppressed: the mention is gone from {remove['removed_rate']:.0%} of "
              f"{remove['n']} held-out studies whose report stated it")  # fmt: skip
    return {
        "finding": finding,
        "feature": best,
        "kind": kinds[best],
        "scale": scales[best],
        "hook": hook_name,
        "where": where,
        "suppress_where": spec.suppress_where,
        "candidates": candidates,
        "kinds": kinds,
        "screening": screening,
        "add": {
            "n": len(negatives),
            "unsteered_mention_rate": sum(_mentions(base_neg, finding)) / max(1, len(base_neg)),
            "unsteered_disfluent": unsteered["disfluent"],
            "unsteered_repeated_phrase": unsteered["repeated_phrase"],
            "unsteered_log_likelihood": ll_base,
            "best_coefficient": best_point["coefficient"],
            "best_fluent_rate": best_point["fluent_mention_rate"],
            "best_mention_rate": best_point["mention_rate"],
            "best_disfluent": best_point["share_disfluent"],
            "best_repeated_phrase": best_point["share_repeated_phrase"],
            "best_log_likelihood": ll_best,
            "points": [{k: v for k, v in p.items() if k != "reports"} for p in add["points"]],
            "examples": {p["coefficient"]: _examples(p["reports"], finding) for p in add["points"]},
            "unsteered_examples": base_neg[:2],
        },
        "remove": {k: v for k, v in remove.items() if k not in ("reports", "unsteered")}
        | {"examples": list(zip(remove.get("unsteered", [])[:2], remove.get("reports", [])[:2],
                                strict=True))},  # fmt: skip
    }


def _examples(reports: list[str], finding: str, n: int = 2) -> list[str]:
    """Up to ``n`` reports, those that mention ``finding`` (positively) first."""
    said = _mentions(reports, finding)
    positive = [r for r, m in zip(reports, said, strict=True) if m]
    return (positive + [r for r in reports if r not in positive])[:n]
