"""Published SAE releases the plugin adds to SAELens's pretrained directory (``maira-2-sae``).

SAELens reads releases from its packaged YAML through the cached
``get_pretrained_saes_directory()``; :mod:`sae_lens_maira.registration` adds these lookups to it
lazily (:func:`sae_lens_maira.compat.sae_lens.add_to_pretrained_directory`).
"""

from __future__ import annotations

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
            # SAELens annotates the overrides str-valued, but merges them into the SAE config as they
            # are (get_config_overrides returns dict[str, Any]): d_in must stay an int
            config_overrides={  # pyright: ignore[reportArgumentType]
                "model_name": MAIRA2_MODEL,
                "hook_name": MAIRA2_HOOK,
                "d_in": MAIRA2_D_IN,
            },
        )
    }
