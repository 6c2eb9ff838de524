"""Explain and score many features concurrently; results append to a JSONL file, so a rerun resumes."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from sae_lens_maira.autointerp.examples import (
    AutointerpConfig,
    Shown,
    scoring_examples,
    shown,
    split_examples,
)
from sae_lens_maira.autointerp.metrics import detection_metrics
from sae_lens_maira.dashboards.explanations import (
    Explanation,
    append_explanation,
    load_explanations,
)
from sae_lens_maira.dashboards.feature_stats import FeatureStats
from sae_lens_maira.http_retry import HTTPRequestError

logger = logging.getLogger(__name__)


class AutointerpStopped(RuntimeError):
    """A request failed for good (not transient): no further features were scheduled."""

    def __init__(self, feature: int, error: HTTPRequestError, n_done: int, n_unscheduled: int):
        super().__init__(
            f"autointerp stopped at feature {feature}: {error}. {n_done} features are saved; "
            f"{n_unscheduled} were not started. Fix the cause (endpoint, model name, key) and rerun: "
            "the run resumes from the output file"
        )
        self.feature, self.error, self.n_done, self.n_unscheduled = (
            feature, error, n_done, n_unscheduled,
        )  # fmt: skip


class Explainer(Protocol):
    name: str

    def explain(self, examples: list[Shown], baseline: list[Shown]) -> str: ...


class Scorer(Protocol):
    name: str

    def predict(self, explanation: str, examples: list[Shown]) -> list[bool]: ...


def score_explanation(
    stats: FeatureStats, f: int, explanation: str, scorer: Scorer, cfg: AutointerpConfig
) -> dict:
    """Detection: predictions over held-out activating and non-activating examples, in prompt batches.

    Below the configured minimum of held-out examples the result is ``scored: False`` with the
    reason and counts, and no balanced accuracy (never a score from one class alone).
    """
    split = split_examples(stats, f, cfg)
    reason = split.shortfall(cfg)
    if reason is not None:
        return {"scored": False, "reason": reason, "n_activating": len(split.test_activating),
                "n_non_activating": len(split.test_non_activating)}  # fmt: skip
    tests = scoring_examples(stats, f, cfg)
    preds: list[bool] = []
    k = cfg.examples_per_prompt
    for i in range(0, len(tests), k):
        preds += scorer.predict(explanation, tests[i : i + k])
    return {"scored": True, **detection_metrics(preds, [t.activating for t in tests])}


def explain_feature(
    stats: FeatureStats, f: int, explainer: Explainer, cfg: AutointerpConfig
) -> str:
    split = split_examples(stats, f, cfg)
    examples = [shown(e, stats.slot_names, cfg, mark=True, activating=True) for e in split.explain]
    baseline = [shown(e, stats.slot_names, cfg, mark=False, activating=False) for e in split.baseline]
    return explainer.explain(examples, baseline)


def run_autointerp(
    stats: FeatureStats,
    out_path: str | Path,
    explainer: Explainer,
    scorer: Scorer,
    features: Sequence[int] | None = None,
    cfg: AutointerpConfig | None = None,
    concurrency: int = 8,
) -> dict[int, Explanation]:
    """Explain and score ``features`` (default: all that fire), skipping those already in ``out_path``."""
    cfg = cfg or AutointerpConfig()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = load_explanations(out) if out.is_file() else {}
    feats = (
        stats.alive_features() if features is None else [stats.check_feature(f) for f in features]
    )
    todo = [f for f in feats if f not in done]

    def one(f: int) -> Explanation:
        text = explain_feature(stats, f, explainer, cfg)
        det = score_explanation(stats, f, text, scorer, cfg)
        return Explanation(f, text, explainer.name, scorer.name, detection=det, private=cfg.private)

    stop: tuple[int, HTTPRequestError] | None = None
    retry_later: list[int] = []
    queue = iter(todo)
    width = max(1, concurrency)
    # Features are submitted as workers free up (never all at once), so a failure for good stops
    # the schedule: only requests already in flight finish, and their results are kept.
    with ThreadPoolExecutor(max_workers=width) as pool, tqdm(
        total=len(todo), desc="autointerp", unit="feature"
    ) as bar:
        running = {pool.submit(one, f): f for f in itertools.islice(queue, width)}
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                f = running.pop(fut)
                bar.update()
                try:
                    exp = fut.result()
                except HTTPRequestError as err:
                    if err.transient:  # retries exhausted: left for the rerun, keep going
                        retry_later.append(f)
                    elif stop is None:  # the first failure for good: schedule nothing more
                        stop = (f, err)
                    continue
                append_explanation(out, exp)
                done[exp.feature] = exp
            if stop is None:
                for f in itertools.islice(queue, width - len(running)):
                    running[pool.submit(one, f)] = f
    if stop is not None:
        unscheduled = sum(1 for _ in queue)
        raise AutointerpStopped(stop[0], stop[1], sum(f in done for f in todo), unscheduled)
    if retry_later:
        logger.warning(
            "autointerp: %d features failed with transient errors after all retries (%s); "
            "rerun to retry them", len(retry_later), sorted(retry_later)[:20],
        )
    return {f: done[f] for f in feats if f in done}
