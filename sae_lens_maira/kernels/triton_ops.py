"""Triton kernels for the two sparse primitives (GPU path; CPU tensors under ``TRITON_INTERPRET=1``).

Imported lazily by :mod:`sae_lens_maira.kernels.dispatch` (``triton.jit`` reads
``TRITON_INTERPRET`` when this module is imported). Design:

* ``_bag_sum_kernel``: one program per (bag, block of D) loops over the bag's entries in blocks of
  ``BLOCK_K``, gathering ``[BLOCK_K, BLOCK_D]`` tiles and accumulating in fp32 registers. Used for
  the forward (bags = rows) and, on the latent-sorted layout, for grad W: every latent's gradient
  row is owned by one program, so there are no atomics and bf16 works before Hopper. An optional
  ``order`` schedules the heaviest latents first for load balance.
* ``_sampled_dot_kernel``: one program per row computes the dot products of that row's ``a`` with
  each selected table row (SDDMM), blocking over D.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import triton
import triton.language as tl
from torch import Tensor

from sae_lens_maira.kernels.backend import SparseBackend

_BLOCK_K = 16
_MAX_BLOCK_D = 256


@triton.jit
def _bag_sum_kernel(
    ptr_ptr,
    idx_ptr,
    w_ptr,
    table_ptr,
    out_ptr,
    order_ptr,
    D,
    stride_tn,
    stride_td,
    stride_or,
    HAS_ORDER: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    if HAS_ORDER:
        bag = tl.load(order_ptr + tl.program_id(0))
    else:
        bag = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    start = tl.load(ptr_ptr + bag)
    end = tl.load(ptr_ptr + bag + 1)
    acc = tl.zeros([BLOCK_D], dtype=ACC)
    for s in range(start, end, BLOCK_K):
        offs_k = s + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        rows = tl.load(idx_ptr + offs_k, mask=mask_k, other=0)
        w = tl.load(w_ptr + offs_k, mask=mask_k, other=0.0).to(ACC)
        tile = tl.load(
            table_ptr + rows[:, None] * stride_tn + offs_d[None, :] * stride_td,
            mask=mask_k[:, None] & mask_d[None, :],
            other=0.0,
        ).to(ACC)
        acc += tl.sum(tile * w[:, None], axis=0)
    tl.store(out_ptr + bag * stride_or + offs_d, acc.to(out_ptr.dtype.element_ty), mask=mask_d)


@triton.jit
def _sampled_dot_kernel(
    ptr_ptr,
    idx_ptr,
    a_ptr,
    table_ptr,
    bias_ptr,
    out_ptr,
    D,
    stride_ar,
    stride_ad,
    stride_tn,
    stride_td,
    HAS_BIAS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    start = tl.load(ptr_ptr + row)
    end = tl.load(ptr_ptr + row + 1)
    for s in range(start, end, BLOCK_K):
        offs_k = s + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        cols = tl.load(idx_ptr + offs_k, mask=mask_k, other=0)
        acc = tl.zeros([BLOCK_K], dtype=ACC)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            a = tl.load(a_ptr + row * stride_ar + offs_d * stride_ad, mask=mask_d, other=0.0)
            tile = tl.load(
                table_ptr + cols[:, None] * stride_tn + offs_d[None, :] * stride_td,
                mask=mask_k[:, None] & mask_d[None, :],
                other=0.0,
            ).to(ACC)
            acc += tl.sum(tile * a.to(ACC)[None, :], axis=1)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + cols, mask=mask_k, other=0.0).to(ACC)
        tl.store(out_ptr + offs_k, acc.to(out_ptr.dtype.element_ty), mask=mask_k)


def _acc_dtype(dtype: torch.dtype) -> tl.dtype:
    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_d(d: int) -> int:
    return min(_MAX_BLOCK_D, max(16, triton.next_power_of_2(d)))


def _on_device(t: Tensor):
    """Launch on the tensor's GPU (Triton uses the current device); a no-op for CPU tensors."""
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


def bag_sum(
    ptr: Tensor, idx: Tensor, weights: Tensor, table: Tensor, order: Tensor | None = None
) -> Tensor:
    """Weighted bag sums, one program per (bag, D block), fp32 accumulation in registers."""
    n_bags, d = ptr.numel() - 1, table.shape[1]
    if idx.numel() == 0 or n_bags == 0 or d == 0:
        return table.new_zeros((n_bags, d))
    out = torch.empty((n_bags, d), dtype=table.dtype, device=table.device)
    block_d = _block_d(d)
    grid = (n_bags, triton.cdiv(d, block_d))
    with _on_device(table):
        _bag_sum_kernel[grid](
            ptr.contiguous(),
            idx.contiguous(),
            weights.contiguous(),
            table,
            out,
            order,
            d,
            table.stride(0),
            table.stride(1),
            out.stride(0),
            HAS_ORDER=order is not None,
            ACC=_acc_dtype(table.dtype),
            BLOCK_K=_BLOCK_K,
            BLOCK_D=block_d,
        )
    return out


def sampled_dot(
    ptr: Tensor, idx: Tensor, a: Tensor, table: Tensor, bias: Tensor | None = None
) -> Tensor:
    """SDDMM: one program per row of ``a`` dots it with that row's selected table rows."""
    nnz, n_rows, d = idx.numel(), ptr.numel() - 1, table.shape[1]
    out = torch.empty(nnz, dtype=a.dtype, device=a.device)
    if nnz == 0:
        return out
    if d == 0:
        return bias[idx].to(a.dtype) if bias is not None else out.zero_()
    with _on_device(a):
        _sampled_dot_kernel[(n_rows,)](
            ptr.contiguous(),
            idx.contiguous(),
            a,
            table,
            bias.contiguous() if bias is not None else None,
            out,
            d,
            a.stride(0),
            a.stride(1),
            table.stride(0),
            table.stride(1),
            HAS_BIAS=bias is not None,
            ACC=_acc_dtype(a.dtype),
            BLOCK_K=_BLOCK_K,
            BLOCK_D=_block_d(d),
        )
    return out


BACKEND = SparseBackend(name="triton", bag_sum=bag_sum, sampled_dot=sampled_dot, wants_order=True)
