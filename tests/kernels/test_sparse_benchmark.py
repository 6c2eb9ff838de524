"""benchmarks/sparse_decode.py runs end to end at a tiny shape and writes its JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_writes_report(tmp_path):
    out = tmp_path / "report.json"
    args = ["--device", "cpu", "--batch", "64", "--d", "24", "--n-latents", "256", "--k", "4"]
    args += ["--threads", "1", "--warmup", "1", "--repeats", "2", "--out", str(out)]
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "sparse_decode.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["device"] == "cpu" and report["machine"]["torch_threads"] == 1
    assert report["machine"]["torch_version"] and report["machine"]["cpu_model"]
    cases = {row["case"]: row for row in report["results"]}
    assert set(cases) == {"decode", "grouped", "encode", "encode_op"}
    for row in cases.values():
        assert row["sparse"]["median_ms"] > 0 and row["dense"]["median_ms"] > 0
        assert row["speedup_median"] > 0 and row["dense_peak_mb"] > 0
    assert "decode" in result.stdout and "x" in result.stdout
