"""Detection metrics: balanced accuracy (the study's score) and F1."""

from __future__ import annotations

from collections.abc import Sequence

from sae_lens_maira.analysis.metrics import balanced_accuracy


def detection_metrics(
    predicted: Sequence[bool], actual: Sequence[bool]
) -> dict[str, float | int | None]:
    """Confusion counts, accuracy, balanced accuracy ((TPR + TNR) / 2; None unless both classes are
    present), precision, recall and F1."""
    if len(predicted) != len(actual):
        raise ValueError(f"{len(predicted)} predictions for {len(actual)} examples")
    tp = sum(p and a for p, a in zip(predicted, actual, strict=True))
    tn = sum(not p and not a for p, a in zip(predicted, actual, strict=True))
    fp = sum(p and not a for p, a in zip(predicted, actual, strict=True))
    fn = sum(not p and a for p, a in zip(predicted, actual, strict=True))
    pos, neg = tp + fn, tn + fp
    tpr = tp / pos if pos else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    return {
        # one class alone says nothing about the explanation: no score rather than half a score
        "balanced_accuracy": balanced_accuracy(predicted, actual),
        "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0,
        "accuracy": (tp + tn) / len(actual) if len(actual) else 0.0,
        "precision": precision,
        "recall": tpr,
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        "n_activating": pos, "n_non_activating": neg,
    }  # fmt: skip
