"""Prompts, image preprocessing, token roles and grounded-output parsing for MAIRA-2."""

from sae_lens_maira.processing.grounding import GroundedPhrase, parse_grounded_output
from sae_lens_maira.processing.images import ImageLoadError, ImagePreprocessor
from sae_lens_maira.processing.processor import Maira2Inputs, Maira2Processor
from sae_lens_maira.processing.roles import Role
from sae_lens_maira.processing.tokenizer import build_maira2_tokenizer, load_tokenizer

__all__ = [
    "GroundedPhrase", "ImageLoadError", "ImagePreprocessor", "Maira2Inputs", "Maira2Processor", "Role",
    "build_maira2_tokenizer", "load_tokenizer", "parse_grounded_output",
]  # fmt: skip
