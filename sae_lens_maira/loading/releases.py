"""Published SAE releases the plugin adds to SAELens's pretrained directory (``maira-2-sae``).

SAELens reads releases from its packaged YAML through the cached
``get_pretrained_saes_directory()``. Parsing that YAML takes seconds, so nothing is read at import:
the function is wrapped (in the SAELens modules that bound it) to add our lookups to the cached
directory the first time anyone asks for it. Relies on sae-lens 6.54 internals (pinned, tested).
"""

from __future__ import annotations

import sys
from typing import Any

from sae_lens.loading.pretrained_saes_directory import PretrainedSAELookup

MAIRA2_RELEASE = "maira-2-sae"
MAIRA2_REPO_ID = "microsoft/maira-2-sae"
MAIRA2_MODEL = "maira-2"
MAIRA2_HOOK = "blocks.15.hook_resid_post"
MAIRA2_D_IN = 4096
LOADER_NAME = "sae_lens_maira.dictionary_learning"

# sae_id -> "folder": the loader resolves ef<N> by reading each folder's config (no guessing).
_MAIRA2_SAE_IDS = ("ef2", "ef4", "ef8")


def plugin_releases() -> dict[str, PretrainedSAELookup]:
    """The releases this plugin provides, keyed by release name."""
    return {
        MAIRA2_RELEASE: PretrainedSAELookup(
            release=MAIRA2_RELEASE,
            repo_id=MAIRA2_REPO_ID,
            model=MAIRA2_MODEL,
            conversion_func=LOADER_NAME,
            saes_map={sae_id: sae_id for sae_id in _MAIRA2_SAE_IDS},
            expected_var_explained={},
            expected_l0={},
            neuronpedia_id={},
            norm_scaling_factor={},
            config_overrides={
                "model_name": MAIRA2_MODEL,
                "hook_name": MAIRA2_HOOK,
                "d_in": MAIRA2_D_IN,
            },
        )
    }


def install_release_directory() -> None:
    """Make ``get_pretrained_saes_directory()`` include our releases (idempotent, lazy)."""
    import sae_lens.loading.pretrained_saes_directory as directory_module

    original = directory_module.get_pretrained_saes_directory
    if getattr(original, "_sae_lens_maira", False):
        return

    def get_pretrained_saes_directory() -> dict[str, PretrainedSAELookup]:
        directory = original()  # SAELens's cached dict: adding to it persists
        for name, lookup in plugin_releases().items():
            directory.setdefault(name, lookup)
        return directory

    wrapper: Any = get_pretrained_saes_directory
    wrapper.cache_clear = original.cache_clear
    wrapper.cache_info = original.cache_info
    wrapper.__wrapped__ = original
    wrapper._sae_lens_maira = True
    for name, module in list(sys.modules.items()):
        if (
            name.startswith("sae_lens")
            and getattr(module, "get_pretrained_saes_directory", None) is original
        ):
            module.get_pretrained_saes_directory = wrapper  # type: ignore[attr-defined]
