"""Unit-norm decoder rows, kept the way dictionary_learning keeps them, inside SAELens's trainer.

dictionary_learning does, every step: backward -> remove the gradient component parallel to each
decoder row -> clip -> optimiser step -> renormalise rows to unit norm. SAETrainer offers no hook
between those calls, so:

- the projection is a post-accumulate-grad hook on ``W_dec`` (runs after backward, before the
  trainer's gradient clipping; in place, no extra N x D buffer). It is (re)attached to the live
  parameter at every training forward, since SAELens's loaders replace parameters
  (``load_state_dict(assign=True)``).
- the renormalisation is a global optimiser step post-hook (``torch.optim`` public API) that
  renormalises ``W_dec`` of every constrained SAE whose decoder the stepping optimiser owns. It
  therefore works with SAETrainer, LanguageModelSAETrainingRunner and any hand-written loop.
"""

from __future__ import annotations

import weakref
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from sae_lens_maira.kernels.dispatch import fused_kernels

_CONSTRAINED: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_STEP_HOOK: Any = None


#: dictionary_learning's guard in the projection's ``w / (||w|| + 1e-6)``
PROJECTION_EPS = 1e-6


def _fused(impl: str, *tensors: Tensor) -> ModuleType | None:
    """The fused row kernels when they apply: 2-D tensors with unit column stride."""
    if any(t.dim() != 2 or t.stride(1) != 1 for t in tensors):
        return None
    return fused_kernels(impl, tensors[0].device)


def _accumulation_dtype(*tensors: Tensor) -> torch.dtype:
    """float32 at least (bf16/fp16 weights), the weights' own precision above it (float64)."""
    out = torch.float32
    for t in tensors:
        out = torch.promote_types(out, t.dtype)
    return out


@torch.no_grad()
def remove_parallel_component_(W_dec: Tensor, grad: Tensor, impl: str = "auto") -> Tensor:
    """In place: ``grad -= <grad, w_hat> w_hat`` per row, with dictionary_learning's 1e-6 guard.

    On CUDA (``impl`` ``"auto"``/``"triton"``) one fused Triton pass; the torch ops below read the
    ``N x D`` tensors five times.
    """
    fused = _fused(impl, W_dec, grad)
    if fused is not None:
        return fused.remove_parallel_component_(W_dec, grad, PROJECTION_EPS)
    acc = _accumulation_dtype(W_dec, grad)
    norm = torch.linalg.vector_norm(W_dec, dim=1, keepdim=True, dtype=acc)
    norm += PROJECTION_EPS
    # <grad_i, w_i> without an N x D temporary.
    dots = torch.bmm(grad.unsqueeze(1).to(acc), W_dec.unsqueeze(2).to(acc)).view(-1, 1)
    coef = (dots / norm.square()).to(grad.dtype)
    grad.addcmul_(W_dec.to(grad.dtype), coef, value=-1.0)
    return grad


@torch.no_grad()
def renormalize_rows_(W_dec: Tensor, impl: str = "auto") -> Tensor:
    """In place: every decoder row to unit norm (``/ (norm + eps)`` as dictionary_learning);
    one fused Triton pass on CUDA."""
    eps = torch.finfo(W_dec.dtype).eps
    fused = _fused(impl, W_dec)
    if fused is not None:
        return fused.renormalize_rows_(W_dec, eps)
    norm = torch.linalg.vector_norm(W_dec, dim=1, keepdim=True, dtype=_accumulation_dtype(W_dec))
    W_dec.div_((norm + eps).to(W_dec.dtype))
    return W_dec


def _project_hook(param: Tensor) -> None:
    if param.grad is not None:
        remove_parallel_component_(param.detach(), param.grad)


def _optimizer_post_step(optimizer: torch.optim.Optimizer, *_: Any) -> None:
    if len(_CONSTRAINED) == 0:
        return
    owned = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in list(_CONSTRAINED):
        W_dec = getattr(module, "W_dec", None)
        if W_dec is not None and id(W_dec) in owned:
            renormalize_rows_(W_dec.data)


def constrain_decoder(module: nn.Module) -> None:
    """Keep ``module.W_dec`` rows at unit norm under any torch optimiser; idempotent."""
    global _STEP_HOOK
    _CONSTRAINED.add(module)
    if _STEP_HOOK is None:
        _STEP_HOOK = register_optimizer_step_post_hook(_optimizer_post_step)
    attach_projection_hook(module)


def attach_projection_hook(module: nn.Module) -> None:
    """Register the gradient projection on the module's current ``W_dec`` (once per parameter)."""
    W_dec = module.W_dec
    if not isinstance(W_dec, nn.Parameter) or W_dec.device.type == "meta":
        return
    if getattr(W_dec, "_unit_norm_projection", False):
        return
    W_dec.register_post_accumulate_grad_hook(_project_hook)
    W_dec._unit_norm_projection = True  # type: ignore[attr-defined]
