"""Runs that repeat bit for bit: a fixed intra-op thread count and deterministic algorithms.

Some CPU kernels split reductions across threads in a varying order; over a thousand steps of
training those last-bit differences grow into different models. With a fixed thread count and
deterministic algorithms a run repeats bit for bit on the same hardware and torch build (the demo
trains, caches and evaluates inside :func:`reproducible_torch`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def reproducible_torch(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads and deterministic algorithms, restoring both after.
    ``threads=None`` leaves torch's thread setting alone."""
    previous = torch.get_num_threads()
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    was_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    if threads:
        torch.set_num_threads(int(threads))
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
        torch.use_deterministic_algorithms(was_deterministic, warn_only=was_warn_only)
