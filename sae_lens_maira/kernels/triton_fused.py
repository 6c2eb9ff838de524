# Triton's annotations are not what its JIT does (a tl.constexpr parameter takes a plain int or
# float, a launch takes num_warps/num_stages, tl.static_range unrolls at compile time): the lines
# where that shows carry a targeted pyright ignore.
"""Fused row-wise Triton kernels for the training step's memory-bound passes.

Each replaces a chain of torch elementwise ops over ``[B, D]`` or ``[N, D]`` tensors (every op a
full read and write of HBM) with one pass per tensor:

* Matryoshka prefix losses (:mod:`sae_lens_maira.kernels.prefix_loss`): the forward reads the
  target and every group's partial decode once and writes the final residual; the backward reads
  the residual and the parts once and writes every part's gradient in the parts' dtype (the
  torch loop made ~3 passes per group each way and an fp32 gradient that was then cast).
* Unit-norm decoder upkeep (:mod:`sae_lens_maira.saes.decoder_constraint`): removing the
  gradient's component parallel to each decoder row, and renormalising the rows. One program per
  row holds it in registers (one read per tensor) up to ``ONE_SWEEP_MAX_D`` columns, else sweeps
  it twice (sums, then the update).

Imported lazily (``triton.jit`` reads ``TRITON_INTERPRET`` at import); CPU tensors work under the
interpreter, which is how the tests check these against the torch versions.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
import triton
import triton.language as tl
from torch import Tensor

#: 2 KiB of fp32 per program and sweep step, as the bag sums (benchmarks/triton_tune.py).
_BLOCK = 512


def _block(d: int) -> int:
    return min(_BLOCK, max(16, triton.next_power_of_2(d)))


def _device(t: Tensor) -> AbstractContextManager[object]:
    """Launch on the tensor's GPU (Triton uses the current device); a no-op for CPU tensors."""
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


