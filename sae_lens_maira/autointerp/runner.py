"""Explain and score many features concurrently; results append to a JSONL file, so a rerun resumes."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from sae_lens_maira.autointerp.examples import (
    AutointerpConfig,
    Shown,
    explainer_examples,
    scoring_examples,
    shown,
)
from sae_lens_maira.autointerp.metrics import detection_metrics
from sae_lens_maira.dashboards.explanations import (
    Explanation,
    append_explanation,
    load_explanations,
)
from sae_lens_maira.dashboards.stats_store import FeatureStats


class Explainer(Protocol):
    name: str

    def explain(self, examples: list[Shown], baseline: list[Shown]) -> str: ...


class Scorer(Protocol):
    name: str

    def predict(self, explanation: str, examples: list[Shown]) -> list[bool]: ...


def score_explanation(
    stats: FeatureStats, f: int, explanation: str, scorer: Scorer, cfg: AutointerpConfig
) -> dict:
    """Detection: predictions over held-out activating and non-activating examples, in prompt batches."""
    tests = scoring_examples(stats, f, cfg)
    preds: list[bool] = []
    k = cfg.examples_per_prompt
    for i in range(0, len(tests), k):
        preds += scorer.predict(explanation, tests[i : i + k])
    return detection_metrics(preds, [t.activating for t in tests])


def explain_feature(
    stats: FeatureStats, f: int, explainer: Explainer, cfg: AutointerpConfig
) -> str:
    examples = explainer_examples(stats, f, cfg)
    baseline = [shown(e, stats.slot_names, cfg, mark=False, activating=False)
                for e in stats.non_activating_examples(f, cfg.n_non_activating, private=cfg.private)]  # fmt: skip
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

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        futures = {pool.submit(one, f): f for f in todo}
        for fut in tqdm(
            as_completed(futures), total=len(futures), desc="autointerp", unit="feature"
        ):
            exp = fut.result()
            append_explanation(out, exp)
            done[exp.feature] = exp
    return {f: done[f] for f in feats if f in done}
