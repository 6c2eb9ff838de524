"""Time a full SAE training step: our ``matryoshka`` SAE against SAELens's ``matryoshka_batchtopk``.

Both SAEs train through SAELens's ``SAETrainer.step`` (forward, backward, gradient clipping,
Adam, scheduler, firing statistics) with the same widths, k, batch, data, thread count and
denormal setting, interleaved round by round. Reported per shape: median step time and the
speed-up, memory (persistent = parameters, buffers and Adam state, counted exactly; transient =
the measured peak above that during a step), and explained variance after the same number of
steps on the same data. Results go to ``benchmarks/results/sae_step_<device>.json``.

    python benchmarks/sae_step.py                      # CPU: d_in 512, d_sae 8192, k 32, batch 2048
    python benchmarks/sae_step.py --device cuda        # bf16 autocast: d_in 4096, d_sae 16384 and
                                                       # 65536, k 64, batch 4096
    python benchmarks/sae_step.py --d-sae 4096 --quality-steps 0   # custom, timing only

CPU transient memory is measured in a child process per SAE (peak RSS with glibc returning freed
blocks, ``MALLOC_MMAP_THRESHOLD_``); CUDA uses the allocator's peak counter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, Path(__file__).resolve().parent):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from sae_lens import __version__ as SAE_LENS_VERSION  # noqa: E402
from sae_lens.config import SAETrainerConfig  # noqa: E402
from sae_lens.saes.matryoshka_batchtopk_sae import (  # noqa: E402
    MatryoshkaBatchTopKTrainingSAE,
    MatryoshkaBatchTopKTrainingSAEConfig,
)
from sae_lens.training.sae_trainer import SAETrainer  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from sae_lens_maira.saes import MatryoshkaTrainingSAE, MatryoshkaTrainingSAEConfig  # noqa: E402

SIDES = ("ours", "saelens")
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": dict(d_in=512, d_sae=[8192], k=32, batch=2048, precision="fp32"),
    "gpu": dict(d_in=4096, d_sae=[16384, 65536], k=64, batch=4096, precision="bf16-autocast"),
}
# the targets: speed-up by (device, d_sae); memory ratio (total) on GPU; EV gap
SPEEDUP_TARGETS = {("cpu", 8192): 3.0, ("cuda", 16384): 2.0, ("cuda", 65536): 4.0}
MEMORY_TARGET = 0.6
EV_TOLERANCE = 0.01


@dataclass
class Shape:
    d_in: int
    d_sae: int
    k: int
    batch: int


# ---------------------------------------------------------------------------------------------
# environment


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def configure_threads(threads: int) -> None:
    """The same settings for both SAEs: thread count and flush-to-zero of denormals."""
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------------------
# data: sparse non-negative codes over a unit-norm dictionary, Zipf-like frequencies


class Synthetic:
    """One fixed activation distribution (dictionary, frequencies, offset); draws are seeded."""

    def __init__(self, shape: Shape, device: torch.device, dtype: torch.dtype = torch.float32):
        fixed = torch.Generator(device="cpu").manual_seed(1234)
        self.shape, self.device, self.dtype = shape, device, dtype
        n_true = shape.d_sae // 2  # learnable by the SAE, so EV can separate the two
        dictionary = torch.randn(n_true, shape.d_in, generator=fixed)
        self.dictionary = (dictionary / dictionary.norm(dim=1, keepdim=True)).to(device)
        self.probs = (1.0 / (torch.arange(n_true, dtype=torch.float32) + 10.0) ** 0.7).to(device)
        self.offset = torch.randn(shape.d_in, generator=fixed).to(device)

    def batch(self, seed: int) -> torch.Tensor:
        """One batch, drawn on the device (a CPU draw of 4096 x 4096 took longer than a GPU step)."""
        shape, dev = self.shape, self.device
        g = torch.Generator(device=dev).manual_seed(seed)
        n = shape.batch * shape.k
        idx = torch.multinomial(self.probs, n, replacement=True, generator=g)
        mags = torch.rand(shape.batch, shape.k, generator=g, device=dev) * 2.0
        x = F.embedding_bag(
            idx.view(shape.batch, shape.k), self.dictionary, per_sample_weights=mags, mode="sum"
        )
        noise = 0.05 * torch.randn(shape.batch, shape.d_in, generator=g, device=dev)
        return (x + noise + self.offset).to(self.dtype).contiguous()

    def batches(self, n: int, first_seed: int) -> list[torch.Tensor]:
        return [self.batch(first_seed + i) for i in range(n)]


# ---------------------------------------------------------------------------------------------
# the two SAEs and their trainers


def input_dtype(precision: str) -> torch.dtype:
    """Activations come in the SAE's dtype (bf16 weights get bf16 inputs, as from a bf16 cache);
    SAELens's MSE backward fails on CUDA when fp32 inputs meet a bf16 reconstruction."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def group_ends(d_sae: int) -> list[int]:
    return MatryoshkaTrainingSAEConfig(d_in=8, d_sae=d_sae, k=1).group_ends


