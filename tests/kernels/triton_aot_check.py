"""Compile the Triton kernels ahead of time for real GPUs (sm_80, sm_90) without one.

Run as a script with TRITON_INTERPRET unset (the interpreter skips compilation). It lowers every
kernel variant the launchers use through Triton's full pipeline to a cubin with the bundled
ptxas, so typing and lowering errors that the CPU interpreter cannot see fail here.
"""

from __future__ import annotations

import os
import sys

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from sae_lens_maira.kernels import triton_fused, triton_ops

BAG_SUM = {
    "ptr_ptr": "*i64",
    "idx_ptr": "*i64",
    "w_ptr": "*{dt}",
    "table_ptr": "*{dt}",
    "out_ptr": "*{dt}",
    "D": "i32",
    "stride_tn": "i32",
    "stride_td": "i32",
    "stride_or": "i32",
}
SAMPLED_DOT = {
    "ptr_ptr": "*i64",
    "idx_ptr": "*i64",
    "a_ptr": "*{dt}",
    "table_ptr": "*{dt}",
    "bias_ptr": "*{dt}",
    "out_ptr": "*{dt}",
    "D": "i32",
    "stride_ar": "i32",
    "stride_ad": "i32",
    "stride_tn": "i32",
    "stride_td": "i32",
}


def compile_variant(fn, template, dtype, flags, optional_ptr, cap, block_k, block_d):
    signature = {name: kind.format(dt=dtype) for name, kind in template.items()}
    acc = tl.float64 if dtype == "fp64" else tl.float32
    constexprs = {"ACC": acc, "BLOCK_K": block_k, "BLOCK_D": block_d, **flags}
    for name in (*flags, "ACC", "BLOCK_K", "BLOCK_D"):
        signature[name] = "constexpr"
    if optional_ptr is not None and not next(iter(flags.values())):
        signature[optional_ptr] = "constexpr"
        constexprs[optional_ptr] = None
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(src, target=GPUTarget("cuda", cap, 32))
    assert kernel.asm["cubin"], "empty cubin"


def compile_fused(fn, signature, constexprs, cap, num_warps=4):
    """Compile a kernel from an explicit signature (mixed dtypes, several constexprs)."""
    signature = {**signature, **{name: "constexpr" for name in constexprs}}
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    kernel = triton.compile(
        src, target=GPUTarget("cuda", cap, 32), options={"num_warps": num_warps}
    )
    assert kernel.asm["cubin"], "empty cubin"


# the training step's mixed-precision and fused kernels, as their launchers call them on an H100
FUSED = [
    (  # bf16 gathers, fp32 weight gradient written from the accumulator
        triton_ops._bag_sum_kernel,
        {**BAG_SUM, "w_ptr": "*bf16", "table_ptr": "*bf16", "out_ptr": "*fp32"},
        {"ACC": tl.float32, "BLOCK_K": 8, "BLOCK_D": 1024},
        4,
    ),
    (
        triton_fused._prefix_fwd_kernel,
        {"parts_ptr": "*bf16", "target_ptr": "*fp32", "resid_ptr": "*fp32",
         "partial_ptr": "*fp32", "D": "i32", "n_rows": "i32", "n_blocks": "i32"},
        {"G": 5, "BLOCK_D": 512},
        4,
    ),
    (
        triton_fused._prefix_bwd_kernel,
        {"parts_ptr": "*bf16", "resid_ptr": "*fp32", "coef_ptr": "*fp32",
         "grad_parts_ptr": "*bf16", "grad_target_ptr": "*fp32", "D": "i32", "n_rows": "i32"},
        {"G": 5, "BLOCK_D": 512},
        4,
    ),
    (
        triton_fused._remove_parallel_kernel,
        {"w_ptr": "*fp32", "g_ptr": "*fp32", "D": "i32", "stride_w": "i32", "stride_g": "i32"},
        {"EPS": 1e-6, "BLOCK_D": 4096, "ONE_SWEEP": True},
        8,
    ),
    (
        triton_fused._remove_parallel_kernel,
        {"w_ptr": "*fp32", "g_ptr": "*fp32", "D": "i32", "stride_w": "i32", "stride_g": "i32"},
        {"EPS": 1e-6, "BLOCK_D": 512, "ONE_SWEEP": False},
        4,
    ),
    (
        triton_fused._renormalize_kernel,
        {"w_ptr": "*bf16", "D": "i32", "stride_w": "i32"},
        {"EPS": 0.0078125, "BLOCK_D": 4096, "ONE_SWEEP": True},
        8,
    ),
]  # fmt: skip


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "unset TRITON_INTERPRET"
    bag, dot = triton_ops._bag_sum_kernel, triton_ops._sampled_dot_kernel
    # the launchers' own tile sizes: bag sums cover 2 KiB of a row, the SDDMM 32 x 128
    variants = [
        (90, "bf16", bag, BAG_SUM, {}, None, 8, 1024),
        (90, "fp32", bag, BAG_SUM, {}, None, 8, 512),
        (90, "bf16", dot, SAMPLED_DOT, {"HAS_BIAS": True}, "bias_ptr", 32, 128),
        (90, "bf16", dot, SAMPLED_DOT, {"HAS_BIAS": False}, "bias_ptr", 32, 128),
        (80, "fp32", bag, BAG_SUM, {}, None, 8, 512),
        (80, "bf16", dot, SAMPLED_DOT, {"HAS_BIAS": False}, "bias_ptr", 32, 128),
    ]
    for cap, dtype, fn, template, flags, optional_ptr, block_k, block_d in variants:
        compile_variant(fn, template, dtype, flags, optional_ptr, cap, block_k, block_d)
        print(f"ok sm_{cap} {dtype} {fn.__name__} {flags} {block_k}x{block_d}", flush=True)
    for fn, signature, constexprs, num_warps in FUSED:
        compile_fused(fn, signature, constexprs, 90, num_warps)
        print(f"ok sm_90 {fn.__name__} {constexprs}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
