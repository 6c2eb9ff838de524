"""dictionary_learning's AuxK term (from OpenAI's TopK SAEs): dead latents fit the residual."""

from __future__ import annotations

from torch import Tensor


def auxk_l2(residual: Tensor, aux_recon: Tensor) -> Tensor:
    """``||residual - aux||^2`` (sum over d, mean over batch) over the residual's variance.

    ``nan_to_num(0)`` as in the library: a batch with zero residual variance contributes 0.
    """
    residual = residual.float()
    l2 = (residual - aux_recon.float()).pow(2).sum(dim=-1).mean()
    denom = (residual - residual.mean(dim=0, keepdim=True)).pow(2).sum(dim=-1).mean()
    return (l2 / denom).nan_to_num(0.0)
