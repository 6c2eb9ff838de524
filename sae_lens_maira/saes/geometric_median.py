"""Geometric median (Weiszfeld iterations), dictionary_learning's b_dec initialisation."""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def geometric_median(points: Tensor, max_iter: int = 100, tol: float = 1e-5) -> Tensor:
    """Point minimising the summed Euclidean distance to ``points`` [n, d].

    Starts at the mean and stops when an iteration moves less than ``tol``, as dictionary_learning
    does; distances are floored at 1e-12 so a point sitting on the estimate cannot divide by zero.
    """
    points = points.float()
    guess = points.mean(dim=0)
    for _ in range(max_iter):
        prev = guess
        weights = 1.0 / torch.linalg.vector_norm(points - guess, dim=1).clamp_min(1e-12)
        weights = weights / weights.sum()
        guess = weights @ points
        if torch.linalg.vector_norm(guess - prev) < tol:
            break
    return guess
