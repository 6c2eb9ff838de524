"""Automated interpretability: explain features from their top examples and score the explanations
by detection, through any OpenAI-compatible chat endpoint or a deterministic offline backend.
Names load on first use."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "AutointerpConfig": "examples",
    "run_autointerp": "runner",
    "explain_feature": "runner",
    "score_explanation": "runner",
    "detection_metrics": "metrics",
    "OfflineExplainer": "offline",
    "OfflineScorer": "offline",
    "OpenAICompatibleClient": "client",
    "CachedClient": "client",
    "LLMExplainer": "llm",
    "LLMScorer": "llm",
}

if TYPE_CHECKING:  # pragma: no cover  (what the lazy names resolve to, for type checkers)
    from .client import CachedClient, OpenAICompatibleClient
    from .examples import AutointerpConfig
    from .llm import LLMExplainer, LLMScorer
    from .metrics import detection_metrics
    from .offline import OfflineExplainer, OfflineScorer
    from .runner import explain_feature, run_autointerp, score_explanation

__all__ = [
    "AutointerpConfig",
    "run_autointerp",
    "explain_feature",
    "score_explanation",
    "detection_metrics",
    "OfflineExplainer",
    "OfflineScorer",
    "OpenAICompatibleClient",
    "CachedClient",
    "LLMExplainer",
    "LLMScorer",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
