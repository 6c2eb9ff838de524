"""The offline viewer drawn from an SAE-Dashboard export folder (``batch-<i>.json`` plus our
``extras-<i>.json`` sidecars and ``images/``), for when only the export travels, not the statistics.

A folder SAE-Dashboard wrote itself (no sidecars) renders too, without roles, heatmaps or images.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.sequence_batch import DashboardMeta
from sae_lens_maira.dashboards.viewer import (
    _env,
    copy_assets,
    logit_rows,
    svg_bars,
    write_index,
)
from sae_lens_maira.processing.roles import Role


def _role_name(r: int | None) -> str:
    if r is None:
        return "unknown"
    return Role(r).name.lower() if r >= 0 else "gap"


def _thumbnail(folder: Path, name: str | None) -> str | None:
    if not name:
        return None
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()) or not path.is_file():
        raise ValueError(f"sidecar names image {name!r}, which is not a file inside {folder}")
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def _example_view(folder: Path, act: dict[str, Any], side: dict[str, Any] | None,
                  scale: float, top: bool) -> dict[str, Any]:  # fmt: skip
    roles = side["roles"] if side else [None] * len(act["tokens"])
    toks = []
    for i, (t, v, r) in enumerate(zip(act["tokens"], act["values"], roles, strict=True)):
        alpha = min(max(v / scale, 0.0), 1.0) if scale > 0 else 0.0
        toks.append({"text": t, "value": v, "alpha": round(alpha, 3), "role": _role_name(r),
                     "is_max": i == act["qualifying_token_index"], "is_image": t.startswith("<img")})  # fmt: skip
    return {
        "study": side["studyId"] if side else "",
        "max_value": max(act["values"]),
        "tokens": toks,
        "heatmap": side["heatmap"] if side else None,
        "thumbnail": _thumbnail(folder, side.get("thumbnail")) if side else None,
        "bin": None if top else (act["bin_min"], act["bin_max"], act["bin_contains"]),
    }


def _read_folder(folder: Path) -> tuple[DashboardMeta, bool, list[tuple[dict, dict | None]]]:
    settings = json.loads((folder / "run_settings.json").read_text()) if (
        folder / "run_settings.json").is_file() else {}  # fmt: skip
    batches = sorted(folder.glob("batch-*.json"), key=lambda p: int(p.stem.split("-")[1]))
    if not batches:
        raise FileNotFoundError(
            f"{folder} holds no batch-<i>.json: not an SAE-Dashboard export (write one with "
            "`sae-lens-maira dashboards export --format saedashboard`)"
        )
    feats: list[tuple[dict, dict | None]] = []
    meta: DashboardMeta | None = None
    for path in batches:
        batch = json.loads(path.read_text())
        side_path = folder / ("extras-" + path.name.removeprefix("batch-"))
        side = json.loads(side_path.read_text()) if side_path.is_file() else None
        if side is not None and [f["feature_index"] for f in side["features"]] != [
            f["feature_index"] for f in batch["features"]
        ]:
            raise ValueError(f"{side_path.name} does not line up with {path.name}: rewrite both")
        if meta is None:
            meta = DashboardMeta.from_dict({**settings.get("meta", {}), "model_id": batch["model_id"],
                                            "layer": batch["layer"], "sae_set": batch["sae_set"],
                                            "sae_id_suffix": batch["sae_id_suffix"]})  # fmt: skip
        sides = side["features"] if side else [None] * len(batch["features"])
        feats += list(zip(batch["features"], sides, strict=True))
    assert meta is not None  # set by the first of the (non-empty) batches
    return meta, bool(settings.get("private")), feats


def write_viewer_from_saedashboard(
    folder: str | Path, out_dir: str | Path, explanations: dict[int, Explanation] | None = None
) -> Path:
    """Write the viewer's pages for every feature of the SAE-Dashboard folder; return index path."""
    folder, out = Path(folder), Path(out_dir)
    meta, private, feats = _read_folder(folder)
    copy_assets(out)
    page = _env().get_template("feature.html.j2")
    explanations = explanations or {}
    d_sae = meta.d_sae or max(f["feature_index"] for f, _ in feats) + 1
    rows = []
    n_prompts = n_tokens = 0
    for feat, side in feats:
        f = feat["feature_index"]
        acts = feat["activations"]
        side_acts = side["activations"] if side else [None] * len(acts)
        if len(side_acts) != len(acts):
            raise ValueError(f"feature {f}: the sidecar has {len(side_acts)} records for {len(acts)}")
        max_act = side["max_act"] if side else max([max(a["values"]) for a in acts] or [0.0])
        scale = max_act or 1.0
        views = [(_example_view(folder, a, s, scale, a["bin_min"] == -1), a["bin_min"] == -1)
                 for a, s in zip(acts, side_acts, strict=True)]  # fmt: skip
        exp = explanations.get(f)
        correlated = list(zip(feat["correlated_features_indices"], feat["correlated_features_pearson"],
                              feat["correlated_features_l1"], strict=False))[:10]  # fmt: skip
        ctx = {
            "meta": meta, "f": f, "d_sae": d_sae, "density": feat["frac_nonzero"],
            "max_act": max_act, "mean_act": side["mean_act"] if side else None,
            "explanation": exp,
            "act_hist": svg_bars(feat["freq_hist_data_bar_values"], feat["freq_hist_data_bar_heights"]),
            "logit_hist": svg_bars(feat["logits_hist_data_bar_values"],
                                   feat["logits_hist_data_bar_heights"]),
            **logit_rows(list(zip(feat["pos_str"], feat["pos_values"], strict=True)),
                         list(zip(feat["neg_str"], feat["neg_values"], strict=True))),
            "correlated": correlated,
            "top": [v for v, is_top in views if is_top],
            "quantiles": [v for v, is_top in views if not is_top],
            "private": private,
        }  # fmt: skip
        (out / "features" / f"{f}.html").write_text(page.render(**ctx), encoding="utf-8")
        rows.append({"f": f, "density": feat["frac_nonzero"], "max_act": max_act,
                     "explanation": exp.text if exp else "", "score": exp.score if exp else None,
                     "heatmap": any(v["heatmap"] for v, is_top in views if is_top)})  # fmt: skip
        n_prompts, n_tokens = feat["n_prompts_total"], feat["n_prompts_total"] * feat["n_tokens_in_prompt"]
    return write_index(out, meta, rows, d_sae, n_prompts, n_tokens)
