"""What ``sae-lens-maira steer`` does: a steering sweep from the experiment config."""

from __future__ import annotations

from pathlib import Path

from sae_lens_maira.steering.hooks import feature_directions
from sae_lens_maira.steering.sweep import SweepResult, steering_sweep


def steer(exp, features: list[int] | None = None, finding: str | None = None,
          coefficients: list[float] | None = None, out: str | Path | None = None) -> tuple[SweepResult, Path]:  # fmt: skip
    """Reads ``steer: {features, finding, coefficients, positions, n_studies, max_new_tokens, out}``."""
    from sae_lens_maira.activations.sae_fit import check_sae_fits
    from sae_lens_maira.loading.sae_folder import load_sae_folder

    spec = exp.section("steer", required=False)
    features = features or spec.get("features")
    finding = finding or spec.get("finding")
    if not features or not finding:
        raise ValueError(
            "name the features to steer with and the finding to label (steer.features, steer.finding)"
        )
    sae_dir = exp.path(
        spec.get("sae") or exp.section("train", required=False).get("output_dir") or "sae"
    )
    model = exp.load_model()
    sae = load_sae_folder(sae_dir, device=str(model.cfg.device))
    hook = check_sae_fits(sae.cfg, model, spec.get("hook_name"))
    studies = exp.load_studies()[: int(spec.get("n_studies", 32))]
    result = steering_sweep(
        model, exp.load_processor(), studies,
        direction=feature_directions(sae.W_dec, features) * float(spec.get("scale", 1.0)),
        hook_name=hook,
        coefficients=coefficients or spec.get("coefficients", [0, 2, 4, 8]),
        finding=str(finding),
        features=[int(f) for f in features],
        positions=spec.get("positions", "generated"),
        batch_size=int(spec.get("batch_size", 4)),
        max_new_tokens=int(spec.get("max_new_tokens", 96)),
    )  # fmt: skip
    return result, result.save(exp.path(out or spec.get("out") or "steering"))
