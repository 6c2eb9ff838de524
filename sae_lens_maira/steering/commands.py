"""What ``sae-lens-maira steer`` does: a steering sweep from the experiment config."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from sae_lens_maira.steering.hooks import feature_directions
from sae_lens_maira.steering.settings import SteerSettings
from sae_lens_maira.steering.sweep import SweepResult, steering_sweep


def steer(exp, features: list[int] | None = None, finding: str | None = None,
          coefficients: list[float] | None = None, out: str | Path | None = None) -> tuple[SweepResult, Path]:  # fmt: skip
    """Reads the ``steer:`` section (:class:`SteerSettings`). ``mode: clamp`` sets one feature's
    activation to ``coefficient x scale`` at the first placement in ``where``; ``mode: add``
    adds ``coefficient x scale x`` the features' unit decoder direction at ``positions``."""
    from sae_lens_maira.activations.sae_fit import check_sae_fits
    from sae_lens_maira.data.skips import SKIPS_FILE, SkipCollector, announce, keep_usable
    from sae_lens_maira.loading.sae_folder import load_sae_folder
    from sae_lens_maira.processing.images import load_image
    from sae_lens_maira.steering.clamp import FeatureClamp

    spec = SteerSettings.from_section(exp.section("steer", required=False))
    features = list(features or spec.features)
    finding = finding or spec.finding
    if not features or not finding:
        raise ValueError(
            "name the features to steer with and the finding to label (steer.features, steer.finding)"
        )
    if spec.mode == "clamp" and len(features) != 1:
        raise ValueError(
            f"steer.mode clamp sets one feature's activation, but {len(features)} features were "
            "named; name one, or use steer.mode: add to steer along their summed direction"
        )
    sae_dir = exp.path(
        spec.sae or exp.section("train", required=False).get("output_dir") or "sae"
    )
    model = exp.load_model()
    sae = load_sae_folder(sae_dir, device=str(model.cfg.device))
    hook = check_sae_fits(sae.cfg, model, spec.hook_name)
    processor = exp.load_processor()
    skips = SkipCollector()
    listed = exp.load_studies(skips)

    def usable(study) -> None:  # what the sweep will need: the prompt and every image decoded
        processor.encode_study(study)
        for image in study.images:
            load_image(image)

    studies = keep_usable(listed, usable, skips, limit=spec.n_studies)
    n_read = len(skips) + len(studies)
    skips.check_some_left(n_read, "steer")
    make_hook: Callable[[float], FeatureClamp] | None = None
    if spec.mode == "clamp":
        def clamp(coef: float) -> FeatureClamp:
            return FeatureClamp.at(sae, features[0], coef * spec.scale, spec.where[0],
                                   tokenizer=processor.tokenizer)  # fmt: skip

        make_hook = clamp

    result = steering_sweep(
        model, processor, studies,
        direction=feature_directions(sae.W_dec, features) * spec.scale,
        hook_name=hook,
        coefficients=coefficients or list(spec.coefficients),
        finding=str(finding),
        features=[int(f) for f in features],
        positions=spec.positions if spec.mode == "add" else spec.where[0],
        batch_size=spec.batch_size,
        max_new_tokens=spec.max_new_tokens,
        make_hook=make_hook,
    )  # fmt: skip
    folder = result.save(exp.path(out or spec.out))
    report = skips.write(folder / SKIPS_FILE, n_read)
    if len(skips):
        announce(skips.summary(n_read, report))
    return result, folder
