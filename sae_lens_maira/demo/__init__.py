"""The embedded default: Open-I studies, the small MAIRA-2 trained on them, and its cache.

Imports are lazy (no import-time work): ``from sae_lens_maira.demo import ensure_demo_model``.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

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
    "generate_findings": "evaluation",  # lives in sae_lens_maira.model.generation
    "mention_summary": "evaluation",
    "probe_findings": "held_out",  # lives in sae_lens_maira.analysis.probes
    "evaluate_held_out": "held_out",
    "DEMO_HOOK": "held_out",
    "split_validation": "model_cache",
    "plot_training": "plots",
}

if TYPE_CHECKING:  # pragma: no cover  (what the lazy names resolve to, for type checkers)
    from sae_lens_maira.analysis.probes import probe_findings
    from sae_lens_maira.model.generation import generate_findings

    from .evaluation import evaluate_generation, mention_summary
    from .held_out import DEMO_HOOK, evaluate_held_out
    from .model_cache import demo_model_key, ensure_demo_model, split_validation
    from .plots import plot_training
    from .small_model import DemoModelConfig, train_small_model
    from .studies import DEMO_FINDINGS, DEMO_IMAGE_SIZE, DemoStudies, demo_studies
    from .tokenizer_corpus import build_demo_tokenizer

__all__ = [
    "DEMO_FINDINGS",
    "DEMO_HOOK",
    "DEMO_IMAGE_SIZE",
    "DemoModelConfig",
    "DemoStudies",
    "build_demo_tokenizer",
    "demo_model_key",
    "demo_studies",
    "ensure_demo_model",
    "evaluate_generation",
    "evaluate_held_out",
    "generate_findings",
    "mention_summary",
    "plot_training",
    "probe_findings",
    "split_validation",
    "train_small_model",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
