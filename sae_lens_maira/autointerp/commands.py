"""What ``sae-lens-maira autointerp`` does (the CLI only parses)."""

from __future__ import annotations

from pathlib import Path

from sae_lens_maira.autointerp.examples import AutointerpConfig
from sae_lens_maira.dashboards.explanations import Explanation


def autointerp(
    stats_dir: str | Path, out: str | Path, backend: str = "offline", model: str | None = None,
    base_url: str = "https://api.openai.com/v1", api_key_env: str = "OPENAI_API_KEY",
    cache: str | Path | None = None, features: str | None = None, concurrency: int = 8,
    private: bool = False, n_explain: int = 40, min_held_out: int = 5,
) -> dict[int, Explanation]:  # fmt: skip
    from sae_lens_maira.autointerp.runner import run_autointerp
    from sae_lens_maira.dashboards.commands import parse_features
    from sae_lens_maira.dashboards.feature_stats import FeatureStats

    stats = FeatureStats.load(stats_dir)
    cfg = AutointerpConfig(n_explain=n_explain, private=private, min_held_out_activating=min_held_out,
                           min_held_out_non_activating=min_held_out)  # fmt: skip
    if backend == "offline":
        from sae_lens_maira.autointerp.offline import OfflineExplainer, OfflineScorer

        explainer, scorer = OfflineExplainer(stats.slot_names), OfflineScorer(stats.slot_names)
    elif backend == "openai":
        from sae_lens_maira.autointerp.client import CachedClient, OpenAICompatibleClient
        from sae_lens_maira.autointerp.llm import LLMExplainer, LLMScorer

        if not model:
            raise ValueError(
                "--backend openai needs --model (the chat model name the endpoint serves)"
            )
        client = CachedClient(OpenAICompatibleClient(model, base_url, api_key_env),
                              cache or Path(out).with_suffix(".cache.jsonl"))  # fmt: skip
        explainer, scorer = LLMExplainer(client), LLMScorer(client)
    else:
        raise ValueError(f"unknown autointerp backend {backend!r}; use offline or openai")
    return run_autointerp(stats, out, explainer, scorer, parse_features(features), cfg, concurrency)
