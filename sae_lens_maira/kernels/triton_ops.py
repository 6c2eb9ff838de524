# Triton's annotations are not what its JIT does (a tl.constexpr parameter takes a plain int or
# float, a launch takes num_warps/num_stages, tl.static_range unrolls at compile time): the lines
# where that shows carry a targeted pyright ignore.
"""Triton kernels for the two sparse primitives (GPU path; CPU tensors under ``TRITON_INTERPRET=1``).

Imported lazily by :mod:`sae_lens_maira.kernels.dispatch` (``triton.jit`` reads
``TRITON_INTERPRET`` when this module is imported). Design:

* ``_bag_sum_kernel``: one program per (bag, block of D) loops over the bag's entries in blocks of
  ``BLOCK_K``, gathering ``[BLOCK_K, BLOCK_D]`` tiles and accumulating in fp32 registers. Used for
  the forward (bags = rows) and, on the latent-sorted layout, for grad W: every latent's gradient
  row is owned by one program, so there are no atomics and bf16 works before Hopper.
* ``_sampled_dot_kernel``: one program per row computes the dot products of that row's ``a`` with
  each selected table row (SDDMM), blocking over D.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from sae_lens_maira.kernels.backend import SparseBackend


@triton.jit
def _bag_sum_kernel(
    ptr_ptr,
    idx_ptr,
    w_ptr,
    table_ptr,
    out_ptr,
    D,
    stride_tn,
    stride_td,
    stride_or,
    ACC: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
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


@dataclass(frozen=True)
class LaunchConfig:
    """Tile sizes and warps of one kernel launch (``block_d`` is capped at D's next power of 2)."""

    block_k: int
    block_d: int
    num_warps: int
    num_stages: int = 2

    def block_d_for(self, d: int) -> int:
        return min(self.block_d, max(16, triton.next_power_of_2(d)))


#: Launch settings, tuned on an H100 (``benchmarks/triton_tune.py``: B 4096, D 4096, k 64, N 16k
#: and 64k, fp32 and bf16, Zipf-like latent frequencies; results in
#: ``benchmarks/results/triton_tune_NVIDIA_H100_80GB_HBM3.json``). What mattered most: bag sums
#: reading 2 KiB of a row per program (512 fp32 / 1024 bf16 columns, 16-byte loads per thread):
#: 1.5-5x over 256 columns; then short ``block_k`` (8) for the latent-sorted bags of grad W.
#: With these the bag sums run within 3 % of the best setting tried in each case, the SDDMM within
#: 10 %. Scheduling the heaviest latents first did not help there, so bags run in order; writing
#: grad W_enc column-major (to skip autograd's transpose copy into W_enc's layout) was ~4x slower
#: than the row-major bag sum plus that copy (uncoalesced stores).
BAG_SUM_ROW_BYTES = 2048
SAMPLED_DOT_CONFIG = LaunchConfig(block_k=32, block_d=128, num_warps=4)


def _on_device(t: Tensor):
    """Launch on the tensor's GPU (Triton uses the current device); a no-op for CPU tensors."""
    return torch.cuda.device(t.device) if t.is_cuda else nullcontext()


def bag_sum_config(dtype: torch.dtype) -> LaunchConfig:
    """The bag sums' default launch: ``block_k`` 8 and 2 KiB of a table row per program."""
    return LaunchConfig(block_k=8, block_d=BAG_SUM_ROW_BYTES // dtype.itemsize, num_warps=4)


def bag_sum(
    ptr: Tensor,
    idx: Tensor,
    weights: Tensor,
    table: Tensor,
    out_dtype: torch.dtype | None = None,
    config: LaunchConfig | None = None,
) -> Tensor:
    """Weighted bag sums, one program per (bag, D block), fp32 accumulation in registers.

    The result is stored in ``out_dtype`` (default: the table's). ``config`` overrides the launch
    settings (``benchmarks/triton_tune.py``); by default each program covers 2 KiB of a table row.
    """
    n_bags, d = ptr.numel() - 1, table.shape[1]
    out_dtype = out_dtype or table.dtype
    if idx.numel() == 0 or n_bags == 0 or d == 0:
        return table.new_zeros((n_bags, d), dtype=out_dtype)
    out = torch.empty((n_bags, d), dtype=out_dtype, device=table.device)
    config = config or bag_sum_config(table.dtype)
    block_d = config.block_d_for(d)
    grid = (n_bags, triton.cdiv(d, block_d))
    with _on_device(table):
        _bag_sum_kernel[grid](
            ptr.contiguous(),
            idx.contiguous(),
            weights.contiguous(),
            table,
            out,
            d,
            table.stride(0),
            table.stride(1),
            out.stride(0),
            ACC=_acc_dtype(table.dtype),
            BLOCK_K=config.block_k,
            BLOCK_D=block_d,
            num_warps=config.num_warps,  # pyright: ignore[reportCallIssue]  (a launch option)
            num_stages=config.num_stages,  # pyright: ignore[reportCallIssue]  (a launch option)
        )
    return out


def sampled_dot(
    ptr: Tensor,
    idx: Tensor,
    a: Tensor,
    table: Tensor,
    bias: Tensor | None = None,
    config: LaunchConfig | None = None,
) -> Tensor:
    """SDDMM: one program per row of ``a`` dots it with that row's selected table rows."""
    cfg = config or SAMPLED_DOT_CONFIG
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
            BLOCK_K=cfg.block_k,
            BLOCK_D=cfg.block_d_for(d),
            num_warps=cfg.num_warps,  # pyright: ignore[reportCallIssue]  (a launch option)
            num_stages=cfg.num_stages,  # pyright: ignore[reportCallIssue]  (a launch option)
        )
    return out


BACKEND = SparseBackend(name="triton", bag_sum=bag_sum, sampled_dot=sampled_dot)
