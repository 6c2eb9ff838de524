"""Per-feature summaries and example records shared by the SAE-Dashboard and Neuronpedia exports."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sae_lens_maira.dashboards import neuronpedia_rules as rules
from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.feature_stats import Example, FeatureStats
from sae_lens_maira.dashboards.sequence_batch import DashboardMeta
from sae_lens_maira.dashboards.stats_pass import SAEDASHBOARD_HIST_BINS

MAX_RECORD_TOKENS = 1024
PRIVATE = "(private)"
_DATASET_KEYS = re.compile(r"dataset|data_path|path|dir", re.I)


#: MAIRA-2's own shape (Vicuna-7B), for its statistics collected before ``collect`` recorded one
MAIRA2_SHAPE = (32, 4096)


def model_shape(meta: DashboardMeta, n_layers: int | None = None, d_model: int | None = None,
                required: bool = True) -> tuple[int | None, int | None]:  # fmt: skip
    """The model row's layer count and width: as given, else as ``collect`` recorded them, else
    MAIRA-2's own for ``maira-2`` statistics. Never another model's numbers by default."""
    n = n_layers if n_layers is not None else meta.n_layers
    d = d_model if d_model is not None else meta.d_model
    if (n is None or d is None) and _norm(meta.model_id) == _norm("maira-2"):
        n, d = (n if n is not None else MAIRA2_SHAPE[0]), (d if d is not None else MAIRA2_SHAPE[1])
    if required and (n is None or d is None):
        raise ValueError(
            f"the statistics of model {meta.model_id!r} do not record its layer count and width "
            "(collected by an older version); pass --n-layers and --d-model"
        )
    return n, d


def export_meta(stats: FeatureStats, private: bool, n_layers: int | None = None,
                d_model: int | None = None) -> DashboardMeta:  # fmt: skip
    """The statistics' metadata checked for an export (ids, folder names, that the SAE belongs to
    this model); in private mode every free-text field that could carry study data is replaced."""
    m = stats.meta
    rules.check_model_id(m.model_id)
    rules.check_source_set(m.source_set)
    rules.check_layer(m.layer, n_layers)
    for value, what in ((m.model_id, "model_id"), (m.sae_set, "sae_set"),
                        (m.hook_name, "hook_name"), (m.source_id, "source id")):  # fmt: skip
        rules.safe_name(value, what)
    if m.d_sae and m.d_sae != stats.d_sae:
        raise ValueError(f"stats.json says d_sae={m.d_sae} but the statistics hold {stats.d_sae}")
    hook_layer = re.match(r"blocks\.(\d+)\.", m.hook_name)
    if hook_layer and int(hook_layer.group(1)) != m.layer:
        raise ValueError(f"hook {m.hook_name!r} is not at layer {m.layer}: fix stats.json")
    cfg = m.saelens_config or {}
    sae_model = cfg.get("model_name") or (cfg.get("metadata") or {}).get("model_name")
    if sae_model and _norm(sae_model) != _norm(m.model_id):
        raise ValueError(
            f"the SAE was trained on {sae_model!r}, but this export is for model {m.model_id!r}: "
            "export it under its own model, or collect statistics with an SAE of this model"
        )
    d_in = cfg.get("d_in")
    if d_in and d_model and int(d_in) != int(d_model):
        raise ValueError(
            f"the SAE reads {d_in}-dim activations but the model's d_model is {d_model}: it is an "
            "SAE of another model (or pass the right --d-model)"
        )
    if not private:
        return m
    secrets = [x for x in (m.dataset, m.description) if isinstance(x, str) and len(x) >= 3]
    return replace(m, dataset=PRIVATE, description=f"SAE on {m.model_id} layer {m.layer}",
                   saelens_config=scrub(cfg, secrets))  # fmt: skip


def scrub(value: Any, secrets: list[str]) -> Any:
    """``value`` with every entry under a dataset/path-like key (at any depth) and every string that
    contains one of ``secrets`` (the dataset name, free-text description) replaced by PRIVATE."""
    if isinstance(value, dict):
        return {k: PRIVATE if _DATASET_KEYS.search(str(k)) else scrub(v, secrets)
                for k, v in value.items()}  # fmt: skip
    if isinstance(value, list):
        return [scrub(v, secrets) for v in value]
    if isinstance(value, str) and any(s in value for s in secrets):
        return PRIVATE
    return value


def _norm(name: str) -> str:
    return name.rsplit("/", 1)[-1].lower()


def inside(root: str | Path, *parts: str) -> Path:
    """``root/parts...``, refused unless it stays inside ``root``."""
    base = Path(root).resolve()
    out = base.joinpath(*(rules.safe_name(p, "folder name") for p in parts)).resolve()
    if not out.is_relative_to(base):
        raise ValueError(f"{out} is outside {base}; fix the ids in stats.json")
    return out


def check_private_explanations(explanations: dict[int, Explanation] | None, private: bool) -> None:
    """A private export may only carry explanations written from private examples."""
    if not private or not explanations:
        return
    leaky = sorted(f for f, e in explanations.items() if not e.private)
    if leaky:
        raise ValueError(
            f"{len(leaky)} explanations (features {leaky[:5]}...) were written from non-private "
            "examples and may quote study text: rerun `sae-lens-maira autointerp --private`, or "
            "export without --explanations"
        )


def explanation_names(e: Explanation, method: str | None, model: str | None) -> tuple[str, str]:
    """Registered (explanation type, explanation model) for ``e``; refused locally otherwise."""
    m = method or (
        e.method if e.method in rules.EXPLANATION_TYPES else rules.DEFAULT_EXPLANATION_TYPE
    )
    return rules.check_explanation_type(m), rules.check_explanation_model(model or e.explainer)


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


def example_extras(ex: Example) -> dict:
    """What our viewer shows beyond SAE-Dashboard's fields: kind, (pseudonymised) study id, token
    roles and the patch-grid heatmap, aligned with the windowed record."""
    return {
        "kind": ex.kind,
        "studyId": ex.study_id,
        "roles": windowed_roles(ex),
        "heatmap": ex.heatmap.to_dict() if ex.heatmap else None,
    }


def extras(ex: Example) -> dict:
    """The namespaced extra key of a Neuronpedia activation row (its importer drops it)."""
    return {"sae_lens_maira": example_extras(ex)}


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
    """SAE-Dashboard's groups: the top group (``bin_min = bin_contains = -1`` and ``bin_max`` the
    feature's max, as its title ``TOP ACTIVATIONS<br>MAX = x`` is parsed) then the intervals from
    the highest down (``sequence_data_generator.get_indices_dict``)."""
    top = stats.top_examples(f, n_top, private=private)
    feature_max = float(stats.max_act[f])
    for ex in top:
        ex.bin_min, ex.bin_max, ex.bin_contains = -1.0, feature_max, -1.0
    groups = stats.quantile_groups(f, n_groups, per_group, private=private) if n_groups else []
    return ExampleSet(top, [ex for g in reversed(groups) for ex in g.examples])


def feature_summary(stats: FeatureStats, f: int, meta: DashboardMeta | None = None) -> dict:
    """SAE-Dashboard's per-feature fields (everything but the activations); ``meta`` is the
    export's checked (in private mode scrubbed) metadata."""
    t = stats.tensors
    top, bot = stats.logits(f)
    fx, fy = stats.dashboard_histogram(f, SAEDASHBOARD_HIST_BINS)
    lx, ly = stats.logit_histogram(f)
    corr = stats.correlated(f)
    has_align = "align_idx" in t
    return {
        "feature_index": f,
        "neuron_alignment_indices": t["align_idx"][f].tolist() if has_align else [],
        "neuron_alignment_values": [r3(v) for v in t["align_val"][f].tolist()] if has_align else [],
        "neuron_alignment_l1": [r3(v) for v in t["align_l1"][f].tolist()] if has_align else [],
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
        "freq_hist_data_bar_heights": [int(y) for y in fy],  # torch.histc(...).int()
        "logits_hist_data_bar_values": [r3(x) for x in lx],
        "logits_hist_data_bar_heights": [int(y) for y in ly],
        "n_prompts_total": stats.n_sequences,
        "n_tokens_in_prompt": round(stats.n_tokens / max(stats.n_sequences, 1)),
        "dataset": (meta or stats.meta).dataset,
        "decoder_weights_dist": [],  # attention-head allocation: none for a residual-stream SAE
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
