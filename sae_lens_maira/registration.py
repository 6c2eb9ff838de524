"""Register the plugin with SAELens: the ``matryoshka`` architecture, its loader, ``maira-2-sae``.

``import sae_lens_maira`` calls :func:`register_when_sae_lens_loads`: registration runs at once if
SAELens is already imported, else right after it is (a post-import hook, ``wrapt``), so importing
the plugin (or a light submodule such as ``sae_lens_maira.kernels``) does not import SAELens,
transformers or triton. When one of our own packages is what imports SAELens, registering from
the hook would re-enter that half-imported package; the hook then waits for the package's last
line, the import of its ``_complete`` module (a second post-import hook), and registers then. So
``saes/`` and ``loading/`` never import this module: registration depends on them, not back.
:func:`register` is idempotent (re-imports and reloads are harmless); a different class already
registered as ``matryoshka`` is an error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from sae_lens_maira.compat.sae_lens import refresh_registered_classes, registered_classes

#: Our packages that define registered things -> the module each imports as its last line.
_COMPLETE_MARKERS = {
    "sae_lens_maira.saes": "sae_lens_maira.saes._complete",
    "sae_lens_maira.loading": "sae_lens_maira.loading._complete",
}
_registering = False


def _register(
    kind: str,
    register_fn: Callable[[str, Any, Any], None],
    name: str,
    entry: tuple[type, type],
    what: str,
) -> None:
    current = registered_classes(kind, name)
    if current is None:
        register_fn(name, *entry)
    else:
        same = all(
            (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)
            for a, b in zip(current, entry, strict=True)
        )
        if not same:
            raise ValueError(
                f"SAELens already has a {what} class {current[0].__module__}."
                f"{current[0].__qualname__} registered as '{name}'; sae_lens_maira cannot "
                "register its own there. Remove the other plugin's registration."
            )
        refresh_registered_classes(kind, name, entry)  # the same classes, or a reload: refresh


def _half_imported() -> list[str]:
    """Our packages that are being imported now (importing them again from a hook would fail)."""
    return [
        package
        for package, marker in _COMPLETE_MARKERS.items()
        if package in sys.modules and marker not in sys.modules
    ]


def register_if_sae_lens_loaded() -> None:
    """Register if SAELens is imported; when one of our packages is mid-import, register as soon
    as it completes; without SAELens do nothing."""
    if "sae_lens" not in sys.modules:
        return
    half = _half_imported()
    if not half:
        register()
        return
    import wrapt

    for package in half:
        wrapt.register_post_import_hook(
            lambda _module: register_if_sae_lens_loaded(), _COMPLETE_MARKERS[package]
        )


def register_when_sae_lens_loads() -> None:
    """Register now if ``sae_lens`` is imported, else as soon as it is (idempotent)."""
    import wrapt

    wrapt.register_post_import_hook(lambda _module: register_if_sae_lens_loaded(), "sae_lens")


def register() -> None:
    """Register architectures, the dictionary_learning loader and the published releases."""
    global _registering
    if _registering:  # importing our packages below calls back in here
        return
    _registering = True
    try:
        _register_all()
    finally:
        _registering = False


def _register_all() -> None:
    from sae_lens import register_sae_class, register_sae_training_class

    from sae_lens_maira.compat.sae_lens import (
        add_to_pretrained_directory,
        register_pretrained_loader,
    )
    from sae_lens_maira.loading.dictionary_learning import (
        dictionary_learning_hub_loader,
        get_dictionary_learning_config_from_hf,
    )
    from sae_lens_maira.loading.releases import LOADER_NAME, plugin_releases
    from sae_lens_maira.saes import (
        ARCHITECTURE,
        MatryoshkaSAE,
        MatryoshkaSAEConfig,
        MatryoshkaTrainingSAE,
        MatryoshkaTrainingSAEConfig,
    )

    _register(
        "sae",
        register_sae_class,
        ARCHITECTURE,
        (MatryoshkaSAE, MatryoshkaSAEConfig),
        "SAE",
    )
    _register(
        "training",
        register_sae_training_class,
        ARCHITECTURE,
        (MatryoshkaTrainingSAE, MatryoshkaTrainingSAEConfig),
        "training SAE",
    )
    register_pretrained_loader(
        LOADER_NAME, dictionary_learning_hub_loader, get_dictionary_learning_config_from_hf
    )
    add_to_pretrained_directory(plugin_releases)
