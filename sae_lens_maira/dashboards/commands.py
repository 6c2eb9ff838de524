"""What the ``sae-lens-maira dashboards`` subcommands do, one function each (the CLI only parses)."""

from __future__ import annotations

from pathlib import Path

from sae_lens_maira.dashboards.explanations import load_explanations
from sae_lens_maira.dashboards.feature_stats import FeatureStats


def parse_features(spec: str | None) -> list[int] | None:
    """``"0,3,10-19"`` -> [0, 3, 10, ..., 19]; None or "" -> None (all features)."""
    if not spec:
        return None
    out: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                a, b = (int(x) for x in part.split("-", 1))
                out.extend(range(a, b + 1))
            elif part:
                out.append(int(part))
        except ValueError:
            raise ValueError(
                f"bad feature list {spec!r}: use numbers and ranges like 0,3,10-19"
            ) from None
    return out


def export(
    stats_dir: str | Path, out: str | Path, fmt: str = "both", explanations: str | Path | None = None,
    features: str | None = None, private: bool = False, batch_size: int = 128,
    n_layers: int | None = None, d_model: int | None = None, creator_id: str | None = None,
    explanation_method: str | None = None, explanation_model: str | None = None,
) -> list[Path]:  # fmt: skip
    """Write the Neuronpedia export and/or SAE-Dashboard batches; returns the folders written."""
    from sae_lens_maira.dashboards.export_neuronpedia import write_neuronpedia_export
    from sae_lens_maira.dashboards.export_saedashboard import write_saedashboard

    if fmt not in ("neuronpedia", "saedashboard", "both"):
        raise ValueError(f"unknown export format {fmt!r}; use neuronpedia, saedashboard or both")
    stats = FeatureStats.load(stats_dir)
    exps = load_explanations(explanations) if explanations else None
    feats = parse_features(features)
    done = []
    if fmt in ("neuronpedia", "both"):
        from sae_lens_maira.dashboards.neuronpedia_rules import DEFAULT_CREATOR_ID

        done.append(write_neuronpedia_export(
            stats, Path(out) / "exports", exps, feats, batch_size, private=private,
            n_layers=n_layers, d_model=d_model, creator_id=creator_id or DEFAULT_CREATOR_ID,
            explanation_method=explanation_method, explanation_model=explanation_model,
        ))  # fmt: skip
    if fmt in ("saedashboard", "both"):
        done.append(write_saedashboard(stats, Path(out) / "saedashboard", feats, batch_size,
                                       private=private, n_layers=n_layers, d_model=d_model))  # fmt: skip
    return done


def viewer(
    stats_dir: str | Path | None, out: str | Path, explanations: str | Path | None = None,
    features: str | None = None, private: bool = False, saedashboard: str | Path | None = None,
) -> Path:  # fmt: skip
    """The offline viewer from saved statistics or from an SAE-Dashboard export folder."""
    if (stats_dir is None) == (saedashboard is None):
        raise ValueError("give either --stats (statistics) or --saedashboard (an export folder)")
    exps = load_explanations(explanations) if explanations else None
    if saedashboard is not None:
        from sae_lens_maira.dashboards.viewer_batches import write_viewer_from_saedashboard

        if features or private:
            raise ValueError(
                "--features and --private apply to --stats; an export folder is viewed as written"
            )
        return write_viewer_from_saedashboard(saedashboard, out, exps)
    from sae_lens_maira.dashboards.viewer import write_viewer

    assert stats_dir is not None  # the first check: exactly one of the two is given
    stats = FeatureStats.load(stats_dir)
    return write_viewer(stats, out, exps, parse_features(features), private=private)


def upload(
    export_dir: str | Path, dry_run: bool = False, base_url: str | None = None,
    api_key_env: str = "NEURONPEDIA_API_KEY", batch_size: int = 128,
    explanation_method: str | None = None, explanation_model: str | None = None,
    explanations: bool = True, user_id: str | None = None, max_mb: float = 4.0,
):  # fmt: skip
    """Upload (or check and print, with ``dry_run``) a Neuronpedia export; resumes a stopped one."""
    from sae_lens_maira.dashboards.upload import (
        DEFAULT_BASE_URL,
        NeuronpediaClient,
        UploadOptions,
        upload_export,
    )

    opts = UploadOptions(explanation_method, explanation_model, explanations, batch_size,
                         int(max_mb * 1e6), user_id)  # fmt: skip
    if dry_run:
        return upload_export(export_dir, None, opts, dry_run=True)
    client = NeuronpediaClient(base_url or DEFAULT_BASE_URL, api_key_env)
    try:
        return upload_export(export_dir, client, opts)
    finally:
        client.close()


def synthetic_stats(out: str | Path, n_studies: int = 256, d_sae: int = 64, seed: int = 0) -> Path:
    """Statistics of synthetic prompts with planted features, to try the tools without a model."""
    import torch

    from sae_lens_maira.dashboards.stats_pass import collect_feature_stats
    from sae_lens_maira.dashboards.synthetic import make_synthetic

    data = make_synthetic(n_studies=n_studies, batch_size=32, d_sae=d_sae, grid=(16, 16), seed=seed)
    g = torch.Generator().manual_seed(seed)
    W_dec, W_U = torch.randn(d_sae, 64, generator=g), torch.randn(64, len(data.vocab), generator=g)
    stats = collect_feature_stats(data.batches, d_sae, data.grid, data.namer, data.meta,
                                  W_dec=W_dec, W_U=W_U, total=len(data.batches))  # fmt: skip
    return stats.save(out)


def collect(exp, out: str | Path | None = None) -> Path:
    """Run the model and the trained SAE over the config's studies and save the statistics.

    Reads ``dashboards: {sae, out, batch_size, limit, keep_images}`` (the SAE defaults to
    ``train.output_dir``); studies come from the ``data`` section. Studies left out (missing,
    unreadable, too large or too small images) are listed in ``<out>/skipped_studies.json`` and
    summarised on the console.
    """
    from sae_lens_maira.dashboards.collect import collect_dashboard_stats
    from sae_lens_maira.data.skips import SKIPS_FILE, SkipCollector, announce
    from sae_lens_maira.loading.sae_folder import load_sae_folder

    spec = exp.section("dashboards", required=False)
    sae_dir = exp.path(
        spec.get("sae") or exp.section("train", required=False).get("output_dir") or "sae"
    )
    if not (sae_dir / "cfg.json").is_file():
        raise FileNotFoundError(
            f"no trained SAE at {sae_dir} (cfg.json missing); train one first or set dashboards.sae"
        )
    model = exp.load_model()
    sae = load_sae_folder(sae_dir, device=str(model.cfg.device))
    skips = SkipCollector()
    studies = exp.load_studies(skips)
    if spec.get("limit"):
        studies = studies[: int(spec["limit"])]
    n_listed = len(studies) + len(skips)
    stats = collect_dashboard_stats(
        model, sae, exp.load_processor(), studies, batch_size=int(spec.get("batch_size", 4)),
        keep_images=bool(spec.get("keep_images", True)), skipped=skips,
    )  # fmt: skip
    folder = stats.save(exp.path(out or spec.get("out") or "dashboards/stats"))
    report = skips.write(folder / SKIPS_FILE, n_listed)
    if len(skips):
        announce(skips.summary(n_listed, report))
    return folder
