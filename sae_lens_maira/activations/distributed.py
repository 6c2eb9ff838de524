"""torch.distributed set-up for commands launched with ``torchrun`` (one process per GPU/CPU)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def distributed_context(device: str) -> Iterator[tuple[int, int, str]]:
    """Yield (rank, world_size, device). Initialises and tears down a process group under torchrun.

    NCCL on CUDA (one GPU per local rank), gloo on CPU. A plain ``python`` launch is rank 0 of 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield 0, 1, device
        return
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        backend = "nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(backend=backend)
    try:
        yield rank, world_size, device
    finally:
        torch.distributed.destroy_process_group()
