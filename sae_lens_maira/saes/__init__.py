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

# Last line: its import tells sae_lens_maira.registration that the SAE classes are all defined.
from sae_lens_maira.saes import _complete  # noqa: E402, F401
