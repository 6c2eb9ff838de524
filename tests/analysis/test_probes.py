"""Linear probes: the class-balanced logistic regression against an independent optimiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from sae_lens_maira.analysis.probes import fit_logistic


def test_fit_logistic_matches_scipy():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(120, 5, generator=gen)
    y = ((x[:, 0] - 0.5 * x[:, 1] + 0.3 * torch.randn(120, generator=gen)) > 0.8).float()
    l2 = 0.05
    w, b = fit_logistic(x, y, l2=l2)
    xn, yn = x.double().numpy(), y.double().numpy()
    npos = yn.sum()
    weights = np.where(yn > 0.5, 0.5 / npos, 0.5 / (len(yn) - npos))

    def objective(theta):
        z = xn @ theta[:-1] + theta[-1]
        return float(
            (weights * np.logaddexp(0, -(2 * yn - 1) * z)).sum()
            + 0.5 * l2 * theta[:-1] @ theta[:-1]
        )

    ref = minimize(objective, np.zeros(6), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(w.numpy(), ref[:-1], atol=1e-4)
    assert float(b) == pytest.approx(ref[-1], abs=1e-4)
    with pytest.raises(ValueError, match="both positive and negative"):
        fit_logistic(x, torch.ones(120))
