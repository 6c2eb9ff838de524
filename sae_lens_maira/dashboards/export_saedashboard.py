"""SAE-Dashboard ``neuronpedia-runner`` output, written from our statistics (its runner needs a
HookedSAETransformer and so cannot drive MAIRA-2).

``batch-<i>.json`` holds exactly the fields of SAE-Dashboard 0.8's ``NeuronpediaDashboardBatch``
(which raises TypeError on any other key) so that ``NeuronpediaDashboardBatch(**json)`` and
Neuronpedia's ``convert-saedashboard-to-neuronpedia-export.py`` read it. What only our viewer uses
(patch heatmaps, token roles, study ids, X-ray thumbnails) goes to the sidecar
``extras-<i>.json`` next to it, its activations in the batch's order; thumbnails are PNG files
under ``images/``. The sidecar's name does not start with ``batch-``, which the convert script
takes for batch files.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm.auto import tqdm

from sae_lens_maira.dashboards.export_records import (
    PRIVATE,
    example_extras,
    export_meta,
    exportable_features,
    feature_examples,
    feature_summary,
    inside,
    model_shape,
    r3,
    windowed,
)
from sae_lens_maira.dashboards.feature_stats import Example, FeatureStats
from sae_lens_maira.dashboards.sequence_batch import DashboardMeta

EXTRAS_FORMAT = "sae-lens-maira-saedashboard-extras/1"
IMAGE_DIR = "images"


def saedashboard_dirname(meta: DashboardMeta, d_sae: int) -> str:
    return f"{meta.model_id}_{meta.sae_set}_{meta.hook_name}_{d_sae}"


def extras_name(batch_name: str) -> str:
    """``batch-3.json`` -> ``extras-3.json``: the sidecar of a batch file."""
    return "extras-" + batch_name.removeprefix("batch-")


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
    n_layers: int | None = None,
    d_model: int | None = None,
) -> Path:
    """Write ``<out>/<model>_<sae_set>_<hook>_<d_sae>/`` with run settings, skipped indexes,
    ``batch-<i>.json`` files of ``batch_size`` features and their sidecars. Returns that folder.

    ``private`` replaces study text and ids (see ``FeatureStats``), the dataset and free-text
    metadata, and writes no thumbnails."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_layers, d_model = model_shape(stats.meta, n_layers, d_model, required=False)
    m = export_meta(stats, private, n_layers, d_model)  # ids, folder names, SAE of this model
    folder = inside(out_dir, saedashboard_dirname(m, stats.d_sae))
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("batch-*.json"), *folder.glob("extras-*.json")]:
        old.unlink()  # a rerun with fewer features must not leave stale batches behind
    keep, skipped = exportable_features(stats, features, min_log_density)
    config = dict(stats.config)
    settings = {"meta": asdict(m), "stats_config": config, "n_top": n_top, "n_groups": n_groups,
                "per_group": per_group, "private": private, "min_log_density": min_log_density}  # fmt: skip
    (folder / "run_settings.json").write_text(json.dumps(settings, indent=1))
    # SAE-Dashboard writes the layer as a string here (NeuronpediaRunner.record_skipped_features)
    (folder / "skipped_indexes.json").write_text(json.dumps({
        "model_id": m.model_id, "layer": str(m.layer), "sae_set": m.sae_set,
        "log_sparsity": min_log_density, "skipped_indexes": skipped,
    }))  # fmt: skip
    batches = [keep[i : i + batch_size] for i in range(0, len(keep), batch_size)]
    bar = tqdm(total=len(keep), desc="SAE-Dashboard export", unit="feature")
    for i, chunk in enumerate(batches):
        feats, side = [], []
        for f in chunk:
            row = feature_summary(stats, f, m)
            exs = feature_examples(stats, f, n_top, n_groups, per_group, private).all
            row["activations"] = [_activation(ex) for ex in exs]
            feats.append(row)
            side.append({"feature_index": f, "max_act": r3(float(stats.max_act[f])),
                         "mean_act": r3(float(stats.mean_act[f])),
                         "activations": [_side_activation(ex, folder, private) for ex in exs]})  # fmt: skip
            bar.update()
        doc = {"model_id": m.model_id, "layer": m.layer, "sae_set": m.sae_set,
               "sae_id_suffix": m.sae_id_suffix, "features": feats}  # fmt: skip
        name = f"batch-{i}.json"
        (folder / name).write_text(json.dumps(doc, ensure_ascii=False))
        extras = {"format": EXTRAS_FORMAT, "batch": name, "grid": list(stats.grid),
                  "private": private, "features": side}  # fmt: skip
        (folder / extras_name(name)).write_text(json.dumps(extras, ensure_ascii=False))
    bar.close()
    return folder


def _activation(ex: Example) -> dict[str, Any]:
    """One record with SAE-Dashboard's fields only (floats rounded to 3 decimals as it does)."""
    tokens, values, idx = windowed(ex)
    return {
        "bin_min": r3(ex.bin_min),
        "bin_max": r3(ex.bin_max),
        # its group titles say "MAX = {:.3f}", "INTERVAL {:.3f} - {:.3f}<br>CONTAINS {:.3%}"
        "bin_contains": round(ex.bin_contains, 5) if ex.bin_contains >= 0 else -1,
        "tokens": tokens,
        "values": [r3(v) for v in values],
        "qualifying_token_index": idx,
    }


def _side_activation(ex: Example, folder: Path, private: bool) -> dict[str, Any]:
    out = example_extras(ex)
    out["thumbnail"] = None
    if ex.heatmap is not None and ex.thumbnail is not None and not private:
        name = f"{ex.seq}-{ex.heatmap.image}.png"
        path = folder / IMAGE_DIR / name
        if not path.is_file():
            path.parent.mkdir(exist_ok=True)
            _save_png(ex.thumbnail, path)
        out["thumbnail"] = f"{IMAGE_DIR}/{name}"
    if private:
        out["studyId"] = out["studyId"] if out["studyId"].startswith("study-") else PRIVATE
    return out


def _save_png(image: Image.Image, path: Path) -> None:
    image.save(path, format="PNG", optimize=True)
