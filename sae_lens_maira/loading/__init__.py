"""Loaders for published SAEs: dictionary_learning checkpoints and the ``maira-2-sae`` release."""

from sae_lens_maira.loading.dictionary_learning import (
    dictionary_learning_disk_loader,
    dictionary_learning_hub_loader,
    load_dictionary_learning_sae,
)
from sae_lens_maira.loading.releases import (
    MAIRA2_HOOK,
    MAIRA2_RELEASE,
    MAIRA2_REPO_ID,
    plugin_releases,
)

__all__ = [
    "MAIRA2_HOOK",
    "MAIRA2_RELEASE",
    "MAIRA2_REPO_ID",
    "dictionary_learning_disk_loader",
    "dictionary_learning_hub_loader",
    "load_dictionary_learning_sae",
    "plugin_releases",
]

# Last line: its import tells sae_lens_maira.registration that the loaders and releases are all defined.
from sae_lens_maira.loading import _complete  # noqa: E402, F401
