"""Register the plugin with SAELens: the ``matryoshka`` architecture, its loader, ``maira-2-sae``.

``import sae_lens_maira`` calls :func:`register`; calling it again (or re-importing, or reloading
the modules) is harmless. A different class already registered as ``matryoshka`` is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def _register(
    registry: dict[str, Any],
    register_fn: Callable[[str, Any, Any], None],
    name: str,
    entry: tuple[type, type],
    kind: str,
) -> None:
    current = registry.get(name)
    if current is None:
        register_fn(name, *entry)
    else:
        same = all(
            (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__)
            for a, b in zip(current, entry, strict=True)
        )
        if not same:
            raise ValueError(
                f"SAELens already has a {kind} class {current[0].__module__}."
                f"{current[0].__qualname__} registered as '{name}'; sae_lens_maira cannot "
                "register its own there. Remove the other plugin's registration."
            )
        registry[name] = entry  # the same classes again, or a reload of them: refresh


def register() -> None:
    """Register architectures, the dictionary_learning loader and the published releases."""
    from sae_lens import register_sae_class, register_sae_training_class
    from sae_lens.loading import pretrained_sae_loaders as loaders
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    from sae_lens_maira.loading.dictionary_learning import (
        dictionary_learning_hub_loader,
        get_dictionary_learning_config_from_hf,
    )
    from sae_lens_maira.loading.releases import LOADER_NAME, install_release_directory
    from sae_lens_maira.saes import (
        ARCHITECTURE,
        MatryoshkaSAE,
        MatryoshkaSAEConfig,
        MatryoshkaTrainingSAE,
        MatryoshkaTrainingSAEConfig,
    )

    _register(
        SAE_CLASS_REGISTRY,
        register_sae_class,
        ARCHITECTURE,
        (MatryoshkaSAE, MatryoshkaSAEConfig),
        "SAE",
    )
    _register(
        SAE_TRAINING_CLASS_REGISTRY,
        register_sae_training_class,
        ARCHITECTURE,
        (MatryoshkaTrainingSAE, MatryoshkaTrainingSAEConfig),
        "training SAE",
    )
    loaders.NAMED_PRETRAINED_SAE_LOADERS[LOADER_NAME] = dictionary_learning_hub_loader
    loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS[LOADER_NAME] = (
        get_dictionary_learning_config_from_hf
    )
    install_release_directory()
