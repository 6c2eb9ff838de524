"""Where the package keeps what it downloads or builds: one root, one folder per kind.

The root is ``$SAE_LENS_MAIRA_CACHE`` or ``~/.cache/sae-lens-maira``; the Open-I wheel lies in
``openi/``, the demo's rendered images in ``images/`` and its trained models in ``models/``.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "SAE_LENS_MAIRA_CACHE"
OPENI_DIR = "openi"


def default_cache_dir() -> Path:
    """The cache root: ``$SAE_LENS_MAIRA_CACHE``, else ``~/.cache/sae-lens-maira``."""
    base = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "sae-lens-maira"
    return Path(base).expanduser()


def openi_wheel_dir(root: str | Path | None = None) -> Path:
    """The folder of the Open-I (torchxrayvision) wheel under ``root`` (default: the cache root)."""
    return (Path(root).expanduser() if root is not None else default_cache_dir()) / OPENI_DIR
