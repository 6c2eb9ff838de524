"""Choosing an implementation per device and shape, and loading its backend.

``auto`` picks Triton on CUDA (when triton imports), ``embedding_bag`` on CPU, and the dense path
where a gather cannot beat a matmul: many actives per row. On CPU the measured break-even of the
decode forward+backward (1 thread, D 512, N 8192, B 2048) sits far above k = N/8, so the rule
``k > N / 8 or k > 512`` leaves a wide margin; on an H100 the performance model (N/k against the
FLOP/byte ratio ~300, see docs) puts the decoder-only break-even near N/k ~ 300, but the sparse
encoder backward, the single Matryoshka pass and the memory saved keep sparse ahead below it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from typing import Literal, get_args

import torch

from sae_lens_maira.kernels.backend import SparseBackend

logger = logging.getLogger(__name__)

DecoderImpl = Literal["auto", "triton", "embedding_bag", "dense"]
IMPLS: tuple[str, ...] = get_args(DecoderImpl)

#: Above this many actives per row the dense matmul path is used (as OpenAI's TopK kernels do).
DENSE_ABOVE_K = 512
#: ... and also when more than ``1 / DENSE_ABOVE_FRACTION`` of the latents are active per row.
DENSE_ABOVE_FRACTION = 8

_logged: set[tuple[object, ...]] = set()


def triton_available() -> bool:
    """Whether the ``triton`` package is installed (found without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _check_triton(device: torch.device) -> None:
    if not triton_available():
        raise ValueError(
            "impl='triton' needs the triton package: install it with "
            "`pip install 'sae-lens-maira[gpu]'` (or `pip install triton`), or pass "
            "impl='embedding_bag' or impl='dense'."
        )
    if device.type == "cpu" and not triton_interpreting():
        raise ValueError(
            "impl='triton' on CPU tensors needs Triton's interpreter: set the environment "
            "variable TRITON_INTERPRET=1 before triton is imported (slow, meant for tests), "
            "move the tensors to a CUDA device, or use impl='embedding_bag' (the fast CPU path)."
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(
            f"impl='triton' runs on CUDA devices, not {device.type!r}; use impl='embedding_bag' "
            "or impl='dense'."
        )


def _sparse_cannot_win(n_latents: int, k: float) -> bool:
    return k > DENSE_ABOVE_K or k * DENSE_ABOVE_FRACTION > n_latents


def resolve_impl(
    impl: str, *, device: torch.device | str, n_latents: int, k: float, d: int
) -> str:
    """The implementation to run for ``impl`` on ``device`` with ``k`` actives per row (mean).

    Raises ValueError for an unknown name or for ``"triton"`` where it cannot run. Logs the
    choice (INFO) once per (request, device, shape).
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    device = torch.device(device)
    if impl == "triton":
        _check_triton(device)
        chosen = "triton"
    elif impl != "auto":
        chosen = impl
    elif _sparse_cannot_win(n_latents, k):
        chosen = "dense"
    elif device.type == "cuda" and triton_available() and not triton_interpreting():
        chosen = "triton"
    else:
        chosen = "embedding_bag"
    key = (impl, chosen, device.type, n_latents, d, int(k).bit_length())
    if key not in _logged:
        _logged.add(key)
        logger.info(
            "sparse SAE ops: using %s on %s (requested %s; n_latents=%d, k=%.4g per row, d=%d)",
            chosen,
            device.type,
            impl,
            n_latents,
            k,
            d,
        )
    return chosen


def get_backend(name: str) -> SparseBackend:
    """The backend module for a sparse implementation name (imports Triton only when asked)."""
    if name == "embedding_bag":
        from sae_lens_maira.kernels.embedding_bag import BACKEND

        return BACKEND
    if name == "triton":
        return importlib.import_module("sae_lens_maira.kernels.triton_ops").BACKEND
    raise ValueError(f"no sparse backend named {name!r}; sparse backends are triton, embedding_bag")
