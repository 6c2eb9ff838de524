"""What idle OpenMP threads cost on a busy machine: the CLI's OMP_WAIT_POLICY=PASSIVE vs libgomp's default.

The small model's training steps are many small parallel regions. With libgomp's default policy
the threads spin between them; when another process wants the cores, the spinning threads take
the time the working ones need. This runs the same 2-thread workload (training steps of a
transformer layer at the small default's shapes: batch 4 x 300 tokens, d_model 256) in a fresh
process per policy, first on an otherwise idle machine, then beside ``--beside`` CPU-bound
processes, and prints each wall time and the ratio default / PASSIVE (higher: PASSIVE helps).

    python benchmarks/omp_wait_policy.py --out benchmarks/results/omp_wait_policy.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

WORKLOAD = """
import time, torch
torch.manual_seed(0)
torch.set_num_threads(2)
layer = torch.nn.TransformerEncoderLayer(256, 4, 1024, batch_first=True, dropout=0.0)
opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
x = torch.randn(4, 300, 256)
for _ in range(3):  # warm-up
    layer(x).square().mean().backward()
t, c = time.perf_counter(), time.process_time()
for _ in range({steps}):
    opt.zero_grad()
    layer(x).square().mean().backward()
    opt.step()
print(time.perf_counter() - t, time.process_time() - c)
"""


def _spin(stop: float) -> None:
    while time.time() < stop:
        pass


def run_workload(policy: str | None, steps: int) -> tuple[float, float]:
    """(wall s, CPU s) of ``steps`` training steps in a fresh process under ``policy``."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = WORKLOAD.format(steps=steps)
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    else:  # a sitecustomize may set it: take it out inside the process before torch loads
        code = "import os; os.environ.pop('OMP_WAIT_POLICY', None)\n" + code
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)  # fmt: skip
    wall, cpu = map(float, out.stdout.split())
    return wall, cpu


def measure(steps: int, beside: int) -> dict[str, dict[str, float]]:
    procs = []
    if beside:
        stop = time.time() + 3600
        procs = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(beside)]
        for p in procs:
            p.start()
    try:
        result = {}
        for name, policy in (("default", None), ("PASSIVE", "PASSIVE")):
            wall, cpu = run_workload(policy, steps)
            result[name] = {"wall_s": wall, "cpu_s": cpu}
        result["ratio_default_over_passive"] = {
            "wall": result["default"]["wall_s"] / result["PASSIVE"]["wall_s"]
        }
        return result
    finally:
        for p in procs:
            p.terminate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--beside", type=int, default=1, help="CPU-bound processes run beside")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    report = {
        "machine": f"{os.cpu_count()}-core {platform.machine()}",
        "load_at_start": load,
        "steps": args.steps,
        "alone": measure(args.steps, 0),
        f"beside_{args.beside}_cpu_bound": measure(args.steps, args.beside),
    }
    for key in ("alone", f"beside_{args.beside}_cpu_bound"):
        r = report[key]
        print(f"{key:>22}: default {r['default']['wall_s']:.1f} s, PASSIVE {r['PASSIVE']['wall_s']:.1f} s "
              f"wall; default / PASSIVE = {r['ratio_default_over_passive']['wall']:.2f}")  # fmt: skip
    if load > 0.5:
        print(f"note: load average {load:.1f} at start: 'alone' had other work beside it too")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
