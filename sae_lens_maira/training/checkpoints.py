"""Complete training checkpoints: a marker written last, so ``--resume`` never picks a torn one.

SAELens writes a checkpoint folder file by file (weights, sparsity, trainer state, then the
activation store and runner config through the runner's ``save_checkpoint``), and on an
interrupt it would write only the last two (``mark_checkpoints_complete`` has the trainer write
its part too). A folder counts as complete once
``checkpoint_complete.json`` exists, written atomically after all of them, listing every file
with its size; ``latest_checkpoint`` takes the newest complete folder and says which it passed over.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

MARKER = "checkpoint_complete.json"
#: Files SAELens's trainer writes into every checkpoint before the runner's part.
REQUIRED = ("trainer_state.pt", "cfg.json")


def mark_complete(folder: Path) -> bool:
    """Write the marker if the trainer's files are all there (not after an interrupt-only save)."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in REQUIRED):
        return False
    files = {
        p.name: p.stat().st_size
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MARKER
    }
    tmp = folder / (MARKER + ".tmp")
    tmp.write_text(json.dumps({"files": files}, indent=1))
    os.replace(tmp, folder / MARKER)
    return True


def incompleteness(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint, or None when it is."""
    marker = folder / MARKER
    if not marker.is_file():
        return "no completion marker (the save was interrupted)"
    try:
        files = json.loads(marker.read_text())["files"]
    except (ValueError, KeyError):
        return "unreadable completion marker"
    for name, size in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the marker says {size}"
    return None


def latest_checkpoint(root: Path | None) -> Path | None:
    """The newest complete SAELens checkpoint folder (``<root>/<run id>/<n tokens>``) under ``root``."""
    if root is None or not Path(root).is_dir():
        return None
    found = [p for p in Path(root).glob("*/*") if p.is_dir() and p.name.isdigit()]
    found.sort(key=lambda p: (p.stat().st_mtime, int(p.name)), reverse=True)
    for p in found:
        why = incompleteness(p)
        if why is None:
            return p
        logger.warning("skipping incomplete checkpoint %s: %s", p, why)
    return None


def describe_incomplete(root: Path) -> list[str]:
    return [f"{p}: {incompleteness(p)}" for p in sorted(Path(root).glob("*/*"))
            if p.is_dir() and p.name.isdigit() and incompleteness(p)]  # fmt: skip


def mark_checkpoints_complete(runner: Any) -> None:
    """Wrap the runner's ``save_checkpoint`` (the last writer of a checkpoint) to add the marker.

    On Ctrl-C / SIGTERM SAELens saves only the runner's part, into a folder it never creates;
    the wrapper then has the trainer write its part first, so the checkpoint is complete and
    ``--resume`` continues from it."""
    from sae_lens_maira.compat.sae_lens import wrap_runner_method

    trainers: list[Any] = []  # the trainer run() builds, seen by the wrapper below

    def remember(run_trainer: Callable[..., Any]) -> Callable[..., Any]:
        def remember_trainer(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            trainers.append(trainer)
            return run_trainer(trainer, *args, **kwargs)

        return remember_trainer

    wrap_runner_method(runner, "run_trainer_with_interruption_handling", remember)

    def wrap(save: Callable[[Path | None], None]) -> Callable[[Path | None], None]:
        def save_then_mark(checkpoint_path: Path | None) -> None:
            if checkpoint_path is None:
                save(checkpoint_path)
                return
            folder = Path(checkpoint_path)
            if trainers and not all((folder / name).is_file() for name in REQUIRED):
                # the interrupt save: the trainer's save writes its files, then calls us again
                trainers[-1].save_checkpoint(checkpoint_name=folder.name, base_path=folder.parent)
                return
            save(checkpoint_path)
            mark_complete(folder)

        return save_then_mark

    wrap_runner_method(runner, "save_checkpoint", wrap)
