"""Feature dashboards: the statistics pass, Neuronpedia / SAE-Dashboard exports and upload, and the
offline X-ray viewer. Names load on first use (no import-time work)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_LAZY = {
    "SequenceBatch": "sequence_batch",
    "topk_feature_acts": "sequence_batch",
    "TokenNamer": "sequence_batch",
    "DashboardMeta": "sequence_batch",
    "FeatureStatsConfig": "stats_pass",
    "FeatureStatsCollector": "stats_pass",
    "collect_feature_stats": "stats_pass",
    "FeatureStats": "feature_stats",
    "Example": "feature_stats",
    "Explanation": "explanations",
    "load_explanations": "explanations",
    "write_neuronpedia_export": "export_neuronpedia",
    "write_saedashboard": "export_saedashboard",
    "write_viewer": "viewer",
    "write_viewer_from_saedashboard": "viewer_batches",
    "NeuronpediaClient": "upload",
    "upload_export": "upload",
    "validate": "schemas",
    "validate_neuronpedia_export": "schemas",
    "validate_saedashboard_dir": "schemas",
}

if TYPE_CHECKING:  # pragma: no cover  (what the lazy names resolve to, for type checkers)
    from .explanations import Explanation, load_explanations
    from .export_neuronpedia import write_neuronpedia_export
    from .export_saedashboard import write_saedashboard
    from .feature_stats import Example, FeatureStats
    from .schemas import validate, validate_neuronpedia_export, validate_saedashboard_dir
    from .sequence_batch import DashboardMeta, SequenceBatch, TokenNamer, topk_feature_acts
    from .stats_pass import FeatureStatsCollector, FeatureStatsConfig, collect_feature_stats
    from .upload import NeuronpediaClient, upload_export
    from .viewer import write_viewer
    from .viewer_batches import write_viewer_from_saedashboard

__all__ = [
    "SequenceBatch",
    "topk_feature_acts",
    "TokenNamer",
    "DashboardMeta",
    "FeatureStatsConfig",
    "FeatureStatsCollector",
    "collect_feature_stats",
    "FeatureStats",
    "Example",
    "Explanation",
    "load_explanations",
    "write_neuronpedia_export",
    "write_saedashboard",
    "write_viewer",
    "write_viewer_from_saedashboard",
    "NeuronpediaClient",
    "upload_export",
    "validate",
    "validate_neuronpedia_export",
    "validate_saedashboard_dir",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
