"""Every use of a private or internal API of an upstream library, one module per upstream.

``sae_lens.py``, ``transformer_lens.py``, ``torch.py``, ``transformers.py``: each function here names the internal it
relies on and why no public API serves, and each module names the upstream version it was checked
against. ``tests/compat/`` fails loudly when an upstream release moves one of them, and
``tests/compat/test_contained.py`` fails when a module outside this package uses one. An upstream
upgrade therefore starts here: rerun ``tests/compat`` on the new version, fix what it names.
(transformers needs little here: everything but a tokenizer's ``init_kwargs`` comes from its public
top-level exports, the image processor included.)
"""