def build(
    side: str, shape: Shape, device: torch.device, precision: str, lr: float, decoder_impl: str
) -> SAETrainer:
    torch.manual_seed(0)
    dtype = "bfloat16" if precision == "bf16" else "float32"
    ends = group_ends(shape.d_sae)
    if side == "ours":
        sae: Any = MatryoshkaTrainingSAE(
            MatryoshkaTrainingSAEConfig(
                d_in=shape.d_in,
                d_sae=shape.d_sae,
                k=shape.k,
                group_sizes=[b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)],
                decoder_impl=decoder_impl,  # type: ignore[arg-type]
                dtype=dtype,
                device=str(device),
            )
        )
    elif side == "saelens":
        sae = MatryoshkaBatchTopKTrainingSAE(
            MatryoshkaBatchTopKTrainingSAEConfig(
                d_in=shape.d_in,
                d_sae=shape.d_sae,
                k=float(shape.k),
                matryoshka_widths=list(ends),
                dtype=dtype,
                device=str(device),
            )
        )
    else:
        raise ValueError(f"unknown side {side!r}")
    cfg = SAETrainerConfig(
        total_training_samples=10**12,
        train_batch_size_samples=shape.batch,
        lr=lr,
        lr_end=lr,
        device=str(device),
        autocast=precision == "bf16-autocast",
    )
    trainer = SAETrainer(cfg=cfg, sae=sae, data_provider=iter(()))
    from sae_lens_maira.saes.decoder_constraint import constrain_optimizer, wants_unit_norm_decoder

    if wants_unit_norm_decoder(sae):  # ours: the decoder renormalisation on this optimizer
        constrain_optimizer(trainer.optimizer, sae)
    return trainer


def step(trainer: SAETrainer, batch: torch.Tensor) -> None:
    trainer.step(batch)
    trainer.n_training_steps += 1


def persistent_bytes(trainer: SAETrainer) -> int:
    """Parameters, buffers and optimiser state: what lives between steps (exact count)."""
    total = sum(t.numel() * t.element_size() for t in trainer.sae.parameters())
    total += sum(t.numel() * t.element_size() for t in trainer.sae.buffers())
    for state in trainer.optimizer.state.values():
        total += sum(
            v.numel() * v.element_size() for v in state.values() if isinstance(v, torch.Tensor)
        )
    return total


