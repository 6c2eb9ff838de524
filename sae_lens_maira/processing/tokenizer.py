"""MAIRA-2's tokenizer: the checkpoint's own LLaMA tokenizer, or a small one trained on reports.

The real tokenizer is Vicuna's 32,000-token LLaMA sentencepiece BPE plus MAIRA-2's added tokens
(object and box markers, 200 coordinate bins, ``<image>``). For the small default and for tests we
train a LLaMA-style BPE (byte fallback, ``▁`` word prefix) on report text and append the same added
tokens in the same order, so every code path that looks tokens up by name works on both.
"""

from __future__ import annotations

import functools
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import cast

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

# transformers' AddedToken is tokenizers' class; its name is the one add_tokens is annotated with
from transformers import AddedToken, AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase

IMAGE_TOKEN = "<image>"
OBJ_START, OBJ_END = "<obj>", "</obj>"
BOX_START, BOX_END = "<box>", "</box>"
N_COORDINATE_BINS = 100
#: MAIRA-2's added tokens in id order after the base vocabulary (32000.. for the real model).
MAIRA2_ADDED_TOKENS: tuple[str, ...] = (
    OBJ_START,
    OBJ_END,
    *(f"<x{i}>" for i in range(N_COORDINATE_BINS)),
    *(f"<y{i}>" for i in range(N_COORDINATE_BINS)),
    BOX_START,
    BOX_END,
    IMAGE_TOKEN,
    "<image_start>",
    "<image_end>",
)
_SPECIALS = ("<unk>", "<s>", "</s>")
_BYTE_TOKENS = tuple(f"<0x{b:02X}>" for b in range(256))


def build_maira2_tokenizer(
    texts: Iterable[str], vocab_size: int = 2000, *, pad_vocab: bool = False
) -> PreTrainedTokenizerBase:
    """Train a LLaMA-style BPE tokenizer on ``texts`` and add MAIRA-2's tokens.

    Layout mirrors LLaMA's: ``<unk>``=0, ``<s>``=1, ``</s>``=2, 256 byte-fallback tokens, the learned
    merges, then MAIRA-2's added tokens. ``vocab_size`` counts the base vocabulary (LLaMA: 32000).
    ``pad_vocab`` fills a base vocabulary the corpus cannot reach with unused ``<unusedN>`` entries,
    so the added tokens land on fixed ids (the small preset's ``<image>`` = 2204).
    """
    n_reserved = len(_SPECIALS) + len(_BYTE_TOKENS)
    if vocab_size <= n_reserved + 16:
        raise ValueError(
            f"vocab_size={vocab_size} is too small: {n_reserved} ids are reserved for special and "
            "byte-fallback tokens; use at least 300"
        )
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="always", split=True
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_reserved,
        special_tokens=[],
        show_progress=False,
        limit_alphabet=200,
    )
    trainer_tok.train_from_iterator(texts, trainer)
    model = json.loads(trainer_tok.to_str())["model"]
    learned = sorted(model["vocab"].items(), key=lambda kv: kv[1])
    vocab: dict[str, int] = {tok: i for i, tok in enumerate(_SPECIALS + _BYTE_TOKENS)}
    for tok, _ in learned:
        if tok not in vocab:
            vocab[tok] = len(vocab)
    for i in range(vocab_size - len(vocab) if pad_vocab else 0):
        vocab[f"<unused{i}>"] = len(vocab)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = LlamaTokenizer(vocab=vocab, merges=merges, add_bos_token=True, add_eos_token=False)
    add_maira2_tokens(tokenizer)
    return tokenizer


#: Base vocabulary of the ``small`` preset: 2000 + MAIRA-2's 207 added tokens = 2207 ids.
SMALL_PRESET_BASE_VOCAB = 2000
_PRESET_REPORT_TEXT = (
    "The heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
    "Cardiomegaly. Small bilateral pleural effusions. Right internal jugular central venous catheter.",
    "Left-sided pacemaker with leads in the right atrium and ventricle. No focal consolidation.",
    "Stable mild enlargement of the cardiac silhouette. Blunting of the left costophrenic angle.",
    "Patchy opacity at the right lung base may reflect atelectasis or pneumonia. Mild pulmonary edema.",
)


