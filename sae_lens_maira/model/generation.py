"""Greedy findings for a list of studies: MAIRA-2's decoding, batch by batch.

The one place studies become generated reports: the demo's evaluations call it bare, the steering
sweeps with a hook attached around each batch (``during``), so the decoding cannot drift apart
between the model's report card and its steering figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from sae_lens_maira.data.study import Study

if TYPE_CHECKING:
    from sae_lens_maira.model.hooked_maira2 import HookedMaira2
    from sae_lens_maira.processing.processor import Maira2Inputs, Maira2Processor


@torch.no_grad()
def generate_findings(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    during: Callable[[Maira2Inputs], AbstractContextManager[Any]] | None = None,
    progress: bool = False,
) -> list[str]:
    """Greedy findings (MAIRA-2's decoding) for each study, in order: the completion only,
    special tokens dropped. ``during(batch)``, when given, is entered around each batch's
    generation (e.g. a steering hook prepared for that batch)."""
    out: list[str] = []
    starts = range(0, len(studies), batch_size)
    for start in tqdm(starts, desc="generating findings", disable=not progress):
        batch = processor(list(studies[start : start + batch_size]), padding_side="left")
        with during(batch) if during is not None else nullcontext():
            out += model.generate(
                batch.input_ids,
                pixel_values=batch.pixel_values,
                attention_mask=batch.attention_mask,
                max_new_tokens=max_new_tokens,
                return_type="str",
            )
    return out
