"""Autograd functions over a :class:`SparseBackend`: one for decoding, one for the sparse encoder.

Both backward passes are sparse: nothing ``[B, N]``-sized is materialised. Gradients of weight
tables come from a bag sum over the latent-sorted layout (:func:`transposed_bag_sum`), which owns
each output row once and therefore needs no atomics.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from sae_lens_maira.kernels.amp import autocast_off
from sae_lens_maira.kernels.backend import SparseBackend
from sae_lens_maira.kernels.layout import by_latent, row_ids


def transposed_bag_sum(
    backend: SparseBackend,
    bag_ptr: Tensor,
    indices: Tensor,
    weights: Tensor,
    rows_table: Tensor,
    n_latents: int,
    out_dtype: torch.dtype | None = None,
) -> Tensor:
    """``out[i] = sum over actives j of latent i of weights[j] * rows_table[bag(j)]`` -> ``[N, D]``.

    The gradient of a gather: regroup actives by latent, then it is a bag sum over ``rows_table``.
    """
    lat = by_latent(indices, n_latents)
    bags = row_ids(bag_ptr, indices.numel())
    return backend.bag_sum(lat.ptr, bags[lat.perm], weights[lat.perm], rows_table, out_dtype)


def _in(dtype: torch.dtype | None, t: Tensor) -> Tensor:
    """``t`` detached, in the compute dtype (no copy when it already is)."""
    return t.detach() if dtype is None else t.detach().to(dtype)


class BagDecode(torch.autograd.Function):
    """``out[r] = sum_{j in bag r} values[j] * W[indices[j]]`` with sparse grads for values and W.

    ``perm`` (optional) reorders the actives into bag order first; doing it here rather than by
    indexing outside keeps the backward a plain scatter instead of autograd's accumulating
    index_put (~2 ms saved per grouped call on CPU at B 2048, k 32).

    ``compute_dtype`` (autocast's, e.g. bf16): the gathers read a copy of ``W`` in that dtype, the
    output and saved tensors are in it, and grad ``W`` is written in ``W``'s own dtype straight
    from the fp32 accumulator. A differentiable cast outside would cost a second ``N x D`` pass in
    the backward to bring the gradient back to fp32.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        bag_ptr: Tensor,
        indices: Tensor,
        values: Tensor,
        W: Tensor,
        backend: SparseBackend,
        perm: Tensor | None = None,
        compute_dtype: torch.dtype | None = None,
    ) -> Tensor:
        if perm is not None:
            indices, values = indices[perm], values[perm]
        table, vals = _in(compute_dtype, W), _in(compute_dtype, values)
        ctx.backend = backend
        ctx.dtypes = (values.dtype, W.dtype)
        ctx.n_latents = W.shape[0]
        ctx.save_for_backward(bag_ptr, indices, vals, table, perm)
        return backend.bag_sum(bag_ptr, indices, vals, table, None)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        with autocast_off(grad_out.device):
            return BagDecode._backward(ctx, grad_out)

    @staticmethod
    def _backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        bag_ptr, indices, vals, table, perm = ctx.saved_tensors
        backend: SparseBackend = ctx.backend
        values_dtype, W_dtype = ctx.dtypes
        grad_out = grad_out.to(table.dtype).contiguous()
        grad_values = grad_W = None
        if ctx.needs_input_grad[2]:
            grad_values = backend.sampled_dot(bag_ptr, indices, grad_out, table, None)
            if perm is not None:
                grad_values = torch.empty_like(grad_values).index_copy_(0, perm, grad_values)
            grad_values = grad_values.to(values_dtype)
        if ctx.needs_input_grad[3]:
            grad_W = transposed_bag_sum(
                backend, bag_ptr, indices, vals, grad_out, ctx.n_latents, W_dtype
            )
        return None, None, grad_values, grad_W, None, None, None


class SampledEncode(torch.autograd.Function):
    """``pre[j] = x[row(j)] @ W_enc[:, indices[j]] + b_enc[indices[j]]`` at the selected pairs only.

    Backward: grad x is a bag sum over ``W_enc^T`` rows, grad W_enc a latent-sorted bag sum over
    ``x`` rows (touching only selected columns), grad b_enc a scatter-add of the nnz gradients.
    ``W_enc^T`` is copied to row-major once, and only when needed (gathering rows beats gathering
    strided columns): with ``hidden_pre`` and no grad for x, ``W_enc`` is never read.
    ``compute_dtype`` as in :class:`BagDecode`: gathers in that dtype, weight gradients in the
    weights' own dtype.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        row_ptr: Tensor,
        indices: Tensor,
        x: Tensor,
        W_enc: Tensor,
        b_enc: Tensor,
        hidden_pre: Tensor | None,
        backend: SparseBackend,
        compute_dtype: torch.dtype | None = None,
    ) -> Tensor:
        xc = _in(compute_dtype, x)
        W_t = None
        if hidden_pre is not None:
            rows = row_ids(row_ptr, indices.numel())
            pre = hidden_pre[rows, indices].to(xc.dtype)
        else:
            W_t = _in(compute_dtype, W_enc.t()).contiguous()
            pre = backend.sampled_dot(row_ptr, indices, xc, W_t, b_enc.detach())
        ctx.backend = backend
        ctx.compute_dtype = xc.dtype
        ctx.dtypes = (x.dtype, W_enc.dtype, b_enc.dtype)
        ctx.n_latents = W_enc.shape[1]
        ctx.save_for_backward(row_ptr, indices, xc, W_enc, W_t)
        return pre

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_pre: Tensor) -> tuple[Tensor | None, ...]:
        with autocast_off(grad_pre.device):
            return SampledEncode._backward(ctx, grad_pre)

    @staticmethod
    def _backward(ctx: Any, grad_pre: Tensor) -> tuple[Tensor | None, ...]:
        row_ptr, indices, xc, W_enc, W_t = ctx.saved_tensors
        backend: SparseBackend = ctx.backend
        x_dtype, W_dtype, b_dtype = ctx.dtypes
        grad_b = None
        if ctx.needs_input_grad[4]:
            acc_dtype = torch.promote_types(grad_pre.dtype, torch.float32)
            acc = torch.zeros(ctx.n_latents, dtype=acc_dtype, device=grad_pre.device)
            grad_b = acc.index_add_(0, indices, grad_pre.to(acc.dtype)).to(b_dtype)
        grad_pre = grad_pre.to(ctx.compute_dtype).contiguous()
        grad_x = grad_W = None
        if ctx.needs_input_grad[2]:
            if W_t is None:
                W_t = W_enc.detach().t().to(ctx.compute_dtype).contiguous()
            grad_x = backend.bag_sum(row_ptr, indices, grad_pre, W_t, x_dtype)
        if ctx.needs_input_grad[3]:
            grad_W = transposed_bag_sum(
                backend, row_ptr, indices, grad_pre, xc.contiguous(), ctx.n_latents, W_dtype
            ).t()
        return None, None, grad_x, grad_W, grad_b, None, None, None