@torch.no_grad()
def explained_variance(trainer: SAETrainer, batches: list[torch.Tensor]) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean||^2 with the training-mode (BatchTopK) codes."""
    sae = trainer.sae
    sae.eval()
    err = total = 0.0
    for x in batches:
        with trainer.autocast_if_enabled:
            x_hat = sae.decode(sae.encode(x)).float()
        x = x.float()
        err += float((x - x_hat).pow(2).sum())
        total += float((x - x.mean(0)).pow(2).sum())
    sae.train()
    return 1.0 - err / total


# ---------------------------------------------------------------------------------------------
# memory


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def transient_cuda(trainer: SAETrainer, pool: list[torch.Tensor], steps: int) -> int:
    device = torch.device(trainer.cfg.device)
    peaks = []
    for i in range(steps):
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step(trainer, pool[i % len(pool)])
        sync(device)
        peaks.append(torch.cuda.max_memory_allocated(device) - before)
    return max(peaks)


def transient_cpu_in_this_process(trainer: SAETrainer, pool: list[torch.Tensor], steps: int) -> int:
    peaks = []
    for i in range(steps):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
        before = _rss_kib("VmRSS")
        step(trainer, pool[i % len(pool)])
        peaks.append(_rss_kib("VmHWM") - before)
    return max(peaks) * 1024


def transient_cpu(args: argparse.Namespace, side: str, shape: Shape) -> int | None:
    """Run one side in a fresh child process so other allocations do not blur its peak."""
    cmd = [
        sys.executable,
        __file__,
        "--memory-worker",
        side,
        "--device",
        "cpu",
        "--d-in",
        str(shape.d_in),
        "--d-sae",
        str(shape.d_sae),
        "--k",
        str(shape.k),
        "--batch",
        str(shape.batch),
        "--threads",
        str(args.threads),
        "--precision",
        args.precision,
        "--decoder-impl",
        args.decoder_impl,
    ]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if out.returncode != 0:
        print(f"memory worker for {side} failed:\n{out.stderr[-3000:]}", file=sys.stderr)
        return None
    return int(json.loads(out.stdout.strip().splitlines()[-1])["transient_bytes"])


def memory_worker(args: argparse.Namespace) -> None:
    configure_threads(args.threads)
    shape = Shape(args.d_in, args.d_sae[0], args.k, args.batch)
    device = torch.device("cpu")
    pool = Synthetic(shape, device, input_dtype(args.precision)).batches(2, first_seed=1)
    trainer = build(args.memory_worker, shape, device, args.precision, args.lr, args.decoder_impl)
    for i in range(2):  # Adam state exists after the first step; measure steady steps
        step(trainer, pool[i % 2])
    print(json.dumps({"transient_bytes": transient_cpu_in_this_process(trainer, pool, 3)}))


# ---------------------------------------------------------------------------------------------
# one shape


def run_shape(args: argparse.Namespace, shape: Shape, device: torch.device) -> dict[str, Any]:
    print(
        f"\n== d_in {shape.d_in}, d_sae {shape.d_sae}, k {shape.k}, batch {shape.batch}, "
        f"{args.precision} on {device}"
    )
    data = Synthetic(shape, device, input_dtype(args.precision))
    pool = data.batches(args.pool, first_seed=1)
    trainers = {
        side: build(side, shape, device, args.precision, args.lr, args.decoder_impl)
        for side in SIDES
    }
    for trainer in trainers.values():
        for i in range(args.warmup):
            step(trainer, pool[i % len(pool)])
        sync(device)
    impl = getattr(trainers["ours"].sae, "decoder_impl_in_use", None)

    times: dict[str, list[float]] = {side: [] for side in SIDES}
    bar = tqdm(total=args.rounds * args.steps * len(SIDES), desc="timing", leave=False)
    for r in range(args.rounds):
        for side in SIDES if r % 2 == 0 else SIDES[::-1]:
            trainer = trainers[side]
            for i in range(args.steps):
                batch = pool[(r * args.steps + i) % len(pool)]
                sync(device)
                t0 = time.perf_counter()
                step(trainer, batch)
                sync(device)
                times[side].append(time.perf_counter() - t0)
                bar.update()
    bar.close()

    if args.profile:
        for side, trainer in trainers.items():
            profile_steps(side, trainer, pool, device)

    results: dict[str, Any] = {}
    for side, trainer in trainers.items():
        if device.type == "cuda":
            transient: int | None = transient_cuda(trainer, pool, 3)
        else:
            transient = transient_cpu(args, side, shape) if args.memory else None
        persistent = persistent_bytes(trainer)
        ts = sorted(times[side])
        results[side] = {
            "median_step_s": statistics.median(ts),
            "mean_step_s": statistics.fmean(ts),
            "min_step_s": ts[0],
            "max_step_s": ts[-1],
            "n_timed_steps": len(ts),
            "persistent_bytes": persistent,
            "transient_peak_bytes": transient,
            "total_peak_bytes": None if transient is None else persistent + transient,
        }
    results["ours"]["decoder_impl"] = impl
    del trainers
    if device.type == "cuda":
        torch.cuda.empty_cache()

    ours, theirs = results["ours"], results["saelens"]
    record: dict[str, Any] = {
        "shape": vars(shape),
        "matryoshka_widths": group_ends(shape.d_sae),
        "results": results,
        "speedup": theirs["median_step_s"] / ours["median_step_s"],
    }
    if ours["transient_peak_bytes"] is not None and theirs["transient_peak_bytes"]:
        record["memory_ratio_total"] = ours["total_peak_bytes"] / theirs["total_peak_bytes"]
        record["memory_ratio_transient"] = (
            ours["transient_peak_bytes"] / theirs["transient_peak_bytes"]
        )
    if args.quality_steps > 0:
        record["quality"] = run_quality(args, shape, device, data)
    record["targets"] = targets(device, shape, record)
    print_record(record)
    return record


def profile_steps(
    side: str, trainer: SAETrainer, pool: list[torch.Tensor], device: torch.device
) -> None:
    """Print where three steps spend their time: named regions, GPU idle time and host syncs
    (``step_profile.py``), then the top ops by self device time (torch profiler)."""
    from step_profile import regions, summarize
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with regions(), profile(activities=activities, with_stack=True) as prof:
        for i in range(3):
            sync(device)
            step(trainer, pool[i % len(pool)])
            sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(f"\n-- profile: {side}, 3 steps")
    print(summarize(prof, 3))
    print(prof.key_averages().table(sort_by=sort, row_limit=25, max_name_column_width=60))


def run_quality(
    args: argparse.Namespace, shape: Shape, device: torch.device, data: Synthetic
) -> dict[str, Any]:
    """Both SAEs from scratch on the same fresh batches; EV on held-out draws."""
    held_out = data.batches(2, first_seed=10**6)
    out: dict[str, Any] = {"steps": args.quality_steps, "lr": args.lr}
    for side in SIDES:
        trainer = build(side, shape, device, args.precision, args.lr, args.decoder_impl)
        for i in tqdm(range(args.quality_steps), desc=f"quality {side}", leave=False):
            step(trainer, data.batch(10_000 + i))
        out[f"explained_variance_{side}"] = explained_variance(trainer, held_out)
        del trainer
    out["explained_variance_gap"] = (
        out["explained_variance_saelens"] - out["explained_variance_ours"]
    )
    return out


def targets(device: torch.device, shape: Shape, record: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    speed = SPEEDUP_TARGETS.get((device.type, shape.d_sae))
    if speed is not None:
        found["speedup"] = {"target": speed, "met": record["speedup"] >= speed}
    if device.type == "cuda" and "memory_ratio_total" in record:
        found["memory_ratio_total"] = {
            "target": MEMORY_TARGET,
            "met": record["memory_ratio_total"] <= MEMORY_TARGET,
        }
    if "quality" in record:
        gap = record["quality"]["explained_variance_gap"]
        found["explained_variance_within"] = {"target": EV_TOLERANCE, "met": gap <= EV_TOLERANCE}
    return found


def _mib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def print_record(record: dict[str, Any]) -> None:
    for side in SIDES:
        r = record["results"][side]
        print(
            f"  {side:8s} median {r['median_step_s'] * 1e3:9.2f} ms/step   persistent "
            f"{_mib(r['persistent_bytes'])}, transient {_mib(r['transient_peak_bytes'])}, "
            f"total {_mib(r['total_peak_bytes'])}"
        )
    print(f"  decoder_impl (ours): {record['results']['ours'].get('decoder_impl')}")
    print(f"  speed-up: {record['speedup']:.2f}x")
    if "memory_ratio_total" in record:
        print(
            f"  memory ours/saelens: total {record['memory_ratio_total']:.2f}, "
            f"transient {record['memory_ratio_transient']:.2f}"
        )
    if "quality" in record:
        q = record["quality"]
        print(
            f"  explained variance after {q['steps']} steps: ours "
            f"{q['explained_variance_ours']:.4f}, saelens {q['explained_variance_saelens']:.4f}"
        )
    for name, t in record["targets"].items():
        print(f"  target {name} {t['target']}: {'met' if t['met'] else 'NOT met'}")


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--d-in", type=int, default=None)
    p.add_argument("--d-sae", type=int, nargs="+", default=None)
    p.add_argument("--k", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16-autocast", "bf16"),
        default=None,
        help="fp32; bf16-autocast (fp32 weights, SAETrainer autocast); bf16 (bf16 weights)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (CPU), both SAEs")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per side per round")
    p.add_argument("--rounds", type=int, default=4, help="rounds alternating the two SAEs")
    p.add_argument("--pool", type=int, default=8, help="distinct data batches to cycle")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument(
        "--decoder-impl", default="auto", choices=("auto", "triton", "embedding_bag", "dense")
    )
    p.add_argument("--quality-steps", type=int, default=None, help="0 skips the EV comparison")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip CPU memory")
    p.add_argument("--profile", action="store_true", help="print a profile of each side's step")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--memory-worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    preset = PRESETS["gpu" if torch.device(args.device).type == "cuda" else "cpu"]
    for name in ("d_in", "d_sae", "k", "batch", "precision"):
        if getattr(args, name) is None:
            setattr(args, name, preset[name])
    if args.quality_steps is None:
        args.quality_steps = 1000 if torch.device(args.device).type == "cuda" else 200
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.memory_worker is not None:
        memory_worker(args)
        return
    device = torch.device(args.device)
    configure_threads(args.threads)
    env: dict[str, Any] = {
        "device": device.type,
        "cpu_model": cpu_model(),
        "threads": torch.get_num_threads(),
        "flush_denormal": True,
        "precision": args.precision,
        "torch": torch.__version__,
        "sae_lens": SAE_LENS_VERSION,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    print(json.dumps(env))
    records = [
        run_shape(args, Shape(args.d_in, d_sae, args.k, args.batch), device) for d_sae in args.d_sae
    ]
    out = args.out or ROOT / "benchmarks" / "results" / f"sae_step_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({"environment": env, "settings": _settings(args), "shapes": records}, indent=2)
    )
    print(f"\nwrote {out}")


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    keep = ("warmup", "steps", "rounds", "pool", "lr", "decoder_impl", "quality_steps")
    return {k: getattr(args, k) for k in keep}


if __name__ == "__main__":
    main()
