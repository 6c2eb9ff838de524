"""SAE-Dashboard ``neuronpedia-runner`` output, written from our statistics (its runner needs a
HookedSAETransformer and so cannot drive MAIRA-2)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from sae_lens_maira.dashboards.export_records import (
    exportable_features,
    extras,
    feature_examples,
    feature_summary,
    r3,
    windowed,
)
from sae_lens_maira.dashboards.stats_store import FeatureStats


def saedashboard_dirname(stats: FeatureStats) -> str:
    m = stats.meta
    return f"{m.model_id}_{m.sae_set}_{m.hook_name}_{stats.d_sae}"


def write_saedashboard(
    stats: FeatureStats,
    out_dir: str | Path,
    features: list[int] | None = None,
    batch_size: int = 128,
    n_top: int = 20,
    n_groups: int = 5,
    per_group: int = 5,
    min_log_density: float = -10.0,
    private: bool = False,
) -> Path:
    """Write ``<out>/<model>_<sae_set>_<hook>_<d_sae>/`` with run settings, skipped indexes and
    ``batch-<i>.json`` files of ``batch_size`` features. Returns that folder."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    m = stats.meta
    folder = Path(out_dir) / saedashboard_dirname(stats)
    folder.mkdir(parents=True, exist_ok=True)
    keep, skipped = exportable_features(stats, features, min_log_density)
    settings = {"meta": asdict(m), "stats_config": stats.config, "n_top": n_top, "n_groups": n_groups,
                "per_group": per_group, "private": private, "min_log_density": min_log_density}  # fmt: skip
    (folder / "run_settings.json").write_text(json.dumps(settings, indent=1))
    (folder / "skipped_indexes.json").write_text(json.dumps({
        "model_id": m.model_id, "layer": m.layer, "sae_set": m.sae_set,
        "log_sparsity": min_log_density, "skipped_indexes": skipped,
    }))  # fmt: skip
    batches = [keep[i : i + batch_size] for i in range(0, len(keep), batch_size)]
    bar = tqdm(total=len(keep), desc="SAE-Dashboard export", unit="feature")
    for i, chunk in enumerate(batches):
        feats = []
        for f in chunk:
            row = feature_summary(stats, f)
            row["activations"] = [_activation(ex) for ex in
                                  feature_examples(stats, f, n_top, n_groups, per_group, private).all]  # fmt: skip
            feats.append(row)
            bar.update()
        doc = {"model_id": m.model_id, "layer": m.layer, "sae_set": m.sae_set,
               "sae_id_suffix": m.sae_id_suffix, "features": feats}  # fmt: skip
        (folder / f"batch-{i}.json").write_text(json.dumps(doc, ensure_ascii=False))
    bar.close()
    return folder


def _activation(ex) -> dict:
    tokens, values, idx = windowed(ex)
    return {
        "bin_min": r3(ex.bin_min),
        "bin_max": r3(ex.bin_max),
        "bin_contains": r3(ex.bin_contains) if ex.bin_contains >= 0 else -1,
        "tokens": tokens,
        "values": [r3(v) for v in values],
        "qualifying_token_index": idx,
        **extras(ex),
    }
