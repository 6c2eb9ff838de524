"""MAIRA-2 in TransformerLens: config presets, vision tower + projector, checkpoints, HookedMaira2."""

from sae_lens_maira.checkpoint_config import Maira2Config
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.model.image_bank import ImageBank

__all__ = ["HookedMaira2", "ImageBank", "Maira2Config"]
