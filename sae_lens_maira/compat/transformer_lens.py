"""TransformerLens internals the plugin relies on. Checked against transformer-lens 3.9.0.

Neither has a public counterpart: the rotary base a layer was built with is a private method of
``AbstractAttention``, and ``set_tokenizer`` re-creates a tokenizer from its ``init_kwargs``
(``get_tokenizer_with_bos``), which fails for tokenizers built in memory (that dict is a
transformers internal too: ``compat/transformers.py`` holds the one read of it).
"""

from __future__ import annotations

from typing import Any

from sae_lens_maira.compat.transformers import tokenizer_init_kwargs


def rotary_base(attention: Any) -> float:
    """The rotary base of an attention layer (``AbstractAttention._rotary_base()``), as
    TransformerLens itself uses to build ``rotary_sin``/``rotary_cos``."""
    return attention._rotary_base()


def keep_tokenizer_on_set(tokenizer: Any) -> None:
    """Let ``HookedTransformer.set_tokenizer`` keep ``tokenizer`` itself when it adds BOS already.

    TransformerLens's ``get_tokenizer_with_bos`` pops ``name_or_path`` from ``init_kwargs`` and,
    unless ``add_bos_token`` is there, reloads the tokenizer from that path with
    ``add_bos_token=True``.
    """
    init_kwargs = tokenizer_init_kwargs(tokenizer)
    init_kwargs.setdefault("name_or_path", tokenizer.name_or_path or "")
    ids = tokenizer("").input_ids
    if ids and ids[0] == tokenizer.bos_token_id:
        init_kwargs["add_bos_token"] = True


def swap_class(module: Any, cls: type) -> None:
    """Make ``module`` an instance of ``cls``, a subclass of its class with the same fields (only
    methods differ), keeping its parameters and buffers where they are: no second copy of a
    layer's weights, as constructing ``cls`` and loading the state dict would make."""
    if not issubclass(cls, type(module)):
        raise TypeError(f"{cls.__name__} is not a subclass of {type(module).__name__}")
    module.__class__ = cls
