"""torch.autocast support: the ops behave like a matmul under autocast.

Inside an autocast region the ops compute in the autocast dtype and run their kernels with
autocast switched off, so nothing inside them is re-cast behind our back. Every backend takes
the dtype (:func:`autocast_dtype`): the dense one casts its inputs differentiably, the sparse
autograd functions cast internally, writing fp32 weight gradients directly.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype when autocast is on for ``device``, else None."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except (RuntimeError, ValueError):  # a device type autocast does not know (e.g. meta)
        return None
    return None


def autocast_off(device: torch.device) -> AbstractContextManager[object]:
    """A context with autocast disabled for ``device`` (a no-op when it is not enabled)."""
    if autocast_dtype(device) is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)
