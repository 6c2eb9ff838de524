"""The embedded default: Open-I studies, the small MAIRA-2 trained on them, and its cache.

Imports are lazy (no import-time work): ``from sae_lens_maira.demo import ensure_demo_model``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DemoStudies": "studies",
    "demo_studies": "studies",
    "DEMO_FINDINGS": "studies",
    "DEMO_IMAGE_SIZE": "studies",
    "build_demo_tokenizer": "tokenizer_corpus",
    "DemoModelConfig": "small_model",
    "train_small_model": "small_model",
    "ensure_demo_model": "model_cache",
    "demo_model_key": "model_cache",
    "evaluate_generation": "evaluation",
    "generate_findings": "evaluation",
    "mention_summary": "evaluation",
    "probe_findings": "held_out",  # lives in sae_lens_maira.analysis.probes
    "evaluate_held_out": "held_out",
    "DEMO_HOOK": "held_out",
    "split_validation": "model_cache",
    "plot_training": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
