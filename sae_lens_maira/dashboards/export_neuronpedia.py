"""Neuronpedia's export/import layout: ``<root>/<modelId>/<layer>-<sourceSet>[__suffix]/`` with the
release, model, source set and source rows plus gzipped JSONL batches of features, activations and
explanations, written so Neuronpedia's importer (``lib/db/import.ts``) accepts them: it creates rows
in file order under foreign keys, so no row names one created later (the model's default source set
and source stay null), creator ids are Neuronpedia user ids (default: the seeded bot user its own
exports use) and explanation types / models are registered names. Unknown keys (our namespaced
``sae_lens_maira`` extras) are dropped by the importer."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from tqdm.auto import tqdm

from sae_lens_maira.dashboards import neuronpedia_rules as rules
from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.export_records import (
    check_private_explanations,
    explanation_names,
    export_meta,
    exportable_features,
    extras,
    feature_examples,
    feature_summary,
    inside,
    model_shape,
    windowed,
)
from sae_lens_maira.dashboards.feature_stats import FeatureStats

_DROP_FROM_FEATURE = ("feature_index", "n_prompts_total", "n_tokens_in_prompt", "dataset", "vector")


def neuronpedia_export_dir(stats: FeatureStats, root: str | Path) -> Path:
    m = stats.meta
    return inside(root, m.model_id, m.source_id)


def write_neuronpedia_export(
    stats: FeatureStats,
    root: str | Path,
    explanations: dict[int, Explanation] | None = None,
    features: list[int] | None = None,
    batch_size: int = 128,
    n_top: int = 20,
    n_groups: int = 5,
    per_group: int = 5,
    min_log_density: float = -10.0,
    private: bool = False,
    n_layers: int | None = None,
    d_model: int | None = None,
    creator_id: str = rules.DEFAULT_CREATOR_ID,
    explanation_method: str | None = None,
    explanation_model: str | None = None,
) -> Path:
    """Write the export for ``stats`` under ``root`` and return its folder.

    Everything is checked before anything is written. ``private`` replaces study text with role
    placeholders, study ids with pseudonyms, the dataset and free-text descriptions with neutral
    text, drops X-ray thumbnails (the patch-grid heatmaps stay: they are activations, not images)
    and refuses explanations not written in private mode. ``explanation_method`` /
    ``explanation_model`` must be names Neuronpedia has registered (default: the method
    ``np_max-act-logits`` and each explanation's own explainer, which must then be registered).
    """
    n_layers, d_model = model_shape(stats.meta, n_layers, d_model)  # default: what collect saw
    m = export_meta(stats, private, n_layers, d_model)
    creator = rules.check_creator_id(creator_id)
    explanations = explanations or {}
    check_private_explanations(explanations, private)
    names = {f: explanation_names(e, explanation_method, explanation_model)
             for f, e in explanations.items()}  # fmt: skip
    keep, _ = exportable_features(stats, features, min_log_density)
    out = neuronpedia_export_dir(stats, root)
    for sub in ("features", "activations", "explanations"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for old in (out / sub).glob("batch-*.jsonl.gz"):
            old.unlink()  # a rerun with fewer features must not leave stale batches behind
    _write_rows(out / "release.jsonl", [{
        "name": m.release, "description": m.description, "creatorName": m.creator,
        "creatorId": creator, "visibility": "PUBLIC",
        "urls": [f"https://huggingface.co/{m.hf_repo_id}"] if m.hf_repo_id else [],
        "defaultSourceSetName": m.source_set, "defaultSourceId": m.source_id,  # plain strings
    }])  # fmt: skip
    _write_rows(out / "model.jsonl", [{
        "id": m.model_id, "instruct": True, "creatorId": creator, "displayName": m.model_id,
        "displayNameShort": m.model_id, "tlensId": None, "dimension": d_model, "visibility": "PUBLIC",
        # foreign keys to rows created after this one (Model_defaultSourceSetName_id_fkey)
        "defaultSourceSetName": None, "defaultSourceId": None,
        "inferenceEnabled": False, "layers": n_layers, "neuronsPerLayer": d_model, "owner": m.creator,
        "website": None,
    }])  # fmt: skip
    _write_rows(out / "sourceset.jsonl", [{
        "modelId": m.model_id, "name": m.source_set, "creatorId": creator, "hasDashboards": True,
        "visibility": "PUBLIC", "description": m.description, "type": m.hook_name.split(".")[-1],
        "creatorName": m.creator, "urls": [], "releaseName": m.release, "showCorrelated": True,
    }])  # fmt: skip
    _write_rows(out / "source.jsonl", [{
        "id": m.source_id, "modelId": m.model_id, "setName": m.source_set, "creatorId": creator,
        "hasDashboards": True, "inferenceEnabled": False,
        "saelensConfig": json.dumps(m.saelens_config) if m.saelens_config else None,
        "saelensRelease": m.saelens_release, "saelensSaeId": m.saelens_sae_id,
        "hfRepoId": m.hf_repo_id, "hfFolderId": m.hf_folder_id, "visibility": "PUBLIC",
        "num_prompts": stats.n_sequences,
        "num_tokens_in_prompt": round(stats.n_tokens / max(stats.n_sequences, 1)),
        "dataset": m.dataset, "notes": None,
    }])  # fmt: skip
    bar = tqdm(total=len(keep), desc="Neuronpedia export", unit="feature")
    common = {"modelId": m.model_id, "layer": m.source_id}
    for i in range(0, len(keep), batch_size):
        feat_rows, act_rows, exp_rows = [], [], []
        for f in keep[i : i + batch_size]:
            summary = feature_summary(stats, f, m)
            row = {**common, "index": str(f), "creatorId": creator,
                   "sourceSetName": m.source_set,
                   "maxActApprox": float(stats.max_act[f]), "hasVector": False, "vector": [],
                   "hookName": m.hook_name, "decoder_weights_dist": []}  # fmt: skip
            row |= {k: v for k, v in summary.items() if k not in _DROP_FROM_FEATURE}
            feat_rows.append(row)
            for j, ex in enumerate(
                feature_examples(stats, f, n_top, n_groups, per_group, private).all
            ):
                tokens, values, idx = windowed(ex)
                act = {**common, "id": f"{m.model_id}@{m.source_id}:{f}:{ex.kind}{j}",
                       "index": str(f), "tokens": tokens, "values": values, "maxValue": max(values),
                       "maxValueTokenIndex": idx, "minValue": min(values), "creatorId": creator,
                       "dataSource": m.dataset or None, "dataIndex": ex.study_id,
                       "binMin": ex.bin_min, "binMax": ex.bin_max, "binContains": ex.bin_contains,
                       "qualifyingTokenIndex": idx}  # fmt: skip
                act_rows.append(act | extras(ex))
            if f in explanations:
                e = explanations[f]
                type_name, model_name = names[f]
                exp_rows.append({**common, "id": f"{m.model_id}@{m.source_id}:{f}:explanation",
                                 "index": str(f), "description": e.text[:512], "authorId": creator,
                                 "typeName": type_name, "explanationModelName": model_name,
                                 "embedding": None,
                                 "notes": json.dumps({"detection": e.detection, "scorer": e.scorer}),
                                 "sae_lens_maira": {"detection": e.detection, "scorer": e.scorer,
                                                    "explainer": e.explainer, "method": e.method}})  # fmt: skip
            bar.update()
        n = i // batch_size
        _write_gz(out / "features" / f"batch-{n}.jsonl.gz", feat_rows)
        _write_gz(out / "activations" / f"batch-{n}.jsonl.gz", act_rows)
        if exp_rows:
            _write_gz(out / "explanations" / f"batch-{n}.jsonl.gz", exp_rows)
    bar.close()
    return out


def _write_rows(path: Path, rows: list[dict]) -> None:
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )


def _write_gz(path: Path, rows: list[dict]) -> None:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
