"""The demo's steering study: does a feature change the *finding* the model reports, both ways?

1. Candidates for ``steer.finding``: features that read it (detectors on image/prompt positions
   and on report positions) and features whose decoder direction raises its words' logits.
2. Screening on training studies, by causal effect on the labelled outcome
   (:func:`~sae_lens_maira.steering.screening.screen_candidates`: clamped at multiples of its
   typical activation on studies without the finding, clamped to zero on studies whose report
   states it); the candidate with the largest sum is kept.
3. The kept feature on held-out studies: the same two sweeps, with fluency (repeated phrases,
   the word stuffed in) and the mean log-likelihood of the reports under the unsteered model.

The mechanisms live in :mod:`sae_lens_maira.steering.screening`; this module picks the studies
and candidates, logs and returns the facts the summary and report card read.
"""

from __future__ import annotations

from typing import Any

from sae_lens_maira.steering.fluency import fluency_summary, mean_log_likelihood
from sae_lens_maira.steering.screening import (
    ReportGenerator,
    add_sweep,
    examples,
    feature_scales,
    mentions,
    remove_sweep,
    screen_candidates,
)
from sae_lens_maira.steering.settings import SteerSettings


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
    cache = datasets.Dataset.load_from_disk(str(exp.path(exp.section("cache")["output_dir"])))
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

    gen = ReportGenerator(model, processor, sae, spec, hook_name)
    n_screen = settings.steer_screen_studies
    screen_neg = [s for s in train if not s.labels.get(finding)][:n_screen]
    screen_pos_all = [s for s in train if s.labels.get(finding)][: 2 * n_screen]

    def log(f: int, row: dict[str, Any]) -> None:
        print(f"   screening feature {f} ({kinds[f]}): {row['add']:.0%} of "
              f"training studies without it state {finding} fluently (x{row['add_coefficient']:g} at "
              f"{row['where']}); suppressing removes it from "
              + ("n/a" if row["remove"] is None else f"{row['remove']:.0%}")
              + f" of {row['n_remove']}")  # fmt: skip

    best, screening = screen_candidates(gen, candidates, scales, finding, screen_neg, screen_pos_all, log)
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
            "unsteered_mention_rate": sum(mentions(base_neg, finding)) / max(1, len(base_neg)),
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
            "examples": {p["coefficient"]: examples(p["reports"], finding) for p in add["points"]},
            "unsteered_examples": base_neg[:2],
        },
        "remove": {k: v for k, v in remove.items() if k not in ("reports", "unsteered")}
        | {"examples": list(zip(remove.get("unsteered", [])[:2], remove.get("reports", [])[:2],
                                strict=True))},  # fmt: skip
    }
