"""Matryoshka BatchTopK SAEs (dictionary_learning's recipe) for SAELens, architecture ``matryoshka``."""

from sae_lens_maira.saes.config import (
    ARCHITECTURE,
    MatryoshkaSAEConfig,
    MatryoshkaTrainingSAEConfig,
    dictionary_learning_lr,
)
from sae_lens_maira.saes.matryoshka_sae import MatryoshkaSAE, MatryoshkaTrainingSAE

__all__ = [
    "ARCHITECTURE",
    "MatryoshkaSAE",
    "MatryoshkaSAEConfig",
    "MatryoshkaTrainingSAE",
    "MatryoshkaTrainingSAEConfig",
    "dictionary_learning_lr",
]

_fully_imported = True

from sae_lens_maira.registration import register_if_sae_lens_loaded  # noqa: E402

register_if_sae_lens_loaded()
