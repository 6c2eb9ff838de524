"""What ``sae-lens-maira cache`` does: the experiment's studies into an activation cache."""

from __future__ import annotations

from sae_lens_maira.activations.cache import CacheConfig, CacheResult, cache_activations
from sae_lens_maira.activations.distributed import distributed_context
from sae_lens_maira.config_sections import typed_values
from sae_lens_maira.data.skips import SkipCollector


def cache_from_experiment(exp) -> CacheResult | None:
    """Cache with the config's ``cache`` section; under torchrun each rank takes its share.

    Returns the merged result on rank 0 (None on other ranks).
    """
    spec = exp.section("cache")
    spec["output_dir"] = str(exp.path(spec.get("output_dir") or "activations"))
    cfg = CacheConfig(**typed_values(CacheConfig, spec, "cache"))
    with distributed_context(exp.device()) as (rank, world_size, device):
        model = exp.load_model(device)
        skips = SkipCollector()  # what the source left out (missing files) heads the skip list
        studies = exp.load_studies(skips)
        return cache_activations(
            model, exp.load_processor(), studies, cfg, rank=rank, world_size=world_size,
            source_skips=skips.items,
        )  # fmt: skip
