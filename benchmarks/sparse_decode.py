"""Benchmark the sparse SAE ops against the dense baselines SAELens runs, forward + backward.

Cases (per N and k):
* ``decode``: ``sparse_decode`` vs scatter-to-dense ``[B, N]`` + matmul.
* ``grouped``: one ``grouped_sparse_decode_csr`` pass over 5 Matryoshka groups and
  ``matryoshka_prefix_mse`` vs SAELens 6.54's ``MatryoshkaBatchTopKTrainingSAE``: a full dense
  decode plus incremental dense decodes of the inner prefixes; both sides compute the same five
  per-prefix MSE losses (sum over d, mean over batch) and backpropagate their sum.
* ``encode``: encoder step: dense ``x @ W_enc + b_enc`` without grad (needed to select) then
  ``sparse_encode_csr(hidden_pre=...)`` vs the dense pre-activations with grad, gathered.
* ``encode_op``: ``sparse_encode_csr`` alone (recomputing the selected pre-activations).

Usage::

    python benchmarks/sparse_decode.py --device cpu --threads 1
    python benchmarks/sparse_decode.py --device cuda            # bf16, B 4096, D 4096, N 16k/64k
    python benchmarks/sparse_decode.py --device cuda --n-latents 65536 --k 32 64 128

Writes ``benchmarks/results/sparse_decode_<device>.json`` with machine info.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sae_lens_maira.kernels import (  # noqa: E402
    grouped_sparse_decode_csr,
    matryoshka_prefix_mse,
    sparse_decode,
    sparse_encode_csr,
)
from sae_lens_maira.kernels.layout import padded_row_ptr, row_ids  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULTS = {
    "cpu": {"batch": 2048, "d": 512, "n_latents": [8192], "k": [32], "dtype": "float32"},
    "cuda": {"batch": 4096, "d": 4096, "n_latents": [16384, 65536], "k": [64], "dtype": "bfloat16"},
}
# dictionary_learning's common Matryoshka group fractions: 1/32, 1/16, 1/8, 1/4, 1/2 + 1/32.
GROUP_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2 + 1 / 32)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch", type=int, help="rows B (default 2048 cpu, 4096 cuda)")
    p.add_argument("--d", type=int, help="model width D (default 512 cpu, 4096 cuda)")
    p.add_argument("--n-latents", type=int, nargs="+", help="SAE widths N")
    p.add_argument("--k", type=int, nargs="+", help="actives per row")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument(
        "--impl", default=None, help="sparse impl (default triton on cuda, embedding_bag on cpu)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both sides")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--cases",
        nargs="+",
        default=["decode", "grouped", "encode", "encode_op"],
        choices=["decode", "grouped", "encode", "encode_op"],
    )
    p.add_argument("--out", type=Path, default=None, help="JSON path (default results/...)")
    args = p.parse_args(argv)
    for key, value in DEFAULTS[args.device].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.impl is None:
        args.impl = "triton" if args.device == "cuda" else "embedding_bag"
    return args


def machine_info(device: torch.device) -> dict[str, object]:
    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "flush_denormal": device.type == "cpu",
    }
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
        try:
            import triton

            info["triton_version"] = triton.__version__
        except ImportError:
            info["triton_version"] = None
    else:
        info["device_name"] = cpu_model
    return info


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> dict:
    """Median and min wall time of ``fn`` (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def peak_extra_mb(
    fn: Callable[[], None], device: torch.device, before: Callable[[], None]
) -> float:
    """Peak memory allocated by one call of ``fn`` above what was allocated before it
    (``before`` frees the previous call's gradients first)."""
    before()
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.time_range.start, e.self_cpu_memory_usage)
        for e in prof.events()
        if e.self_cpu_memory_usage
    )
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak / 2**20


