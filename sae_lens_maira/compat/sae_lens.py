"""SAELens internals the plugin relies on. Checked against sae-lens 6.54.12 (the tests pass from
6.49.2 on: CONTRIBUTING.md "Upstream versions").

SAELens has public ``register_sae_class`` / ``register_sae_training_class``; everything else here
has no public counterpart: the named pretrained loaders are module-level dicts, the pretrained
directory is a cached function bound by name in several modules, the shard consolidation is a
private static method, and the training runner has no hooks for its evaluator, checkpoint saves
or activation stream.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def sae_architectures() -> list[str]:
    """Names in SAELens's inference SAE registry (for error messages)."""
    from sae_lens.registry import SAE_CLASS_REGISTRY

    return sorted(SAE_CLASS_REGISTRY)


def training_architectures() -> list[str]:
    """Names in SAELens's training SAE registry (for error messages)."""
    from sae_lens.registry import SAE_TRAINING_CLASS_REGISTRY

    return sorted(SAE_TRAINING_CLASS_REGISTRY)


def registered_classes(kind: str, name: str) -> tuple[type, type] | None:
    """The (class, config class) registered under ``name``; ``kind`` is ``"sae"`` or ``"training"``."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    registry = SAE_CLASS_REGISTRY if kind == "sae" else SAE_TRAINING_CLASS_REGISTRY
    return registry.get(name)


def refresh_registered_classes(kind: str, name: str, entry: tuple[type, type]) -> None:
    """Overwrite an entry (a reload of the same classes): the public register refuses to."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, SAE_TRAINING_CLASS_REGISTRY

    (SAE_CLASS_REGISTRY if kind == "sae" else SAE_TRAINING_CLASS_REGISTRY)[name] = entry


def register_pretrained_loader(name: str, loader: Callable, config_getter: Callable) -> None:
    """Add a named loader for ``conversion_func`` of a release (SAELens has no register call)."""
    from sae_lens.loading import pretrained_sae_loaders as loaders

    loaders.NAMED_PRETRAINED_SAE_LOADERS[name] = loader
    loaders.NAMED_PRETRAINED_SAE_CONFIG_GETTERS[name] = config_getter


def add_to_pretrained_directory(releases: Callable[[], dict[str, Any]]) -> None:
    """Make ``get_pretrained_saes_directory()`` include ``releases()`` (idempotent, lazy).

    SAELens parses its packaged YAML once, through the ``lru_cache``'d function that several of
    its modules bound by name at import; parsing takes seconds, so nothing is read here. The
    function is wrapped (in every loaded ``sae_lens*`` module that holds it) to add our lookups to
    the cached dict the first time anyone asks for it; ``cache_clear``/``cache_info`` pass through.
    """
    import sys

    import sae_lens.loading.pretrained_saes_directory as directory_module

    original = directory_module.get_pretrained_saes_directory
    if getattr(original, "_sae_lens_maira", False):
        return

    def get_pretrained_saes_directory() -> dict[str, Any]:
        directory = original()  # SAELens's cached dict: adding to it persists
        for name, lookup in releases().items():
            directory.setdefault(name, lookup)
        return directory

    wrapper: Any = get_pretrained_saes_directory
    wrapper.cache_clear = original.cache_clear
    wrapper.cache_info = original.cache_info
    wrapper.__wrapped__ = original
    wrapper._sae_lens_maira = True
    for name, module in list(sys.modules.items()):
        if (
            name.startswith("sae_lens")
            and getattr(module, "get_pretrained_saes_directory", None) is original
        ):
            setattr(module, "get_pretrained_saes_directory", wrapper)  # noqa: B010


def consolidate_shards(source: Path, output: Path) -> Any:
    """SAELens's own merge of saved ``datasets`` shards into one dataset folder, by hard links /
    moves (``CacheActivationsRunner._consolidate_shards``, ``copy_files=False``); the Dataset."""
    from sae_lens.cache_activations_runner import CacheActivationsRunner

    return CacheActivationsRunner._consolidate_shards(source, output, copy_files=False)


