"""Input checks with messages a user can act on.

Shape, dtype and device checks read only metadata and always run. Checks that read data (latent
ids in range, a well-formed row pointer) cost one O(nnz) pass and, on CUDA, one host sync; they
run when ``validate=True`` (the default) and can be switched off in a training hot loop whose
indices come from ``topk`` and so are known good.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _tensor(t: object, name: str) -> Tensor:
    if not isinstance(t, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t


def as_index(t: object, name: str) -> Tensor:
    """Integer index tensor as int64 (the dtype every backend and ``embedding_bag`` expects)."""
    t = _tensor(t, name)
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be an integer tensor (torch.long), got dtype {t.dtype}")
    return t.long()


def check_float(t: object, name: str, ndim: int) -> Tensor:
    """A floating tensor of ``ndim`` dimensions in a supported dtype."""
    t = _tensor(t, name)
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, bfloat16, float16 or float64, got {t.dtype}")
    if t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def check_same(tensors: dict[str, Tensor], *, dtypes: bool = True) -> None:
    """All tensors on one device and, if ``dtypes``, all floating ones in one dtype."""
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        listing = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(
            f"all inputs must be on one device, got {listing}; move them with .to(device)"
        )
    if not dtypes:
        return
    floats = {name: t.dtype for name, t in tensors.items() if t.is_floating_point()}
    if len(set(floats.values())) > 1:
        listing = ", ".join(f"{n} {d}" for n, d in floats.items())
        first = next(iter(floats))
        raise ValueError(
            f"floating inputs must share one dtype, got {listing}; cast them, e.g. "
            f"x.to({first}.dtype) (accumulation is fp32 internally)"
        )


def check_csr_shapes(row_ptr: Tensor, indices: Tensor, values: Tensor | None) -> None:
    """1-D row pointer, 1-D indices, values shaped like indices."""
    if row_ptr.dim() != 1 or row_ptr.numel() < 1:
        raise ValueError(
            f"row_ptr must be 1-D with B + 1 >= 1 entries, got shape {tuple(row_ptr.shape)}"
        )
    if indices.dim() != 1:
        raise ValueError(f"indices must be 1-D (CSR layout), got shape {tuple(indices.shape)}")
    if values is not None and values.shape != indices.shape:
        raise ValueError(
            f"values must have the shape of indices {tuple(indices.shape)}, got {tuple(values.shape)}"
        )


def check_data(indices: Tensor, n_latents: int, row_ptr: Tensor | None = None) -> None:
    """Latent ids in ``[0, n_latents)``; row pointer starts at 0, never decreases, ends at nnz.

    Evaluated as one boolean vector so a CUDA tensor costs a single host sync.
    """
    nnz = indices.numel()
    checks = []
    if nnz:
        checks += [indices.min() < 0, indices.max() >= n_latents]
    n_index_checks = len(checks)
    if row_ptr is not None:
        checks += [row_ptr[0] != 0, row_ptr[-1] != nnz]
        if row_ptr.numel() > 1:
            checks.append((row_ptr.diff() < 0).any())
    if not checks:
        return
    flags = torch.stack(checks).tolist()
    if any(flags[:n_index_checks]):
        raise ValueError(
            f"indices must be latent ids in [0, {n_latents}) (W has {n_latents} latents), got "
            f"min {int(indices.min())}, max {int(indices.max())}"
        )
    if row_ptr is not None and any(flags[n_index_checks:]):
        problems = []
        if flags[n_index_checks]:
            problems.append(f"row_ptr[0] = {int(row_ptr[0])} (must be 0)")
        if flags[n_index_checks + 1]:
            problems.append(
                f"row_ptr[-1] = {int(row_ptr[-1])} (must equal nnz = indices.numel() = {nnz})"
            )
        if len(flags) > n_index_checks + 2 and flags[n_index_checks + 2]:
            at = int(torch.nonzero(row_ptr.diff() < 0)[0, 0]) + 1
            problems.append(f"it decreases at position {at}")
        raise ValueError(
            "row_ptr is not a valid CSR row pointer: "
            + "; ".join(problems)
            + ". Build it as [0, *cumsum(actives per row)]."
        )


def check_group_ends(group_ends: Sequence[int], n_latents: int) -> tuple[int, ...]:
    """Cumulative group boundaries: strictly increasing positive ints ending at ``n_latents``."""
    try:
        ends = tuple(int(e) for e in group_ends)
    except (TypeError, ValueError) as err:
        raise ValueError(f"group_ends must be a sequence of ints, got {group_ends!r}") from err
    if any(int(e) != e for e in group_ends):
        raise ValueError(f"group_ends must be integers, got {list(group_ends)}")
    if not ends or ends[-1] != n_latents:
        raise ValueError(
            f"group_ends must be cumulative and end at n_latents = {n_latents} "
            f"(e.g. Matryoshka widths [..., {n_latents}]), got {list(ends)}"
        )
    if ends[0] <= 0 or any(b <= a for a, b in zip(ends, ends[1:], strict=False)):
        raise ValueError(
            f"group_ends must be strictly increasing positive boundaries, got {list(ends)}"
        )
    return ends
