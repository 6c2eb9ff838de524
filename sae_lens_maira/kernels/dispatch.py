"""Choosing an implementation per device and shape, and loading its backend.

``auto`` picks Triton on CUDA (when triton imports), ``embedding_bag`` elsewhere, and the dense
path where a gather cannot beat a matmul: when fewer than ``MIN_LATENTS_PER_ACTIVE[device]``
latents exist per active one (N / k small).

* CPU, measured (1 thread, B 1024, D 512, decode forward + backward, embedding_bag vs dense):
  N/k = 128: 22-31x, 32: 10x, 16: 4.7x, 8: 2.4-2.8x, 4: 1.5x, 2: 0.56x. Break-even near
  N/k = 3, so dense from N/k < 4; no absolute cap on k (k = 1024 of 8192 was still 2.4x).
* CUDA, measured on an H100 (bf16 autocast, fp32 weights, B 4096, D 4096, k 64; a full SAETrainer
  step of ours against SAELens's ``matryoshka_batchtopk``, ``benchmarks/sae_step.py``):
  N/k = 64: dense 1.13x, Triton 1.08x; N/k = 128: dense 1.38x, Triton 1.75x; N/k = 256: dense
  1.55x, Triton 2.03x (d_sae 4096 / 8192 / 16384, one run each on one machine, with the bf16
  gathers and fused row kernels: ``benchmarks/results/sae_step_cuda_dispatch.json``; at
  N/k = 1024 Triton ran 2.9x, ``sae_step_cuda.json``). So ``auto`` runs Triton from N/k = 128 and
  the dense step (one grouped decode instead of SAELens's one per prefix) below.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from types import ModuleType
from typing import Literal, cast, get_args

import torch

from sae_lens_maira.kernels.backend import OpsBackend

logger = logging.getLogger(__name__)

DecoderImpl = Literal["auto", "triton", "embedding_bag", "dense"]
IMPLS: tuple[str, ...] = get_args(DecoderImpl)

#: ``auto`` runs dense when ``n_latents / k`` falls below this (per device type; see above).
MIN_LATENTS_PER_ACTIVE: dict[str, float] = {"cpu": 4.0, "cuda": 128.0}
#: For other device types (e.g. ``mps``), a middle-of-the-road guess.
DEFAULT_MIN_LATENTS_PER_ACTIVE = 8.0

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


def _triton_by_default(device: torch.device) -> bool:
    """Whether ``auto`` may use Triton here: CUDA tensors, triton installed, not interpreting."""
    return device.type == "cuda" and triton_available() and not triton_interpreting()


def _sparse_cannot_win(device: torch.device, n_latents: int, k: float) -> bool:
    ratio = MIN_LATENTS_PER_ACTIVE.get(device.type, DEFAULT_MIN_LATENTS_PER_ACTIVE)
    return k * ratio > n_latents


def resolve_impl(
    impl: str, *, device: torch.device | str, n_latents: int, k: float, d: int
) -> DecoderImpl:
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
        chosen = cast(DecoderImpl, impl)
    elif _sparse_cannot_win(device, n_latents, k):
        chosen = "dense"
    elif _triton_by_default(device):
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


def get_backend(name: str) -> OpsBackend:
    """The backend for an implementation name, as :func:`resolve_impl` returns it (imports Triton
    only when asked)."""
    if name == "dense":
        from sae_lens_maira.kernels.dense import BACKEND as DENSE

        return DENSE
    from sae_lens_maira.kernels.gather import gather_ops

    if name == "embedding_bag":
        from sae_lens_maira.kernels.embedding_bag import BACKEND

        return gather_ops(BACKEND)
    if name == "triton":
        return gather_ops(importlib.import_module("sae_lens_maira.kernels.triton_ops").BACKEND)
    raise ValueError(f"no backend named {name!r}; backends are triton, embedding_bag, dense")


def fused_kernels(impl: str, device: torch.device | str) -> ModuleType | None:
    """The fused row-wise Triton kernels (:mod:`~sae_lens_maira.kernels.triton_fused`) when
    ``impl`` is ``"triton"``, or ``"auto"`` / ``"dense"`` on CUDA with Triton installed; else None
    (torch ops). ``dense`` names how decode and encode run (matmuls); the row passes beside them
    (prefix losses, decoder projection) are not matmuls and take the fused kernels as ``auto`` does.
    """
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    device = torch.device(device)
    if impl == "triton":
        _check_triton(device)
    elif impl not in ("auto", "dense") or not _triton_by_default(device):
        return None
    return importlib.import_module("sae_lens_maira.kernels.triton_fused")
