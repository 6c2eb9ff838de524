"""Automated interpretability: explain features from their top examples and score the explanations
by detection, through any OpenAI-compatible chat endpoint or a deterministic offline backend.
Names load on first use."""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
