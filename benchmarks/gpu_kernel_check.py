"""Triton sparse decode on a real GPU against dense autograd: forward, grad W_dec, grad values.

Odd D, repeated latents, rows with zero values, fp32 and bf16. Prints max errors and exits
non-zero on a mismatch. ``python benchmarks/gpu_kernel_check.py`` (needs CUDA + Triton).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_lens_maira.kernels import sparse_decode  # noqa: E402


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


if __name__ == "__main__":
    print(torch.cuda.get_device_name(), torch.__version__)
    results = [
        check(torch.float32, 257, 16, 1000, 127, 1e-4),
        check(torch.float32, 1024, 64, 16384, 4096, 1e-4),
        check(torch.bfloat16, 1024, 64, 16384, 4096, 2e-2),
        check(torch.bfloat16, 333, 7, 5000, 771, 2e-2),
    ]
    sys.exit(0 if all(results) else 1)