@triton.jit
def _prefix_fwd_kernel(
    parts_ptr,
    target_ptr,
    resid_ptr,
    partial_ptr,
    D,
    n_rows,
    n_blocks,
    G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # int64 offsets: [G, B, D] can exceed 2**31 elements
    row = tl.program_id(0).to(tl.int64)
    blk = tl.program_id(1)
    offs = blk * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    r = tl.load(target_ptr + row * D + offs, mask=mask, other=0.0).to(tl.float32)
    out = partial_ptr + (row * n_blocks + blk) * G
    for g in tl.static_range(G):  # pyright: ignore[reportGeneralTypeIssues]  (unrolled by the JIT)
        p = tl.load(parts_ptr + (g * n_rows + row) * D + offs, mask=mask, other=0.0)
        r -= p.to(tl.float32)
        tl.store(out + g, tl.sum(r * r, axis=0))
    tl.store(resid_ptr + row * D + offs, r, mask=mask)


@triton.jit
def _prefix_bwd_kernel(
    parts_ptr,
    resid_ptr,
    coef_ptr,
    grad_parts_ptr,
    grad_target_ptr,
    D,
    n_rows,
    G: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    r = tl.load(resid_ptr + row * D + offs, mask=mask, other=0.0)
    running = tl.zeros([BLOCK_D], dtype=tl.float32)
    for i in tl.static_range(G):  # pyright: ignore[reportGeneralTypeIssues]  (unrolled by the JIT)
        g = G - 1 - i
        if i > 0:  # r_g = r_{g+1} + parts[g+1]
            p = tl.load(parts_ptr + ((g + 1) * n_rows + row) * D + offs, mask=mask, other=0.0)
            r += p.to(tl.float32)
        running += tl.load(coef_ptr + g) * r
        dst = grad_parts_ptr + (g * n_rows + row) * D + offs
        tl.store(dst, running.to(grad_parts_ptr.dtype.element_ty), mask=mask)
    tl.store(
        grad_target_ptr + row * D + offs,
        (-running).to(grad_target_ptr.dtype.element_ty),
        mask=mask,
    )


def prefix_mse_forward(parts: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """``(losses [G] fp32, final residual [B, D] fp32)``; ``parts`` contiguous ``[G, B, D]``."""
    n_groups, n_rows, d = parts.shape
    block = _block(d)
    n_blocks = triton.cdiv(d, block)
    resid = torch.empty((n_rows, d), dtype=torch.float32, device=parts.device)
    partial = torch.empty((n_rows * n_blocks, n_groups), dtype=torch.float32, device=parts.device)
    if n_rows and d:
        with _device(parts):
            _prefix_fwd_kernel[(n_rows, n_blocks)](
                parts,
                target.contiguous(),
                resid,
                partial,
                d,
                n_rows,
                n_blocks,
                G=n_groups,  # pyright: ignore[reportArgumentType]  (tl.constexpr takes an int/float)
                BLOCK_D=block,  # pyright: ignore[reportArgumentType]  (tl.constexpr takes an int/float)
            )
    else:
        resid.copy_(target)
    losses = partial.sum(dim=0) / max(n_rows, 1)
    return losses, resid


def prefix_mse_backward(
    parts: Tensor, resid: Tensor, coef: Tensor, target_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``(grad parts [G, B, D] in parts' dtype, grad target [B, D])`` for per-group ``coef`` =
    ``grad_loss_g * -2 / B``."""
    n_groups, n_rows, d = parts.shape
    grad_parts = torch.empty_like(parts)
    grad_target = torch.empty((n_rows, d), dtype=target_dtype, device=parts.device)
    if n_rows and d:
        block = _block(d)
        with _device(parts):
            _prefix_bwd_kernel[(n_rows, triton.cdiv(d, block))](
                parts,
                resid,
                coef.to(torch.float32).contiguous(),
                grad_parts,
                grad_target,
                d,
                n_rows,
                G=n_groups,  # pyright: ignore[reportArgumentType]  (tl.constexpr takes an int/float)
                BLOCK_D=block,  # pyright: ignore[reportArgumentType]  (tl.constexpr takes an int/float)
            )
    return grad_parts, grad_target


@triton.jit
def _remove_parallel_kernel(
    w_ptr,
    g_ptr,
    D,
    stride_w,
    stride_g,
    EPS: tl.constexpr,
    BLOCK_D: tl.constexpr,
    ONE_SWEEP: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    w_row, g_row = w_ptr + row * stride_w, g_ptr + row * stride_g
    if ONE_SWEEP:  # the whole row fits in registers: read each tensor once
        offs = tl.arange(0, BLOCK_D)
        mask = offs < D
        w = tl.load(w_row + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_row + offs, mask=mask, other=0.0).to(tl.float32)
        norm = tl.sqrt(tl.sum(w * w, axis=0)) + EPS
        coef = tl.sum(w * g, axis=0) / (norm * norm)
        tl.store(g_row + offs, (g - coef * w).to(g_ptr.dtype.element_ty), mask=mask)
    else:
        dot = tl.zeros([BLOCK_D], dtype=tl.float32)
        sq = tl.zeros([BLOCK_D], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            mask = offs < D
            w = tl.load(w_row + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_row + offs, mask=mask, other=0.0).to(tl.float32)
            dot += w * g
            sq += w * w
        norm = tl.sqrt(tl.sum(sq, axis=0)) + EPS
        coef = tl.sum(dot, axis=0) / (norm * norm)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            mask = offs < D
            w = tl.load(w_row + offs, mask=mask, other=0.0).to(tl.float32)
            g = tl.load(g_row + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(g_row + offs, (g - coef * w).to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _renormalize_kernel(
    w_ptr, D, stride_w, EPS: tl.constexpr, BLOCK_D: tl.constexpr, ONE_SWEEP: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64)
    w_row = w_ptr + row * stride_w
    if ONE_SWEEP:
        offs = tl.arange(0, BLOCK_D)
        mask = offs < D
        w = tl.load(w_row + offs, mask=mask, other=0.0).to(tl.float32)
        scale = 1.0 / (tl.sqrt(tl.sum(w * w, axis=0)) + EPS)
        tl.store(w_row + offs, (w * scale).to(w_ptr.dtype.element_ty), mask=mask)
    else:
        sq = tl.zeros([BLOCK_D], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            w = tl.load(w_row + offs, mask=offs < D, other=0.0).to(tl.float32)
            sq += w * w
        scale = 1.0 / (tl.sqrt(tl.sum(sq, axis=0)) + EPS)
        for d0 in range(0, D, BLOCK_D):
            offs = d0 + tl.arange(0, BLOCK_D)
            mask = offs < D
            w = tl.load(w_row + offs, mask=mask, other=0.0).to(tl.float32)
            tl.store(w_row + offs, (w * scale).to(w_ptr.dtype.element_ty), mask=mask)


#: Rows up to this many columns are held in registers (one read per tensor); longer ones are
#: swept twice in 512-column blocks (the second sweep mostly missed L2 at N 65536 on an H100).
ONE_SWEEP_MAX_D = 8192


def _row_launch(d: int) -> dict[str, int | bool]:
    """Block, sweep mode and warps for the row kernels: ~16 fp32 per thread and tensor."""
    if d <= ONE_SWEEP_MAX_D:
        block = max(16, triton.next_power_of_2(d))
        return {"BLOCK_D": block, "ONE_SWEEP": True, "num_warps": min(16, max(4, block // 512))}
    return {"BLOCK_D": _BLOCK, "ONE_SWEEP": False, "num_warps": 4}


def _check_rows(t: Tensor, name: str) -> None:
    if t.dim() != 2 or t.stride(1) != 1:
        raise ValueError(f"{name} must be a 2-D tensor with unit column stride, got {t.shape}")


def remove_parallel_component_(W: Tensor, grad: Tensor, eps: float) -> Tensor:
    """In place: ``grad[i] -= <grad[i], W[i]> / (||W[i]|| + eps)^2 * W[i]`` for every row."""
    _check_rows(W, "W")
    _check_rows(grad, "grad")
    n, d = W.shape
    if n and d:
        with _device(W):
            _remove_parallel_kernel[(n,)](
                W, grad, d, W.stride(0), grad.stride(0),
                EPS=eps, **_row_launch(d),  # pyright: ignore[reportArgumentType]  (tl.constexpr takes an int/float)
            )
    return grad


def renormalize_rows_(W: Tensor, eps: float) -> Tensor:
    """In place: ``W[i] /= ||W[i]|| + eps`` for every row (norm accumulated in fp32)."""
    _check_rows(W, "W")
    n, d = W.shape
    if n and d:
        with _device(W):
            _renormalize_kernel[(n,)](
                W, d, W.stride(0),
                EPS=eps, **_row_launch(d),  # pyright: ignore[reportArgumentType]  (tl.constexpr takes an int/float)
            )
    return W
