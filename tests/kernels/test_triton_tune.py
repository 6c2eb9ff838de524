"""benchmarks/triton_tune.py: every launch setting it sweeps computes the right sums (interpreter).

The sweep checks each setting against torch before timing it and skips (prints) a failing one; here
none may be skipped, so a setting that computes wrong sums on some shape fails this test.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
triton_tune = pytest.importorskip("triton_tune")


@pytest.mark.slow
def test_sweep_checks_and_records_every_setting(monkeypatch, capsys):
    configs = [
        triton_tune.LaunchConfig(8, 16, 4),
        triton_tune.LaunchConfig(16, 32, 4),
        triton_tune.LaunchConfig(4, 64, 2),
    ]
    monkeypatch.setattr(triton_tune, "configs", lambda: configs)
    monkeypatch.setattr(triton_tune, "bench", lambda fn: (fn(), 2.0)[1])  # do_bench needs CUDA
    args = argparse.Namespace(batch=33, d=40, k=5, device="cpu")
    rows = triton_tune.run(300, torch.float32, args)
    assert "skip" not in capsys.readouterr().out
    kinds = [(r["kind"], r["variant"]) for r in rows]
    assert kinds.count(("decode", "embedding_bag")) == 1
    for kind in (("decode", "triton"), ("grad_w", "triton"), ("sddmm", "row")):
        assert kinds.count(kind) == len(configs)
    assert all(r["ms"] == 2.0 and r["gathered_gb_per_s"] > 0 for r in rows)
    triton_tune.summarise(rows)
    assert "sddmm" in capsys.readouterr().out
