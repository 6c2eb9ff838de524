"""Is a steered report still a report? Repeated phrases, stuffed words, likelihood.

Steering that only pushes a word into the text ("effusion, effusion, effusion") raises a mention
rate without changing what the model says about the image. Three checks tell the two apart:

* a *repeated phrase*: some run of ``n`` words (4 by default) occurs twice in one report, the
  signature of a decoding loop (real Open-I findings almost never repeat four words in a row);
* a *stuffed word*: the finding is mentioned ``stuffed_at`` (3) or more times in one report;
* the mean log-likelihood per token of the steered text under the *unsteered* model, given the
  same prompt: a fluent report the model could have written scores near its own greedy reports.

A report is *fluent* when it has neither a repeated phrase nor a stuffed word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from sae_lens_maira.data.labeller import _resolve
from sae_lens_maira.processing.roles import Role

_WORDS = re.compile(r"[a-z0-9']+")


def has_repeated_phrase(text: str, n: int = 4) -> bool:
    """Whether some run of ``n`` words occurs at least twice in ``text`` (case-insensitive)."""
    words = _WORDS.findall(text.lower())
    seen: set[tuple[str, ...]] = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def mention_count(text: str, finding: str) -> int:
    """How many times ``text`` names ``finding`` (the labeller's mention patterns)."""
    (rule,) = _resolve([finding])
    return sum(len(p.findall(text.lower())) for p in rule.compiled()["mentions"])


def is_fluent(text: str, finding: str, *, n: int = 4, stuffed_at: int = 3) -> bool:
    return not has_repeated_phrase(text, n) and mention_count(text, finding) < stuffed_at


def fluency_summary(texts: Sequence[str], finding: str, *, n: int = 4, stuffed_at: int = 3) -> dict:
    """Shares of reports with a repeated phrase, with the finding stuffed in, and disfluent."""
    if not texts:
        return {"repeated_phrase": 0.0, "stuffed": 0.0, "disfluent": 0.0, "n": 0}
    rep = [has_repeated_phrase(t, n) for t in texts]
    stuffed = [mention_count(t, finding) >= stuffed_at for t in texts]
    return {
        "repeated_phrase": sum(rep) / len(texts),
        "stuffed": sum(stuffed) / len(texts),
        "disfluent": sum(a or b for a, b in zip(rep, stuffed, strict=True)) / len(texts),
        "n": len(texts),
    }


def mean_log_likelihood(model: Any, processor: Any, studies: Sequence[Any], texts: Sequence[str],
                        *, batch_size: int = 16) -> float:  # fmt: skip
    """Mean log-probability per token of ``texts`` as each study's report, under ``model``
    (teacher forcing on the study's prompt, end-of-text token included)."""
    if len(studies) != len(texts):
        raise ValueError(f"{len(studies)} studies but {len(texts)} texts")
    as_reports = [replace(s, findings=t or " ") for s, t in zip(studies, texts, strict=True)]
    return -teacher_forced_loss(model, processor, as_reports, batch_size=batch_size)


@torch.no_grad()
def teacher_forced_loss(
    model: Any,
    processor: Any,
    studies: Sequence[Any],
    *,
    batch_size: int = 16,
) -> float:
    """Mean next-token loss over the report tokens of ``studies`` (EOS included), as a
    ``HookedMaira2`` and ``Maira2Processor`` give it (teacher forcing on each study's prompt)."""
    total, count = 0.0, 0
    for start in range(0, len(studies), batch_size):
        batch = processor(
            list(studies[start : start + batch_size]), with_report=True, padding_side="right"
        )
        resid = model(
            batch.input_ids,
            pixel_values=batch.pixel_values,
            attention_mask=batch.attention_mask,
            stop_at_layer=model.cfg.n_layers,
        )
        keep = batch.roles[:, 1:] == int(Role.REPORT)
        logits = model.unembed(model.ln_final(resid[:, :-1][keep][None]))[0]
        ce = F.cross_entropy(logits.float(), batch.input_ids[:, 1:][keep], reduction="sum")
        total += float(ce)
        count += int(keep.sum())
    return total / max(count, 1)
