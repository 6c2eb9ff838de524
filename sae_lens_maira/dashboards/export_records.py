"""Per-feature summaries and example records shared by the SAE-Dashboard and Neuronpedia exports."""

from __future__ import annotations

import math
from dataclasses import dataclass

from sae_lens_maira.dashboards.stats_store import Example, FeatureStats

MAX_RECORD_TOKENS = 1024


def r3(x: float) -> float:
    """SAE-Dashboard rounds floats to 3 decimals; JSON has no NaN/inf, so those become 0."""
    return round(float(x), 3) if math.isfinite(x) else 0.0


def windowed(ex: Example, limit: int = MAX_RECORD_TOKENS) -> tuple[list[str], list[float], int]:
    """Tokens, values and max index cut to at most ``limit`` tokens around the max token."""
    n = len(ex.tokens)
    if n <= limit:
        return ex.tokens, ex.values, ex.max_index
    start = min(max(ex.max_index - limit // 2, 0), n - limit)
    return ex.tokens[start : start + limit], ex.values[start : start + limit], ex.max_index - start


def extras(ex: Example) -> dict:
    """The namespaced extra key: heatmap, (pseudonymised) study id, token roles."""
    return {
        "sae_lens_maira": {
            "kind": ex.kind,
            "studyId": ex.study_id,
            "roles": windowed_roles(ex),
            "heatmap": ex.heatmap.to_dict() if ex.heatmap else None,
        }
    }


def windowed_roles(ex: Example) -> list[int]:
    n, limit = len(ex.roles), MAX_RECORD_TOKENS
    if n <= limit:
        return ex.roles
    start = min(max(ex.max_index - limit // 2, 0), n - limit)
    return ex.roles[start : start + limit]


@dataclass
class ExampleSet:
    """The examples a feature's dashboard shows: the top group then activation-interval groups."""

    top: list[Example]
    quantiles: list[Example]  # carry bin_min/bin_max/bin_contains

    @property
    def all(self) -> list[Example]:
        return self.top + self.quantiles


def feature_examples(
    stats: FeatureStats, f: int, n_top: int = 20, n_groups: int = 5, per_group: int = 5,
    private: bool = False,
) -> ExampleSet:  # fmt: skip
    top = stats.top_examples(f, n_top, private=private)
    for ex in top:
        ex.bin_min, ex.bin_max, ex.bin_contains = -1.0, ex.max_value, -1.0
    groups = stats.quantile_groups(f, n_groups, per_group, private=private) if n_groups else []
    return ExampleSet(top, [ex for g in groups for ex in g.examples])


def feature_summary(stats: FeatureStats, f: int) -> dict:
    """SAE-Dashboard's per-feature fields (everything but the activations)."""
    t = stats.tensors
    top, bot = stats.logits(f)
    fx, fy = stats.act_histogram(f)
    lx, ly = stats.logit_histogram(f)
    corr = stats.correlated(f)
    has_align = "align_idx" in t
    return {
        "feature_index": f,
        "neuron_alignment_indices": t["align_idx"][f].tolist() if has_align else [],
        "neuron_alignment_values": [r3(v) for v in t["align_val"][f]] if has_align else [],
        "neuron_alignment_l1": [r3(v) for v in t["align_l1"][f]] if has_align else [],
        # residual-stream activations are not part of the pass: no correlated neurons
        "correlated_neurons_indices": [],
        "correlated_neurons_l1": [],
        "correlated_neurons_pearson": [],
        "correlated_features_indices": [i for i, _, _ in corr],
        "correlated_features_l1": [r3(c) for _, _, c in corr],
        "correlated_features_pearson": [r3(p) for _, p, _ in corr],
        "pos_str": [s for s, _ in top],
        "pos_values": [r3(v) for _, v in top],
        "neg_str": [s for s, _ in bot],
        "neg_values": [r3(v) for _, v in bot],
        "frac_nonzero": float(stats.density[f]),
        "freq_hist_data_bar_values": [r3(x) for x in fx],
        "freq_hist_data_bar_heights": [float(y) for y in fy],
        "logits_hist_data_bar_values": [r3(x) for x in lx],
        "logits_hist_data_bar_heights": [float(y) for y in ly],
        "n_prompts_total": stats.n_sequences,
        "n_tokens_in_prompt": round(stats.n_tokens / max(stats.n_sequences, 1)),
        "dataset": stats.meta.dataset,
        "vector": [],
    }


def exportable_features(
    stats: FeatureStats, features: list[int] | None, min_log_density: float
) -> tuple[list[int], list[int]]:
    """(features to export, skipped features): dead or rarer than ``10**min_log_density``."""
    feats = (
        list(range(stats.d_sae)) if features is None else [stats.check_feature(f) for f in features]
    )
    dens = stats.density
    keep, skip = [], []
    for f in feats:
        d = float(dens[f])
        (keep if d > 0 and math.log10(d) >= min_log_density else skip).append(f)
    return keep, skip
