"""Feature dashboards: the statistics pass, Neuronpedia / SAE-Dashboard exports and upload, and the
offline X-ray viewer. Names load on first use (no import-time work)."""

from __future__ import annotations

import importlib
from typing import Any

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


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = list(_LAZY)
