"""Balanced accuracy: the package's one definition, used by every detection score.

``(TPR + TNR) / 2``, and **None unless the true labels hold both classes**. With one class only,
one of the two rates is undefined; a half score (a constant guess's 0.5) would read as
chance-level detection, and any other fill-in as a real measurement. So there is no score:
callers show "not scored" (viewer, summary) or skip it. Feature detectors, the demo's linear
probes and autointerp's detection scorer all call this function.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def balanced_accuracy(
    predicted: torch.Tensor | Sequence[bool], actual: torch.Tensor | Sequence[bool]
) -> float | None:
    """Mean of the true-positive and true-negative rates; None unless ``actual`` has positives
    and negatives. ``predicted`` and ``actual`` are booleans of one length (tensors or lists)."""
    pred = torch.as_tensor(predicted).bool().reshape(-1)
    truth = torch.as_tensor(actual).bool().reshape(-1)
    if pred.numel() != truth.numel():
        raise ValueError(f"{pred.numel()} predictions for {truth.numel()} examples")
    positives = int(truth.sum())
    negatives = truth.numel() - positives
    if not positives or not negatives:
        return None
    tpr = int((pred & truth).sum()) / positives
    tnr = int((~pred & ~truth).sum()) / negatives
    return (tpr + tnr) / 2
