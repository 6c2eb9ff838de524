"""Unit-norm decoder rows, kept the way dictionary_learning keeps them, inside SAELens's trainer.

dictionary_learning does, every step: backward -> remove the gradient component parallel to each
decoder row -> clip -> optimiser step -> renormalise rows to unit norm. SAETrainer offers no hook
between those calls, so:

- the projection is a post-accumulate-grad hook on ``W_dec`` (runs after backward, before the
  trainer's gradient clipping; in place, no extra N x D buffer). It is (re)attached to the live
  parameter at every training forward, since SAELens's loaders replace parameters
  (``load_state_dict(assign=True)``).
- the renormalisation is a step post-hook on the SAE's *own* optimiser
  (``Optimizer.register_step_post_hook``, attached by :func:`constrain_optimizer`; the training
  runner attaches it to SAETrainer's Adam). No process-wide state: another optimiser in the
  process never runs it. It renormalises only when ``W_dec`` changed since its last
  renormalisation, so a step whose hooks run twice (torch re-wraps a class's ``step`` that was
  replaced after an optimiser was built, and then runs every hook twice) gives the same weights
  bit for bit as a step whose hooks run once.
"""

from __future__ import annotations

import logging
import weakref
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from sae_lens_maira.kernels.dispatch import fused_kernels
from sae_lens_maira.saes.host_cache import HostCache

logger = logging.getLogger(__name__)


#: dictionary_learning's guard in the projection's ``w / (||w|| + 1e-6)``
PROJECTION_EPS = 1e-6

# What the constraint keeps on the objects it constrains (plain attributes, set with setattr):
#: on the module: True once :func:`constrain_decoder` ran
_UNIT_NORM = "_unit_norm_decoder"
#: on the module: optimiser -> handle of its hook for this module (weak: a dropped optimiser goes)
_HOOKS = "_decoder_constraint_hooks"
#: on the ``W_dec`` parameter: True once the projection hook is attached
_PROJECTION = "_unit_norm_projection"

OptimizerHooks = weakref.WeakKeyDictionary[torch.optim.Optimizer, RemovableHandle]


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


class _RenormAfterStep:
    """The per-optimiser post-hook: renormalise ``module.W_dec`` if this optimiser owns it and
    it changed since the last renormalisation (its in-place version counter moved)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = weakref.ref(module)
        self.done = HostCache()  # W_dec's state right after our last renormalisation

    def __call__(self, optimizer: torch.optim.Optimizer, *_: Any) -> None:
        module = self.module()
        W_dec = getattr(module, "W_dec", None) if module is not None else None
        if W_dec is None or self.done.get(W_dec) is not None:
            return
        if not any(p is W_dec for group in optimizer.param_groups for p in group["params"]):
            return
        with torch.no_grad():
            renormalize_rows_(W_dec)
        self.done.remember(W_dec, 1.0)


def constrain_decoder(module: nn.Module) -> None:
    """Mark ``module`` as keeping unit-norm ``W_dec`` rows and attach the gradient projection;
    the renormalisation comes with :func:`constrain_optimizer` on the optimiser that trains it."""
    setattr(module, _UNIT_NORM, True)
    if not hasattr(module, _HOOKS):
        hooks: OptimizerHooks = weakref.WeakKeyDictionary()
        setattr(module, _HOOKS, hooks)
    attach_projection_hook(module)


def wants_unit_norm_decoder(module: Any) -> bool:
    """Whether ``module`` was built with :func:`constrain_decoder` (e.g. the Matryoshka SAE)."""
    return bool(getattr(module, _UNIT_NORM, False))


def constrain_optimizer(optimizer: torch.optim.Optimizer, module: nn.Module) -> RemovableHandle:
    """Renormalise ``module.W_dec`` rows after every step of ``optimizer`` (its own hook only);
    idempotent per (optimiser, module). Call it on the optimiser that trains a constrained SAE:
    ``constrain_optimizer(trainer.optimizer, trainer.sae)`` for a hand-built SAETrainer."""
    if not wants_unit_norm_decoder(module):
        raise TypeError(
            f"{type(module).__name__} has no unit-norm decoder constraint; "
            "call constrain_decoder(module) first (the Matryoshka SAE does it itself)"
        )
    hooks: OptimizerHooks = getattr(module, _HOOKS)
    handle = hooks.get(optimizer)
    if handle is None:
        handle = hooks[optimizer] = optimizer.register_step_post_hook(_RenormAfterStep(module))
    return handle


def is_constrained_by_an_optimizer(module: nn.Module) -> bool:
    """Whether some live optimiser renormalises ``module``'s decoder after its steps."""
    return len(getattr(module, _HOOKS, ())) > 0


def attach_projection_hook(module: nn.Module) -> None:
    """Register the gradient projection on the module's current ``W_dec`` (once per parameter)."""
    W_dec = module.W_dec
    if not isinstance(W_dec, nn.Parameter) or W_dec.device.type == "meta":
        return
    if getattr(W_dec, _PROJECTION, False):
        return
    W_dec.register_post_accumulate_grad_hook(_project_hook)
    setattr(W_dec, _PROJECTION, True)
