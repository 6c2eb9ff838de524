"""The model side of the dashboards: studies -> HookedMaira2 -> SAE -> :class:`SequenceBatch`.

Every position of every prompt is encoded (image patches included, so heatmaps cover the whole
X-ray); the statistics pass decides what to count. The SAE's width and hook are checked against the
model before anything runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from sae_lens_maira.activations.sae_fit import check_sae_fits
from sae_lens_maira.dashboards.sequence_batch import DashboardMeta, SequenceBatch, TokenNamer
from sae_lens_maira.dashboards.stats_pass import FeatureStatsConfig, collect_feature_stats
from sae_lens_maira.data.skips import AllStudiesSkippedError, SkipCollector
from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2, hook_layer
from sae_lens_maira.processing.images import ImageLoadError
from sae_lens_maira.processing.processor import EncodedPrompt, Maira2Processor

logger = logging.getLogger(__name__)


def token_namer(processor: Maira2Processor) -> TokenNamer:
    """Token strings as people read them (``▁`` shown as a space), image patches as pseudo-tokens."""
    tok = processor.tokenizer

    def name(token_id: int) -> str:
        return str(tok.convert_ids_to_tokens(int(token_id))).replace("▁", " ")

    return TokenNamer(name, (processor.grid, processor.grid))


@torch.no_grad()
def sequence_batches(
    model: HookedMaira2,
    sae: Any,
    processor: Maira2Processor,
    studies: Sequence[Study],
    *,
    hook_name: str | None = None,
    batch_size: int = 4,
    with_report: bool = True,
    keep_images: bool = True,
    skipped: SkipCollector | dict[str, str] | None = None,
) -> Iterator[SequenceBatch]:
    """Run studies through the model to the SAE's hook and encode every position with the SAE.

    With ``skipped`` (a :class:`SkipCollector`, or a dict study id -> message), studies whose
    images or prompts fail are recorded there and left out; if that leaves none,
    :class:`AllStudiesSkippedError`. Without it they raise.
    """
    hook = check_sae_fits(sae.cfg, model, hook_name)
    model.eval()
    encoded: list[tuple[Study, EncodedPrompt]] = []
    n_skipped = 0
    for study in studies:
        try:
            enc = processor.encode_study(study, with_report=with_report)
            enc.pixel_values = processor.image_processor(list(enc.images)) if enc.images else None
        except (ImageLoadError, ValueError) as err:  # bombs, tiny or broken images, bad prompts
            if skipped is None:
                raise
            n_skipped += 1
            if isinstance(skipped, dict):
                skipped[study.study_id] = str(err)
                logger.warning("skipping study %s: %s", study.study_id, err)
            else:
                skipped.add_error(study.study_id, err)
            continue
        encoded.append((study, enc))
        if len(encoded) == batch_size:
            yield _encode_batch(model, sae, processor, encoded, hook, keep_images)
            encoded = []
    if encoded:
        yield _encode_batch(model, sae, processor, encoded, hook, keep_images)
    if studies and n_skipped == len(studies):
        collector = skipped if isinstance(skipped, SkipCollector) else SkipCollector()
        collector.check_some_left(len(studies), "dashboards collect")
        raise AllStudiesSkippedError(f"dashboards collect skipped all {len(studies)} studies")


def _encode_batch(model, sae, processor, encoded, hook, keep_images) -> SequenceBatch:
    batch = processor.collate([e for _, e in encoded], padding_side="right")
    acts = model.run_to_hook(
        hook, batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values
    )
    param = next(sae.parameters())
    feats = sae.encode(acts.to(device=param.device, dtype=param.dtype))
    images = None
    if keep_images:
        images = [
            [processor.image_processor.prepare(im) for im in enc.images] for _, enc in encoded
        ]
    return SequenceBatch(
        study_ids=[s.study_id for s, _ in encoded],
        token_ids=batch.input_ids.to(feats.device),
        feature_acts=feats,
        mask=batch.attention_mask.bool().to(feats.device),
        roles=batch.roles.to(feats.device),
        image_index=batch.image_slot.to(feats.device),
        patch_index=batch.patch_index.to(feats.device),
        grid=(processor.grid, processor.grid),
        images=images,
    )


def collect_dashboard_stats(
    model: HookedMaira2,
    sae: Any,
    processor: Maira2Processor,
    studies: Sequence[Study],
    *,
    meta: DashboardMeta | None = None,
    config: FeatureStatsConfig | None = None,
    batch_size: int = 4,
    keep_images: bool = True,
    skipped: SkipCollector | dict[str, str] | None = None,
):
    """Feature statistics of ``sae`` over ``studies`` (one vectorised pass, GPU when the model is)."""
    hook = check_sae_fits(sae.cfg, model)
    layer = hook_layer(hook)
    meta = meta or DashboardMeta(
        model_id=model.maira_config.model_name,
        layer=layer if layer is not None else 0,
        hook_name=hook,
        d_sae=int(sae.cfg.d_sae),
        n_layers=int(model.cfg.n_layers),
        d_model=int(model.cfg.d_model),
    )
    batches = sequence_batches(model, sae, processor, studies, batch_size=batch_size, keep_images=keep_images,
                               skipped=skipped if skipped is not None else {})  # fmt: skip
    n_batches = -(-len(studies) // batch_size)
    return collect_feature_stats(
        batches,
        int(sae.cfg.d_sae),
        (processor.grid, processor.grid),
        token_namer(processor),
        meta,
        config,
        device=model.cfg.device,
        W_dec=sae.W_dec.detach(),
        W_U=model.W_U.detach(),
        total=n_batches,
    )