def replace_evaluator(runner: Any, evaluator: Any) -> None:
    """Give a training runner another evaluator (ours runs on multimodal prompts)."""
    runner.evaluator = evaluator


def replace_activations_store(runner: Any, store: Any) -> None:
    """Give a training runner, before ``run()``, another activations store to train from (the
    runner builds its trainer's data provider from ``runner.activations_store`` in ``run()``)."""
    runner.activations_store = store


def restart_tokenized_sequences(store: Any) -> None:
    """Start ``store``'s tokenized-sequence stream over from its (already reset) input dataset.

    ``ActivationsStore.reset_input_dataset`` resets only the raw dataset iterator; the sequences
    ``get_batch_tokens`` reads come from ``iterable_sequences``, a generator made by the private
    ``_iterate_tokenized_sequences``, which would otherwise go on from where it was."""
    store.iterable_sequences = store._iterate_tokenized_sequences()


def evaluator_store(runner: Any) -> Any:
    """The activations store the runner's evaluator reads."""
    return runner.evaluator.activations_store


#: The runner methods ``run()`` calls through ``self`` (so an instance attribute replaces them).
RUNNER_METHODS = ("save_checkpoint", "save_final_sae", "run_trainer_with_interruption_handling")


def wrap_runner_method(runner: Any, name: str, wrap: Callable[[Callable], Callable]) -> None:
    """Replace ``runner.<name>`` (one of :data:`RUNNER_METHODS`, which ``run()`` calls) by
    ``wrap(original)`` on this runner only."""
    if name not in RUNNER_METHODS:
        raise ValueError(f"no runner hook {name!r}; one of {RUNNER_METHODS}")
    setattr(runner, name, wrap(getattr(runner, name)))


def filter_training_batches(
    runner: Any, keep: Callable[[Iterator[Any]], Iterator[Any]]
) -> None:
    """Pass the runner's activation batches through ``keep`` (the store's data loader)."""
    store = runner.activations_store
    loader = store.get_data_loader
    store.get_data_loader = lambda: keep(loader())


@contextmanager
def runner_interruptions_as_keyboard_interrupt() -> Iterator[None]:
    """Around ``runner.run()``: SAELens installs SIGINT / SIGTERM handlers that raise its private
    ``InterruptedException`` (after saving a checkpoint) and never removes them. Here that
    exception becomes a KeyboardInterrupt, and the process's own handlers come back afterwards."""
    import signal

    from sae_lens.training._interruption import InterruptedException

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    except InterruptedException:
        raise KeyboardInterrupt from None
    finally:
        for sig, handler in handlers.items():
            if handler is not None:
                signal.signal(sig, handler)


#: What SAELens says about choices ``train_sae`` makes on purpose, in words that read as problems:
#: its own dataset and model (the only way to train on virtual image tokens), evaluation prompts
#: longer than the cache's packing rows, fewer *studies* than training *tokens* (it compares the
#: two), and torch's advice on the rows it slices from an in-memory torch dataset (once per row).
EXPECTED_MESSAGES = (
    r"You just passed in a (dataset|model) which will override",
    r"The training dataset contains fewer samples",
    r"pretokenized dataset has context_size",
    r"To copy construct from a tensor",
)


class _DropExpected(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(re.match(m, record.getMessage()) for m in EXPECTED_MESSAGES)


@contextmanager
def expected_messages_silenced() -> Iterator[None]:
    """Within the block, SAELens's warnings (and its logger's) about those choices are dropped;
    every other warning still shows."""
    sae_lens_logger = logging.getLogger("sae_lens")
    drop = _DropExpected()
    sae_lens_logger.addFilter(drop)
    try:
        with warnings.catch_warnings():
            for message in EXPECTED_MESSAGES:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        sae_lens_logger.removeFilter(drop)
