"""Independent float64 references for the sparse ops, written from the formulas.

Activations are built row by row as explicit one-hot sums (a Python loop over rows, so nothing is
shared with the library's scatter/CSR code), then decoded with a dense matmul; torch autograd of
these float64 expressions gives the reference gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

IMPLS = ("dense", "embedding_bag", "triton")


def dense_acts(row_ptr: Tensor, indices: Tensor, values: Tensor, n_latents: int) -> Tensor:
    """[B, N] float64 activations, repeated latents summed; differentiable w.r.t. values."""
    rows = []
    ptr = row_ptr.tolist()
    for b in range(len(ptr) - 1):
        s, e = ptr[b], ptr[b + 1]
        onehot = torch.nn.functional.one_hot(indices[s:e], n_latents).double()
        rows.append((onehot * values[s:e, None].double()).sum(0))
    if not rows:
        return torch.zeros(0, n_latents, dtype=torch.float64)
    return torch.stack(rows)


def decode(row_ptr: Tensor, indices: Tensor, values: Tensor, W: Tensor) -> Tensor:
    return dense_acts(row_ptr, indices, values, W.shape[0]) @ W.double()


def grouped(row_ptr, indices, values, W, group_ends) -> Tensor:
    acts = dense_acts(row_ptr, indices, values, W.shape[0])
    starts = [0, *group_ends[:-1]]
    Wd = W.double()
    return torch.stack([acts[:, s:e] @ Wd[s:e] for s, e in zip(starts, group_ends, strict=True)])


def encode(row_ptr, indices, x, W_enc, b_enc) -> Tensor:
    ptr = row_ptr.tolist()
    out = []
    for b in range(len(ptr) - 1):
        for j in range(ptr[b], ptr[b + 1]):
            i = int(indices[j])
            out.append(x[b].double() @ W_enc[:, i].double() + b_enc[i].double())
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def tolerances(dtype: torch.dtype) -> dict[str, float]:
    """fp32 tight; bf16 loose (8-bit mantissa on inputs and outputs, fp32 accumulation)."""
    if dtype == torch.bfloat16:
        return {"rtol": 3e-2, "atol": 3e-2}
    if dtype == torch.float64:
        return {"rtol": 1e-10, "atol": 1e-10}
    return {"rtol": 1e-5, "atol": 1e-5}


def assert_close(actual: Tensor, expected: Tensor, dtype: torch.dtype, what: str) -> None:
    """Compare in float64, scaling atol by the reference's magnitude (bf16 errors are relative)."""
    tol = tolerances(dtype)
    actual, expected = actual.detach(), expected.detach()
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.double(),
        expected.double(),
        rtol=tol["rtol"],
        atol=tol["atol"] * scale,
        msg=lambda m: f"{what} ({dtype}): {m}",
    )


def random_csr(
    counts: list[int], n_latents: int, generator: torch.Generator, *, repeat: bool = True
) -> tuple[Tensor, Tensor]:
    """Row pointer and latent ids for rows with the given active counts; optionally forces a
    repeated latent in every row with >= 2 actives."""
    ptr = torch.tensor([0, *torch.tensor(counts).cumsum(0).tolist()], dtype=torch.long)
    idx = torch.randint(0, n_latents, (int(ptr[-1]),), generator=generator)
    if repeat:
        for b, c in enumerate(counts):
            if c >= 2:
                idx[ptr[b] + 1] = idx[ptr[b]]
    return ptr, idx
