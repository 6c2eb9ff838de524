"""sae-lens-maira: MAIRA-2 in TransformerLens and Matryoshka BatchTopK SAEs for SAELens.

Importing the package registers its SAE architectures and the ``maira-2-sae`` release with
SAELens (see :mod:`sae_lens_maira.registration`); heavier modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "HookedMaira2": "sae_lens_maira.model.hooked_maira2",
    "Maira2Config": "sae_lens_maira.checkpoint_config",
    "Maira2Processor": "sae_lens_maira.processing.processor",
    "ImageBank": "sae_lens_maira.model.image_bank",
    "Study": "sae_lens_maira.data.study",
}

if TYPE_CHECKING:  # pragma: no cover
    from sae_lens_maira.checkpoint_config import Maira2Config
    from sae_lens_maira.data.study import Study
    from sae_lens_maira.model.hooked_maira2 import HookedMaira2
    from sae_lens_maira.model.image_bank import ImageBank
    from sae_lens_maira.processing.processor import Maira2Processor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sae_lens_maira' has no attribute {name!r}")


__all__ = ["HookedMaira2", "ImageBank", "Maira2Config", "Maira2Processor", "Study", "__version__"]

from sae_lens_maira.registration import register_when_sae_lens_loads  # noqa: E402

register_when_sae_lens_loads()
