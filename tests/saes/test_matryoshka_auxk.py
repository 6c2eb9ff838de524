"""The AuxK term against its formula."""

from __future__ import annotations

import torch

from sae_lens_maira.saes.auxk import auxk_l2


def test_auxk_is_normalised_by_residual_variance() -> None:
    residual = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    aux = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    l2 = ((residual - aux) ** 2).sum(-1).mean()
    var = ((residual - residual.mean(0)) ** 2).sum(-1).mean()
    torch.testing.assert_close(auxk_l2(residual, aux), l2 / var)
    assert float(auxk_l2(torch.ones(3, 2), torch.ones(3, 2))) == 0.0  # 0/0 -> 0 (nan_to_num)
