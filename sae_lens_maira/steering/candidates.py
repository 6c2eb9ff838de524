"""Which features to try for steering towards a finding: the ones that *write* its words.

A feature that detects a finding (fires when the image shows it) need not be one that makes the
model write it: its direction can sit where later layers never read it at generated positions.
Features whose decoder direction raises the logits of the finding's own words through the
unembedding (the direct path, as dashboards show it) are the other natural candidates; a short
sweep then decides between them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sae_lens_maira.data.labeller import FindingRule, _resolve


def finding_token_ids(tokenizer: Any, finding: str | FindingRule) -> list[int]:
    """Vocabulary ids whose text alone is a mention of ``finding`` (e.g. "▁effusions.")."""
    (rule,) = _resolve([finding])
    patterns = rule.compiled()["mentions"]
    ids = []
    for token, idx in tokenizer.get_vocab().items():
        text = tokenizer.convert_tokens_to_string([token]).strip().lower()
        if text and any(p.search(text) for p in patterns):
            ids.append(int(idx))
    if not ids:
        raise ValueError(
            f"no token of the vocabulary spells a mention of {rule.name!r} on its own; pass "
            "candidate features explicitly"
        )
    return sorted(ids)


@torch.no_grad()
def writer_features(
    W_dec: torch.Tensor, W_U: torch.Tensor, token_ids: Sequence[int], top: int = 5
) -> list[int]:
    """The ``top`` features whose unit decoder direction most raises any of ``token_ids``'
    logits relative to the mean logit (direct path ``W_dec[f] @ W_U``; the final norm only
    rescales it)."""
    if W_dec.shape[1] != W_U.shape[0]:
        raise ValueError(
            f"W_dec is [d_sae, {W_dec.shape[1]}] but W_U is {tuple(W_U.shape)}: W_U must be "
            "[d_model, d_vocab] (TransformerLens's model.W_U)"
        )
    if not token_ids:
        raise ValueError("writer_features needs at least one token id")
    d = W_dec.float()
    logits = (d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)) @ W_U.float()
    lift = logits[:, list(token_ids)].max(dim=-1).values - logits.mean(dim=-1)
    return lift.argsort(descending=True)[:top].tolist()