def build_cases(
    args: argparse.Namespace, n_latents: int, k: int, device: torch.device, dtype: torch.dtype
) -> tuple[dict[str, tuple[Callable[[], None], Callable[[], None]]], Callable[[], None]]:
    """(sparse, dense) closures per case, each a full forward + backward with fresh grads, and
    the function that drops the gradients."""
    B, D, N = args.batch, args.d, n_latents
    gen = torch.Generator(device=device).manual_seed(0)
    # Distinct latents per row, positive values (post-ReLU activations).
    idx = torch.rand(B, N, device=device, generator=gen).topk(k, dim=1).indices
    values = torch.rand(B, k, device=device, generator=gen, dtype=torch.float32).to(dtype)
    values.requires_grad_()
    W_dec = (torch.randn(N, D, device=device, generator=gen) / D**0.5).to(dtype).requires_grad_()
    W_enc = W_dec.detach().t().contiguous().requires_grad_()
    b_enc = torch.zeros(N, device=device, dtype=dtype, requires_grad=True)
    x = torch.randn(B, D, device=device, generator=gen).to(dtype).requires_grad_()
    target = torch.randn(B, D, device=device, generator=gen).to(dtype)
    grad_out = torch.randn(B, D, device=device, generator=gen).to(dtype)
    grad_pre = torch.randn(B * k, device=device, generator=gen).to(dtype)
    row_ptr = padded_row_ptr(B, k, device)
    flat_idx = idx.reshape(-1)
    rows = row_ids(row_ptr, flat_idx.numel())
    ends = [round(N * sum(GROUP_FRACTIONS[: g + 1])) for g in range(len(GROUP_FRACTIONS))]
    ends[-1] = N
    impl = args.impl
    leaves = (values, W_dec, W_enc, b_enc, x)

    def fresh() -> None:
        for t in leaves:
            t.grad = None

    def dense_acts() -> torch.Tensor:
        zeros = torch.zeros(B, N, device=device, dtype=dtype)
        return zeros.scatter_add(1, idx, values)

    def decode_sparse() -> None:
        fresh()
        sparse_decode(idx, values, W_dec, impl=impl, validate=False).backward(grad_out)

    def decode_dense() -> None:
        fresh()
        (dense_acts() @ W_dec).backward(grad_out)

    def mse(recon: torch.Tensor) -> torch.Tensor:
        return (recon - target).pow(2).sum(-1).mean()

    def grouped_sparse() -> None:
        fresh()
        parts = grouped_sparse_decode_csr(
            row_ptr, flat_idx, values.reshape(-1), W_dec, ends, impl=impl, validate=False
        )
        matryoshka_prefix_mse(parts, target).sum().backward()

    def grouped_dense() -> None:
        # SAELens 6.54: the base forward decodes all latents; inner levels decode incrementally.
        fresh()
        acts = dense_acts()
        loss = mse(acts @ W_dec)
        decoded, prev = None, 0
        for width in ends[:-1]:
            part = acts[:, prev:width] @ W_dec[prev:width]
            decoded = part if decoded is None else decoded + part
            loss = loss + mse(decoded)
            prev = width
        loss.backward()

    def encode_sparse() -> None:
        fresh()
        with torch.no_grad():
            hidden_pre = torch.addmm(b_enc, x, W_enc)
        pre = sparse_encode_csr(
            x, W_enc, b_enc, row_ptr, flat_idx, impl=impl, validate=False, hidden_pre=hidden_pre
        )
        pre.backward(grad_pre)

    def encode_dense() -> None:
        fresh()
        hidden_pre = torch.addmm(b_enc, x, W_enc)
        hidden_pre[rows, flat_idx].backward(grad_pre)

    def encode_op_sparse() -> None:
        fresh()
        pre = sparse_encode_csr(x, W_enc, b_enc, row_ptr, flat_idx, impl=impl, validate=False)
        pre.backward(grad_pre)

    cases = {
        "decode": (decode_sparse, decode_dense),
        "grouped": (grouped_sparse, grouped_dense),
        "encode": (encode_sparse, encode_dense),
        "encode_op": (encode_op_sparse, encode_dense),
    }
    return {name: cases[name] for name in args.cases}, fresh


def _format_row(row: dict) -> str:
    sparse, dense = row["sparse"], row["dense"]
    return (
        f"{row['case']:10s} N={row['n_latents']:<6d} k={row['k']:<4d} "
        f"sparse {sparse['median_ms']:9.2f} ms (min {sparse['min_ms']:8.2f})  "
        f"dense {dense['median_ms']:9.2f} ms (min {dense['min_ms']:8.2f})  "
        f"x{row['speedup_median']:6.1f}  peak MB {row['sparse_peak_mb']:8.1f} vs "
        f"{row['dense_peak_mb']:8.1f}"
    )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: no CUDA device is visible to torch")
        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and args.impl == "triton":
            raise SystemExit("unset TRITON_INTERPRET: it makes Triton run on the CPU interpreter")
    else:
        torch.set_flush_denormal(True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    results = []
    combos = [(n, k) for n in args.n_latents for k in args.k]
    progress = tqdm(total=len(combos) * len(args.cases), desc="cases", file=sys.stderr)
    for n_latents, k in combos:
        cases, fresh = build_cases(args, n_latents, k, device, dtype)
        for name, (sparse_fn, dense_fn) in cases.items():
            sparse_t = time_ms(sparse_fn, device, args.warmup, args.repeats)
            dense_t = time_ms(dense_fn, device, args.warmup, args.repeats)
            row = {
                "case": name,
                "batch": args.batch,
                "d": args.d,
                "n_latents": n_latents,
                "k": k,
                "dtype": args.dtype,
                "impl": args.impl,
                "sparse": sparse_t,
                "dense": dense_t,
                "speedup_median": dense_t["median_ms"] / sparse_t["median_ms"],
                "sparse_peak_mb": peak_extra_mb(sparse_fn, device, fresh),
                "dense_peak_mb": peak_extra_mb(dense_fn, device, fresh),
            }
            results.append(row)
            progress.update()
            tqdm.write(_format_row(row), file=sys.stdout)
        del cases, fresh
        if device.type == "cuda":
            torch.cuda.empty_cache()
    progress.close()
    print(f"\n{args.device} {args.dtype} B={args.batch} D={args.d} impl={args.impl}")
    for row in results:
        print(_format_row(row))

    report = {
        "benchmark": "sparse_decode",
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": args.device,
        "machine": machine_info(device),
        "settings": {
            "warmup": args.warmup,
            "repeats": args.repeats,
            "group_fractions": GROUP_FRACTIONS,
            "timing": "forward + backward, fresh grads each call; median and min over repeats",
            "peak_mb": "extra memory allocated during one call (torch allocator)",
        },
        "results": results,
    }
    out = args.out or RESULTS / f"sparse_decode_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
