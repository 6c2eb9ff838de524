"""transformers internals the plugin relies on. Checked against transformers 5.25.0.

Everything else the package takes from transformers is a public top-level export
(``AutoTokenizer``, ``LlamaTokenizer``, ``PreTrainedTokenizerBase``, ``BitImageProcessorPil``,
``Dinov2Backbone``, ``Dinov2Config``; ``tests/compat/test_contained.py`` refuses imports from
``transformers.<submodule>``). The one exception is a tokenizer's ``init_kwargs``: the keyword
arguments a tokenizer keeps to re-create itself, which transformers neither documents nor gives
a setter for, and which TransformerLens reads (see ``compat/transformer_lens.py``).
"""

from __future__ import annotations

from typing import Any


def tokenizer_init_kwargs(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's own ``init_kwargs`` dict (not a copy: edits change what it re-creates)."""
    kwargs = tokenizer.init_kwargs
    if not isinstance(kwargs, dict):
        raise TypeError(f"{type(tokenizer).__name__}.init_kwargs is {type(kwargs).__name__}, not a dict")
    return kwargs
