"""The small default's tokenizer: LLaMA-style BPE trained on report text plus MAIRA-2's prompt.

The prompt's fixed text (system line, instruction, section headers, chat markers) is added to the
corpus often enough that its words become single tokens, as they are in Vicuna's vocabulary;
otherwise the boilerplate would be spelled out in bytes and dominate every sequence.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerBase

from sae_lens_maira.data.study import Study
from sae_lens_maira.processing.prompt import (
    FINDINGS_INSTRUCTION,
    GROUNDED_INSTRUCTION,
    NOT_AVAILABLE,
    PHRASE_GROUNDING_INSTRUCTION,
    SYSTEM_PROMPT,
    ChatFormat,
)
from sae_lens_maira.processing.tokenizer import build_maira2_tokenizer

#: Base vocabulary (before MAIRA-2's 207 added tokens): 2000 + 207 = the small preset's 2207,
#: which puts ``<image>`` at id 2204 as in the preset.
DEMO_VOCAB_SIZE = 2000
_PROMPT_REPEATS = 50


def prompt_corpus() -> list[str]:
    """Every fixed string MAIRA-2's prompts use, once each."""
    chat = ChatFormat()
    return [
        SYSTEM_PROMPT,
        FINDINGS_INSTRUCTION,
        GROUNDED_INSTRUCTION,
        PHRASE_GROUNDING_INSTRUCTION + " Finding:",
        "Given the current frontal image only",
        "Given the current frontal image and the current lateral image",
        "the current lateral image and the prior frontal image",
        f"PRIOR_REPORT: INDICATION: TECHNIQUE: COMPARISON: {NOT_AVAILABLE}",
        chat.user_prefix + chat.assistant_prefix,
    ]


def study_texts(studies: Iterable[Study]) -> list[str]:
    """The free text of studies: findings, indication, comparison, technique, prior report."""
    out = []
    for s in studies:
        for text in (s.findings, s.indication, s.comparison, s.technique, s.prior_report):
            if text and text.strip():
                out.append(text)
    return out


def build_demo_tokenizer(
    reports: Iterable[str], vocab_size: int = DEMO_VOCAB_SIZE
) -> PreTrainedTokenizerBase:
    """Train the tokenizer on ``reports`` (any report/prompt text) plus MAIRA-2's prompt text."""
    texts = [t for t in reports if t and t.strip()]
    if not texts:
        raise ValueError("build_demo_tokenizer needs at least one non-empty report text")
    return build_maira2_tokenizer(texts + prompt_corpus() * _PROMPT_REPEATS, vocab_size=vocab_size)
