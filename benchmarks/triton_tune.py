"""Sweep the Triton kernels' launch settings on a GPU, against cuBLAS and torch's embedding_bag.

For the training step's three sparse primitives at the issue's GPU shapes (B 4096, D 4096, k 64,
N 16384 and 65536; fp32 tables as under autocast with fp32 weights, and bf16):

* ``decode``: bag sum over rows (``out[b] = sum_j v[b,j] W[idx[b,j]]``), also via
  ``F.embedding_bag`` on CUDA;
* ``grad_w``: bag sum over the latent-sorted layout (grad W from grad_out);
* ``sddmm``: ``grad_out[b] . W[idx[b,j]]`` (grad values).

Each is timed with ``triton.testing.do_bench`` (median ms) and reported with the bandwidth of the
gathered bytes and the time of the dense matmul it replaces (``[B, N] @ [N, D]`` in bf16).
Latent frequencies are Zipf-like, as in a trained SAE. Writes
``benchmarks/results/triton_tune_<gpu>.json``.

    python benchmarks/triton_tune.py            # needs CUDA + Triton
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from dataclasses import asdict
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.testing

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sae_lens_maira.kernels import triton_ops  # noqa: E402
from sae_lens_maira.kernels.layout import by_latent, padded_row_ptr, row_ids  # noqa: E402
from sae_lens_maira.kernels.triton_ops import LaunchConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


#: the settings the launchers use now for each case
def current_config(kind: str, dtype: str) -> LaunchConfig:
    if kind == "sddmm":
        return triton_ops.SAMPLED_DOT_CONFIG
    return triton_ops.bag_sum_config(getattr(torch, dtype))


def zipf_indices(b: int, k: int, n: int, device: str) -> torch.Tensor:
    """``[B, k]`` distinct latents per row, ascending, drawn with Zipf-like frequencies."""
    probs = 1.0 / (torch.arange(n, dtype=torch.float32, device=device) + 10.0) ** 0.7
    idx = torch.multinomial(probs.expand(b, n), k, replacement=False)
    return idx.sort(dim=1).values


def configs() -> list[LaunchConfig]:
    """Tile shapes of 2k-16k elements per program, 4 or 8 warps."""
    grid = itertools.product((8, 16, 32, 64), (128, 256, 512, 1024), (4, 8))
    return [LaunchConfig(bk, bd, w) for bk, bd, w in grid if 2048 <= bk * bd <= 16384]


def bench(fn) -> float:
    return float(triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median"))


def run(n: int, dtype: torch.dtype, args: argparse.Namespace) -> list[dict]:
    b, d, k, dev = args.batch, args.d, args.k, args.device
    torch.manual_seed(0)
    idx2 = zipf_indices(b, k, n, dev)
    idx = idx2.reshape(-1)
    vals = torch.rand(b * k, device=dev, dtype=dtype)
    W = torch.randn(n, d, device=dev, dtype=dtype)
    grad_out = torch.randn(b, d, device=dev, dtype=dtype)
    ptr = padded_row_ptr(b, k, torch.device(dev))
    lat = by_latent(idx, n)
    bags = row_ids(ptr, idx.numel())[lat.perm]
    wperm = vals[lat.perm]
    elem = W.element_size()
    gathered_gb = b * k * d * elem / 1e9
    rows: list[dict] = []

    # independent references: torch's embedding_bag, a dense matmul, gathered dot products
    rows_of = row_ids(ptr, idx.numel())
    acts = torch.zeros(b, n, device=dev).index_put_((rows_of, idx), vals.float(), accumulate=True)
    ref = {
        "decode": F.embedding_bag(idx2, W, per_sample_weights=vals.view(b, k), mode="sum"),
        "grad_w": acts.t() @ grad_out.float(),
        "sddmm": (grad_out[rows_of].float() * W[idx].float()).sum(1),
    }
    acts, Wb = acts.to(torch.bfloat16), W.to(torch.bfloat16)
    dense_ms = bench(lambda: acts @ Wb)

    def record(kind: str, variant: str, cfg: LaunchConfig | None, ms: float) -> None:
        row = {
            "kind": kind,
            "variant": variant,
            "n": n,
            "dtype": str(dtype).replace("torch.", ""),
            "config": asdict(cfg) if cfg else None,
            "ms": ms,
            "gathered_gb_per_s": gathered_gb / (ms / 1e3),
            "dense_bf16_matmul_ms": dense_ms,
        }
        rows.append(row)

    record(
        "decode",
        "embedding_bag",
        None,
        bench(lambda: F.embedding_bag(idx2, W, per_sample_weights=vals.view(b, k), mode="sum")),
    )
    for cfg in configs():
        try:
            out = triton_ops.bag_sum(ptr, idx, vals, W, config=cfg)
            torch.testing.assert_close(out.float(), ref["decode"].float(), rtol=2e-2, atol=2e-2)
            record(
                "decode",
                "triton",
                cfg,
                bench(partial(triton_ops.bag_sum, ptr, idx, vals, W, config=cfg)),
            )
            fn = partial(triton_ops.bag_sum, lat.ptr, bags, wperm, grad_out, config=cfg)
            torch.testing.assert_close(fn().float(), ref["grad_w"].float(), rtol=2e-2, atol=2e-2)
            record("grad_w", "triton", cfg, bench(fn))
        except Exception as e:  # noqa: BLE001 - a config that cannot compile is skipped
            print(f"skip bag {cfg}: {type(e).__name__}: {str(e)[:120]}")
    for cfg in configs():
        try:
            fn = partial(triton_ops.sampled_dot, ptr, idx, grad_out, W, None, cfg)
            torch.testing.assert_close(fn().float(), ref["sddmm"], rtol=2e-2, atol=2e-1)
            record("sddmm", "row", cfg, bench(fn))
        except Exception as e:  # noqa: BLE001
            print(f"skip sddmm {cfg}: {type(e).__name__}: {str(e)[:120]}")
    return rows


def summarise(rows: list[dict]) -> None:
    keys = sorted({(r["kind"], r["variant"], r["n"], r["dtype"]) for r in rows})
    for key in keys:
        sel = sorted(
            (r for r in rows if (r["kind"], r["variant"], r["n"], r["dtype"]) == key),
            key=lambda r: r["ms"],
        )
        best = sel[0]
        current = asdict(current_config(key[0], key[3]))
        default = next((r for r in sel if r["config"] == current), None)
        print(
            f"{key[0]:7s} {key[1]:13s} N {key[2]:6d} {key[3]:9s} best {best['ms']:7.3f} ms "
            f"({best['gathered_gb_per_s']:6.0f} GB/s) {best['config']}  current "
            f"{default['ms'] if default else float('nan'):7.3f}  dense bf16 mm "
            f"{best['dense_bf16_matmul_ms']:.3f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--d", type=int, default=4096)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--n-latents", type=int, nargs="+", default=[16384, 65536])
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument(
        "--device", default="cuda", help="cpu only for a smoke run under TRITON_INTERPRET=1"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    rows = []
    name = torch.cuda.get_device_name()
    out = args.out or RESULTS / f"triton_tune_{name.replace(' ', '_')}.json"
    for n, dt in itertools.product(args.n_latents, args.dtypes):
        rows += run(n, getattr(torch, dt), args)
        summarise([r for r in rows if r["n"] == n and r["dtype"] == dt])
        out.write_text(json.dumps({"device": name, "rows": rows}, indent=1))  # after every shape
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
