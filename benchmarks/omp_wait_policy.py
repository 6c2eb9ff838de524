"""What idle OpenMP threads cost on a busy machine: the CLI's OMP_WAIT_POLICY=PASSIVE vs libgomp's default.

The small model's training steps are many small parallel regions. With libgomp's default policy
the threads spin between them; when another process wants the cores, the spinning threads take
the time the working ones need. This runs the same 2-thread workload (training steps of a
transformer layer at the small default's shapes: batch 4 x 300 tokens, d_model 256) in a fresh
process per policy, first on an otherwise idle machine, then beside ``--beside`` CPU-bound
processes, and prints each wall time and each policy's wall time over PASSIVE's (above 1: PASSIVE is faster). A short spin
(``GOMP_SPINCOUNT=10000``) is measured too, as the alternative if PASSIVE cost time on an idle machine.

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


#: name -> the OpenMP environment it runs under (None: libgomp's default, spinning ~300k rounds)
POLICIES: dict[str, dict[str, str] | None] = {
    "default": None,
    "PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin10k": {"GOMP_SPINCOUNT": "10000"},  # a short spin, then sleep
}


def run_workload(policy: dict[str, str] | None, steps: int) -> tuple[float, float]:
    """(wall s, CPU s) of ``steps`` training steps in a fresh process under ``policy``."""
    names = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(policy or {})
    # a sitecustomize may set a policy: take what is not asked for out before torch loads
    code = f"import os\nfor k in {names!r}:\n    if k not in {sorted(policy or {})!r}: os.environ.pop(k, None)\n"
    code += WORKLOAD.format(steps=steps)
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
        result: dict[str, dict[str, float]] = {}
        for name, policy in POLICIES.items():
            wall, cpu = run_workload(policy, steps)
            result[name] = {"wall_s": wall, "cpu_s": cpu}
        result["ratio_over_passive"] = {
            name: result[name]["wall_s"] / result["PASSIVE"]["wall_s"] for name in POLICIES
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
        walls = ", ".join(f"{name} {r[name]['wall_s']:.1f} s" for name in POLICIES)
        ratios = ", ".join(f"{name} {r['ratio_over_passive'][name]:.2f}" for name in POLICIES)
        print(f"{key:>22}: wall {walls}; / PASSIVE: {ratios}")
    if load > 0.5:
        print(f"note: load average {load:.1f} at start: 'alone' had other work beside it too")
    if args.out:
        args.out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
