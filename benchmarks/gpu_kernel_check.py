"""Triton sparse decode on a real GPU against dense autograd: forward, grad W_dec, grad values.

Odd D, repeated latents, rows with zero values, fp32 and bf16; then the training step's mixed
precision (bf16 autocast over fp32 weights: grouped decode and sparse encode, whose kernels write
fp32 weight gradients from bf16 gathers) against fp64 autograd on the bf16-rounded inputs.
Prints max errors and exits non-zero on a mismatch. ``python benchmarks/gpu_kernel_check.py``
(needs CUDA + Triton).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_lens_maira.kernels import (  # noqa: E402
    grouped_sparse_decode_csr,
    matryoshka_prefix_mse,
    sparse_decode,
    sparse_encode_csr,
)
from sae_lens_maira.saes.decoder_constraint import (  # noqa: E402
    remove_parallel_component_,
    renormalize_rows_,
)


def check(dtype: torch.dtype, b: int, k: int, n: int, d: int, tol: float) -> bool:
    g = torch.Generator(device="cuda").manual_seed(0)
    idx = torch.randint(0, n, (b, k), device="cuda", generator=g)
    idx[:, 1] = idx[:, 0]  # repeated latents
    vals = torch.rand(b, k, device="cuda", generator=g).to(dtype)
    vals[::7] = 0  # rows with no actives
    w = torch.randn(n, d, device="cuda", generator=g).to(dtype)
    grad_out = torch.randn(b, d, device="cuda", generator=g).to(dtype)
    ok = True
    v1, w1 = vals.clone().requires_grad_(), w.clone().requires_grad_()
    out = sparse_decode(idx, v1, w1, impl="triton")
    out.backward(grad_out)
    v2, w2 = vals.float().clone().requires_grad_(), w.float().clone().requires_grad_()
    dense = torch.zeros(b, n, device="cuda").scatter_add(1, idx, v2)
    ref = dense @ w2
    ref.backward(grad_out.float())
    for name, a, r in (
        ("out", out, ref),
        ("grad_W", w1.grad, w2.grad),
        ("grad_v", v1.grad, v2.grad),
    ):
        err = (a.float() - r).abs().max().item() / max(r.abs().max().item(), 1e-6)
        good = err < tol
        ok &= good
        print(
            f"{dtype} B{b} K{k} N{n} D{d} {name}: max rel err {err:.2e} {'ok' if good else 'FAIL'}"
        )
    return ok


def check_autocast(b: int, k: int, n: int, d: int, tol: float) -> bool:
    """bf16 autocast, fp32 leaves: grouped decode + sparse encode, every gradient."""
    g = torch.Generator(device="cuda").manual_seed(1)
    dev = "cuda"
    idx = torch.randint(0, n, (b, k), device=dev, generator=g)
    idx[:, 1] = idx[:, 0]
    idx = idx.sort(dim=1).values.reshape(-1)
    row_ptr = torch.arange(0, (b + 1) * k, k, device=dev)
    ends = [n // 8, n // 2, n]
    leaves = {
        "values": torch.rand(b * k, device=dev, generator=g),
        "W_dec": torch.randn(n, d, device=dev, generator=g) / d**0.5,
        "x": torch.randn(b, d, device=dev, generator=g),
        "W_enc": torch.randn(d, n, device=dev, generator=g) / d**0.5,
        "b_enc": torch.randn(n, device=dev, generator=g),
    }
    g_parts = torch.randn(len(ends), b, d, device=dev, generator=g)
    g_pre = torch.randn(b * k, device=dev, generator=g)
    ours = {name: t.clone().requires_grad_() for name, t in leaves.items()}
    with torch.autocast("cuda", dtype=torch.bfloat16):
        parts = grouped_sparse_decode_csr(
            row_ptr, idx, ours["values"], ours["W_dec"], ends, impl="triton"
        )
        pre = sparse_encode_csr(
            ours["x"], ours["W_enc"], ours["b_enc"], row_ptr, idx, impl="triton"
        )
    ((parts.float() * g_parts).sum() + (pre.float() * g_pre).sum()).backward()
    ref = {
        name: (t if name == "b_enc" else t.to(torch.bfloat16)).double().requires_grad_()
        for name, t in leaves.items()
    }
    rows = torch.arange(b, device=dev).repeat_interleave(k)
    group = torch.bucketize(idx, torch.tensor(ends, device=dev), right=True)
    dense = torch.zeros(len(ends) * b, n, device=dev, dtype=torch.float64)
    dense = dense.index_put((group * b + rows, idx), ref["values"], accumulate=True)
    r_parts = (dense @ ref["W_dec"]).view(len(ends), b, d)
    r_pre = (ref["x"] @ ref["W_enc"] + ref["b_enc"])[rows, idx]
    r_loss = (r_parts * g_parts.bfloat16().double()).sum()
    (r_loss + (r_pre * g_pre.bfloat16().double()).sum()).backward()
    ok = True
    for name, t in ours.items():
        a, r = t.grad, ref[name].grad
        err = (a.double() - r).abs().max().item() / max(r.abs().max().item(), 1e-6)
        good = a.dtype == torch.float32 and err < tol
        ok &= good
        print(
            f"autocast bf16 / fp32 weights B{b} K{k} N{n} D{d} grad {name}: {a.dtype}, "
            f"max rel err {err:.2e} {'ok' if good else 'FAIL'}"
        )
    return ok


def _report(name: str, a: torch.Tensor, r: torch.Tensor, tol: float) -> bool:
    err = (a.double() - r.double()).abs().max().item() / max(r.abs().max().item(), 1e-6)
    print(f"{name}: max rel err {err:.2e} {'ok' if err < tol else 'FAIL'}")
    return err < tol


def check_fused(b: int, g: int, n: int, d: int) -> bool:
    """The fused Triton row kernels against the torch ops they replace (same fp32 sums)."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    parts = torch.randn(g, b, d, device="cuda", generator=gen).bfloat16().requires_grad_()
    target = torch.randn(b, d, device="cuda", generator=gen).requires_grad_()
    weights = torch.rand(g, device="cuda", generator=gen)
    out = {}
    for impl in ("triton", "embedding_bag"):  # embedding_bag: the torch ops
        losses, resid = matryoshka_prefix_mse(parts, target, return_residual=True, impl=impl)
        grads = torch.autograd.grad((losses * weights).sum(), (parts, target))
        out[impl] = (losses, resid, *grads)
    ok = True
    for name, a, r in zip(
        ("losses", "residual", "grad parts", "grad target"), out["triton"], out["embedding_bag"]
    ):
        ok &= _report(f"prefix MSE B{b} G{g} D{d} {name}", a, r, 1e-2 if "parts" in name else 1e-4)
    W = torch.randn(n, d, device="cuda", generator=gen)
    grad = torch.randn(n, d, device="cuda", generator=gen)
    for impl in ("triton", "embedding_bag"):
        out[impl] = (
            remove_parallel_component_(W, grad.clone(), impl=impl),
            renormalize_rows_(W.clone(), impl=impl),
        )
    ok &= _report(f"projection N{n} D{d}", out["triton"][0], out["embedding_bag"][0], 1e-4)
    ok &= _report(f"renormalise N{n} D{d}", out["triton"][1], out["embedding_bag"][1], 1e-5)
    return ok


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), torch.__version__)
    results = [
        check(torch.float32, 257, 16, 1000, 127, 1e-4),
        check(torch.float32, 1024, 64, 16384, 4096, 1e-4),
        check(torch.bfloat16, 1024, 64, 16384, 4096, 2e-2),
        check(torch.bfloat16, 333, 7, 5000, 771, 2e-2),
        check_autocast(512, 32, 8192, 1000, 2e-2),
        check_autocast(1024, 64, 16384, 4096, 2e-2),
        check_fused(1024, 5, 16384, 4096),
        check_fused(77, 3, 1000, 771),
    ]
    sys.exit(0 if all(results) else 1)
