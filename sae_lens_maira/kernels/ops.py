"""Public sparse ops for TopK / BatchTopK / Matryoshka SAEs: validate, pick an implementation, run.

Every op is differentiable (``torch.autograd.Function`` for the sparse paths, torch autograd for
the dense backend), takes fp32 / bf16 / fp16 / fp64 with fp32 (or wider) accumulation, and runs
on CPU and CUDA; under ``torch.autocast`` they run in the autocast dtype like a matmul (the
sparse paths gather from a copy of the table in that dtype and give fp32 weights fp32 gradients
without a second cast pass). ``impl`` is one of :data:`DecoderImpl`; ``validate=False`` skips the O(nnz)
data checks (one host sync on CUDA) for a training loop whose indices come from ``topk``: the
caller then vouches for them (an out-of-range latent id may read out of bounds).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from sae_lens_maira.kernels.amp import autocast_dtype, autocast_off
from sae_lens_maira.kernels.dispatch import DecoderImpl, get_backend, resolve_impl
from sae_lens_maira.kernels.layout import padded_row_ptr
from sae_lens_maira.kernels.validation import (
    as_index,
    check_csr_shapes,
    check_data,
    check_float,
    check_group_ends,
    check_same,
)


def _mean_k(nnz: int, n_rows: int) -> float:
    return nnz / n_rows if n_rows else 0.0


def _decode(
    row_ptr: Tensor,
    indices: Tensor,
    values: Tensor,
    W_dec: Tensor,
    impl: str,
    k: float,
    compute: torch.dtype | None,
) -> Tensor:
    n_latents, d = W_dec.shape
    backend = get_backend(resolve_impl(impl, device=W_dec.device, n_latents=n_latents, k=k, d=d))
    with autocast_off(W_dec.device):
        return backend.decode(row_ptr, indices, values, W_dec, compute)


def _check_decode_inputs(
    row_ptr: Tensor, indices: Tensor, values: Tensor, W_dec: Tensor
) -> torch.dtype | None:
    """Shapes and one device; one dtype too unless autocast decides the compute dtype, which is
    returned (None outside autocast)."""
    check_csr_shapes(row_ptr, indices, values)
    compute = autocast_dtype(W_dec.device)
    check_same(
        {"row_ptr": row_ptr, "indices": indices, "values": values, "W_dec": W_dec},
        dtypes=compute is None,
    )
    return compute


def sparse_decode(
    indices: Tensor,
    values: Tensor,
    W_dec: Tensor,
    *,
    impl: DecoderImpl = "auto",
    validate: bool = True,
) -> Tensor:
    """``out[b] = sum_j values[b, j] * W_dec[indices[b, j]]`` for TopK actives ``[B, K]`` -> ``[B, D]``.

    No bias is added. Repeated latents within a row are summed. Gradients flow to ``values``
    and ``W_dec`` (only the selected rows of ``W_dec`` get non-zero gradient).
    """
    indices = as_index(indices, "indices")
    values = check_float(values, "values", 2)
    W_dec = check_float(W_dec, "W_dec", 2)
    if indices.shape != values.shape:
        raise ValueError(
            f"indices and values must both be [B, K], got {tuple(indices.shape)} and "
            f"{tuple(values.shape)}"
        )
    compute = autocast_dtype(W_dec.device)
    check_same({"indices": indices, "values": values, "W_dec": W_dec}, dtypes=compute is None)
    if validate:
        check_data(indices, W_dec.shape[0])
    n_rows, k = indices.shape
    row_ptr = padded_row_ptr(n_rows, k, indices.device)
    flat_idx, flat_values = indices.reshape(-1), values.reshape(-1)
    return _decode(row_ptr, flat_idx, flat_values, W_dec, impl, float(k), compute)


def sparse_decode_csr(
    row_ptr: Tensor,
    indices: Tensor,
    values: Tensor,
    W_dec: Tensor,
    *,
    impl: DecoderImpl = "auto",
    validate: bool = True,
) -> Tensor:
    """CSR form of :func:`sparse_decode` for a variable number of actives per row -> ``[B, D]``.

    Row ``b`` holds ``indices[row_ptr[b]:row_ptr[b+1]]``; rows without actives give zeros.
    """
    row_ptr, indices = as_index(row_ptr, "row_ptr"), as_index(indices, "indices")
    values = check_float(values, "values", 1)
    W_dec = check_float(W_dec, "W_dec", 2)
    compute = _check_decode_inputs(row_ptr, indices, values, W_dec)
    if validate:
        check_data(indices, W_dec.shape[0], row_ptr)
    k = _mean_k(indices.numel(), row_ptr.numel() - 1)
    return _decode(row_ptr, indices, values, W_dec, impl, k, compute)


def grouped_sparse_decode_csr(
    row_ptr: Tensor,
    indices: Tensor,
    values: Tensor,
    W_dec: Tensor,
    group_ends: Sequence[int],
    *,
    impl: DecoderImpl = "auto",
    validate: bool = True,
) -> Tensor:
    """Per-group partial decodes ``[G, B, D]``: group g sums latents in ``[ends[g-1], ends[g])``.

    ``group_ends`` are cumulative (Matryoshka widths, last == N). ``out.cumsum(0)[g]`` is the
    reconstruction from the first g + 1 groups (add ``b_dec`` yourself), so every prefix loss
    comes from one sparse pass instead of one dense decode per prefix.
    """
    row_ptr, indices = as_index(row_ptr, "row_ptr"), as_index(indices, "indices")
    values = check_float(values, "values", 1)
    W_dec = check_float(W_dec, "W_dec", 2)
    compute = _check_decode_inputs(row_ptr, indices, values, W_dec)
    n_latents, d = W_dec.shape
    ends = check_group_ends(group_ends, n_latents)
    if validate:
        check_data(indices, n_latents, row_ptr)
    n_rows = row_ptr.numel() - 1
    k = _mean_k(indices.numel(), n_rows)
    backend = get_backend(resolve_impl(impl, device=W_dec.device, n_latents=n_latents, k=k, d=d))
    with autocast_off(W_dec.device):
        return backend.grouped_decode(row_ptr, indices, values, W_dec, ends, compute)


def sparse_encode_csr(
    x: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    row_ptr: Tensor,
    indices: Tensor,
    *,
    impl: DecoderImpl = "auto",
    validate: bool = True,
    hidden_pre: Tensor | None = None,
) -> Tensor:
    """Pre-activations ``x[b] @ W_enc[:, i] + b_enc[i]`` at the selected (b, i) pairs -> ``[nnz]``.

    ``W_enc`` is in SAELens layout ``[d_in, d_sae]``. The backward is sparse: grad ``W_enc``
    touches only selected columns, grad ``x`` is a sparse decode with ``W_enc^T``.
    ``hidden_pre`` (optional, ``[B, N]``): the dense pre-activations you already computed
    without grad to select the actives; the forward then gathers from it instead of recomputing
    (its gradient is not tracked; gradients flow to ``x``, ``W_enc`` and ``b_enc``).
    """
    x = check_float(x, "x", 2)
    W_enc = check_float(W_enc, "W_enc", 2)
    b_enc = check_float(b_enc, "b_enc", 1)
    row_ptr, indices = as_index(row_ptr, "row_ptr"), as_index(indices, "indices")
    check_csr_shapes(row_ptr, indices, None)
    compute = autocast_dtype(x.device)
    tensors = {"x": x, "W_enc": W_enc, "b_enc": b_enc, "row_ptr": row_ptr, "indices": indices}
    check_same(tensors, dtypes=compute is None)
    (n_rows, d), (d_w, n_latents) = x.shape, W_enc.shape
    if d_w != d:
        raise ValueError(
            f"W_enc must be [d_in, d_sae] = [{d}, N] (SAELens layout) for x of shape "
            f"{tuple(x.shape)}, got {tuple(W_enc.shape)}; transpose it if you store [d_sae, d_in]"
        )
    if b_enc.shape[0] != n_latents:
        raise ValueError(
            f"b_enc must be [{n_latents}] like W_enc's columns, got {tuple(b_enc.shape)}"
        )
    if row_ptr.numel() != n_rows + 1:
        raise ValueError(
            f"row_ptr must have B + 1 = {n_rows + 1} entries for x with B = {n_rows} rows, "
            f"got {row_ptr.numel()}"
        )
    if hidden_pre is not None:
        hidden_pre = check_float(hidden_pre, "hidden_pre", 2).detach()
        if hidden_pre.shape != (n_rows, n_latents) or hidden_pre.device != x.device:
            raise ValueError(
                f"hidden_pre must be the dense [B, N] = [{n_rows}, {n_latents}] pre-activations "
                f"on {x.device}, got {tuple(hidden_pre.shape)} on {hidden_pre.device}"
            )
    if validate:
        check_data(indices, n_latents, row_ptr)
    k = _mean_k(indices.numel(), n_rows)
    backend = get_backend(resolve_impl(impl, device=x.device, n_latents=n_latents, k=k, d=d))
    with autocast_off(x.device):
        return backend.encode(row_ptr, indices, x, W_enc, b_enc, hidden_pre, compute)
