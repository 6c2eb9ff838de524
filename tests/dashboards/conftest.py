"""Shared fixtures: synthetic prompts with planted features and their finished statistics."""

from __future__ import annotations

import pytest
import torch

from sae_lens_maira.dashboards.stats_pass import FeatureStatsCollector, FeatureStatsConfig
from sae_lens_maira.dashboards.synthetic import make_synthetic


@pytest.fixture(scope="session")
def synthetic():
    return make_synthetic(n_studies=48, batch_size=10, d_sae=24, grid=(8, 8), seed=1)


@pytest.fixture(scope="session")
def decoder(synthetic):
    g = torch.Generator().manual_seed(0)
    d_model = 12
    return torch.randn(synthetic.d_sae, d_model, generator=g), torch.randn(
        d_model, len(synthetic.vocab), generator=g
    )


@pytest.fixture(scope="session")
def stats(synthetic, decoder):
    cfg = FeatureStatsConfig(
        n_top=12,
        ctx_left=6,
        ctx_right=3,
        text_context=8,
        n_hist_bins=16,
        n_random_contexts=40,
        n_corr_positions=100_000,
    )
    collector = FeatureStatsCollector(synthetic.d_sae, synthetic.grid, cfg)
    for batch in synthetic.batches:
        collector.update(batch)
    return collector.finalize(synthetic.namer, synthetic.meta, W_dec=decoder[0], W_U=decoder[1])
