"""An exclusive lock on an output folder, so two runs never write into the same cache.

The lock is ``fcntl.flock`` on ``<folder>/.lock``: the kernel drops it when the holder's process
dies (SIGKILL included), so a stale lock of a dead run never blocks the next one. The file
holds the holder's pid, host and start time for the refusal message. Released locks delete the
file; a taker re-checks that the file it locked is still the one at the path (a releaser may have
unlinked it in between), the usual flock-with-unlink pattern.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_FILE = ".lock"


class OutputLockedError(RuntimeError):
    """Another live process holds the output folder."""


class OutputLock:
    """``with OutputLock(folder):`` holds ``folder`` exclusively (non-blocking: refuses at once)."""

    def __init__(self, folder: str | Path, what: str = "run") -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> OutputLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise OutputLockedError(
                    f"{self.folder} is in use by another {self.what} ({holder}); wait for it to "
                    f"finish or stop it (a killed run's lock is released by the kernel)"
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the previous holder unlinked it after we opened it: lock the new one
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "holder unknown"
    return f"pid {info.get('pid')} on host {info.get('host')}, since {info.get('since')}"