@functools.lru_cache(maxsize=1)
def _preset_tokenizer_state() -> str:
    from sae_lens_maira.processing.prompt import (
        FINDINGS_INSTRUCTION,
        GROUNDED_INSTRUCTION,
        PHRASE_GROUNDING_INSTRUCTION,
        SYSTEM_PROMPT,
        ChatFormat,
    )

    chat = ChatFormat()
    prompt = [
        SYSTEM_PROMPT,
        FINDINGS_INSTRUCTION,
        GROUNDED_INSTRUCTION,
        PHRASE_GROUNDING_INSTRUCTION + " Finding:",
        "Given the current frontal image only and the current lateral image and the prior frontal image",
        "PRIOR_REPORT: INDICATION: TECHNIQUE: COMPARISON: N/A",
        chat.user_prefix + chat.assistant_prefix,
    ]
    tok = build_maira2_tokenizer(
        (prompt + list(_PRESET_REPORT_TEXT)) * 20, SMALL_PRESET_BASE_VOCAB, pad_vocab=True
    )
    with tempfile.TemporaryDirectory() as tmp:
        tok.save_pretrained(tmp)
        return json.dumps(
            {n: Path(tmp, n).read_text() for n in ("tokenizer.json", "tokenizer_config.json")}
        )


def small_preset_tokenizer() -> PreTrainedTokenizerBase:
    """A fresh copy of the ``small`` preset's tokenizer (2207 ids, ``<image>`` = 2204).

    Trained once per process on MAIRA-2's prompt text and a few report sentences: it tokenizes any
    prompt (byte fallback), so a random small model can be saved, reloaded and run; a model trained
    on real reports should bring a tokenizer trained on them (see ``build_maira2_tokenizer``).
    """
    files = json.loads(_preset_tokenizer_state())
    with tempfile.TemporaryDirectory() as tmp:
        for name, text in files.items():
            Path(tmp, name).write_text(text)
        return AutoTokenizer.from_pretrained(tmp)


def add_maira2_tokens(tokenizer: PreTrainedTokenizerBase) -> None:
    """Append MAIRA-2's added tokens (kept on decode, always matched whole) if missing."""
    missing = [t for t in MAIRA2_ADDED_TOKENS if t not in tokenizer.get_vocab()]
    if missing:
        added = [AddedToken(t, normalized=False, special=False) for t in missing]
        tokenizer.add_tokens(added)


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """Load a checkpoint's tokenizer and check it can express MAIRA-2 prompts."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer folder {path} does not exist")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ValueError(
            f"could not load a tokenizer from {path}: {err}. The checkpoint folder needs "
            "tokenizer.json (or tokenizer.model) and tokenizer_config.json"
        ) from err
    check_tokenizer(tokenizer, source=str(path))
    return tokenizer


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, source: str = "the tokenizer") -> None:
    """Raise a clear error when a tokenizer lacks what MAIRA-2's prompts and outputs need."""
    vocab = tokenizer.get_vocab()
    if IMAGE_TOKEN not in vocab:
        raise ValueError(
            f"{source} has no {IMAGE_TOKEN!r} token, so images cannot be placed in prompts. Use the "
            "MAIRA-2 checkpoint's own tokenizer, or add MAIRA-2's tokens with "
            "sae_lens_maira.processing.tokenizer.add_maira2_tokens(tokenizer)"
        )
    if tokenizer.bos_token is None or tokenizer.eos_token is None:
        raise ValueError(f"{source} needs BOS and EOS tokens (LLaMA uses <s> and </s>)")


def image_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    check_tokenizer(tokenizer)
    return int(cast(int, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)))
