"""What ``sae-lens-maira cache`` does: the experiment's studies into an activation cache."""

from __future__ import annotations

from sae_lens_maira.activations.cache import CacheConfig, CacheResult, cache_activations
from sae_lens_maira.activations.distributed import distributed_context


def cache_from_experiment(exp) -> CacheResult | None:
    """Cache with the config's ``cache`` section; under torchrun each rank takes its share.

    Returns the merged result on rank 0 (None on other ranks).
    """
    spec = exp.section("cache")
    spec["output_dir"] = str(exp.path(spec.get("output_dir") or "activations"))
    cfg = CacheConfig(**spec)
    with distributed_context(exp.device()) as (rank, world_size, device):
        model = exp.load_model(device)
        return cache_activations(
            model, exp.load_processor(), exp.load_studies(), cfg, rank=rank, world_size=world_size
        )
