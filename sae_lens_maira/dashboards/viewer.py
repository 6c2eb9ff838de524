"""The offline viewer: static HTML, one page per feature plus a searchable, sortable index.

No CDN and no external fetch: CSS and JS are copied next to the pages, thumbnails are inline PNG
data URIs, heatmaps are drawn on a canvas over the X-ray from JSON embedded in the page (escaped
for ``<script>`` contexts), histograms and logit bars are inline SVG. Jinja2 autoescaping escapes
every string that comes from data.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup
from tqdm.auto import tqdm

from sae_lens_maira.dashboards.explanations import Explanation
from sae_lens_maira.dashboards.export_records import feature_examples
from sae_lens_maira.dashboards.feature_stats import Example, FeatureStats
from sae_lens_maira.processing.roles import Role

ASSETS = ("viewer.css", "viewer.js")


def script_json(obj: Any) -> Markup:
    """JSON safe inside ``<script type="application/json">``: no ``<``, ``>``, ``&`` or line separators."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False)
    for ch, esc in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):  # fmt: skip
        text = text.replace(ch, esc)
    return Markup(text)


def _env() -> jinja2.Environment:
    loader = jinja2.PackageLoader("sae_lens_maira.dashboards", "templates")
    env = jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["script_json"] = script_json
    env.filters["fmt"] = lambda x, n=3: f"{x:.{n}g}" if isinstance(x, float) else str(x)
    return env


def svg_bars(
    xs: Sequence[float], heights: Sequence[float], width: int = 320, height: int = 110
) -> dict[str, Any]:
    """Geometry of a bar chart (one rect per bin) for the SVG macro; axis labels at the ends."""
    n = len(heights)
    top = max(heights) if heights else 0
    bars = []
    if n and top > 0:
        bw = width / n
        for i, (x, h) in enumerate(zip(xs, heights, strict=True)):
            bh = (height - 14) * h / top
            bars.append({"x": round(i * bw, 2), "y": round(height - 14 - bh, 2), "w": round(max(bw - 1, 0.5), 2),
                         "h": round(bh, 2), "title": f"{x:.3g}: {h:g}"})  # fmt: skip
    lo = f"{xs[0]:.3g}" if xs else ""
    hi = f"{xs[-1]:.3g}" if xs else ""
    return {"bars": bars, "width": width, "height": height, "lo": lo, "hi": hi}


def _png_data_uri(image) -> str | None:
    if image is None:
        return None
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _example_view(ex: Example, scale: float) -> dict[str, Any]:
    toks = []
    for i, (t, v, r) in enumerate(zip(ex.tokens, ex.values, ex.roles, strict=True)):
        alpha = min(max(v / scale, 0.0), 1.0) if scale > 0 else 0.0
        role = Role(r).name.lower() if r >= 0 else "gap"
        toks.append({"text": t, "value": v, "alpha": round(alpha, 3), "role": role, "is_max": i == ex.max_index,
                     "is_image": t.startswith("<img")})  # fmt: skip
    return {
        "study": ex.study_id,
        "max_value": ex.max_value,
        "tokens": toks,
        "heatmap": ex.heatmap.to_dict() if ex.heatmap else None,
        "thumbnail": _png_data_uri(ex.thumbnail),
        "bin": (ex.bin_min, ex.bin_max, ex.bin_contains) if ex.kind == "quantile" else None,
    }


def copy_assets(out: Path) -> None:
    """``features/`` and ``static/`` (CSS and JS copied, never linked to a CDN) under ``out``."""
    (out / "features").mkdir(parents=True, exist_ok=True)
    (out / "static").mkdir(exist_ok=True)
    for name in ASSETS:
        src = resources.files("sae_lens_maira.dashboards").joinpath(f"assets/{name}")
        with resources.as_file(src) as path:
            shutil.copyfile(path, out / "static" / name)


def write_viewer(
    stats: FeatureStats,
    out_dir: str | Path,
    explanations: dict[int, Explanation] | None = None,
    features: list[int] | None = None,
    n_top: int = 20,
    n_groups: int = 5,
    per_group: int = 5,
    private: bool = False,
) -> Path:
    """Write ``index.html``, ``features/<i>.html`` and ``static/`` under ``out_dir``; return index path."""
    out = Path(out_dir)
    copy_assets(out)
    env = _env()
    explanations = explanations or {}
    feats = (
        stats.alive_features() if features is None else [stats.check_feature(f) for f in features]
    )
    m = stats.meta
    page = env.get_template("feature.html.j2")
    rows = []
    for f in tqdm(feats, desc="viewer pages", unit="feature"):
        exs = feature_examples(stats, f, n_top, n_groups, per_group, private)
        scale = float(stats.max_act[f]) or 1.0
        top, bot = stats.logits(f)
        exp = explanations.get(f)
        ctx = {
            "meta": m, "f": f, "d_sae": stats.d_sae, "density": float(stats.density[f]),
            "max_act": float(stats.max_act[f]), "mean_act": float(stats.mean_act[f]),
            "explanation": exp, "act_hist": svg_bars(*stats.act_histogram(f)),
            "logit_hist": svg_bars(*stats.logit_histogram(f)),
            **logit_rows(top, bot),
            "correlated": stats.correlated(f)[:10],
            "top": [_example_view(e, scale) for e in exs.top],
            "quantiles": [_example_view(e, scale) for e in exs.quantiles],
            "private": private,
        }  # fmt: skip
        (out / "features" / f"{f}.html").write_text(page.render(**ctx), encoding="utf-8")
        rows.append({"f": f, "density": float(stats.density[f]), "max_act": float(stats.max_act[f]),
                     "explanation": exp.text if exp else "", "score": exp.score if exp else None,
                     "heatmap": any(e.heatmap for e in exs.top)})  # fmt: skip
    return write_index(out, m, rows, stats.d_sae, stats.n_sequences, stats.n_tokens)


def logit_rows(top: list[tuple[str, float]], bot: list[tuple[str, float]]) -> dict[str, Any]:
    """Top and bottom logit effects with their bar lengths (shared scale)."""
    lmax = max([abs(v) for _, v in top + bot] or [1.0])
    return {"top_logits": [(s, v, abs(v) / lmax) for s, v in top],
            "bottom_logits": [(s, v, abs(v) / lmax) for s, v in bot]}  # fmt: skip


def write_index(out: Path, meta, rows: list[dict[str, Any]], n_features: int, n_sequences: int,
                n_tokens: int) -> Path:  # fmt: skip
    index = _env().get_template("index.html.j2").render(
        meta=meta, rows=rows, n_features=n_features, n_sequences=n_sequences, n_tokens=n_tokens
    )
    (out / "index.html").write_text(index, encoding="utf-8")
    return out / "index.html"
