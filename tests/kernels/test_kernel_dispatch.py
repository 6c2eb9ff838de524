"""resolve_impl: choices per device and shape, logging once per shape, and its errors."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sae_lens_maira.kernels import dispatch, resolve_impl, sparse_decode

CPU = torch.device("cpu")


def test_auto_picks_embedding_bag_on_cpu_for_sparse_shapes():
    assert resolve_impl("auto", device="cpu", n_latents=8192, k=32, d=512) == "embedding_bag"


def test_auto_picks_dense_when_many_latents_are_active():
    # CPU break-even measured near N/k = 3: dense below N/k = 4.
    assert resolve_impl("auto", device="cpu", n_latents=1024, k=300, d=64) == "dense"
    assert resolve_impl("auto", device="cpu", n_latents=1024, k=256, d=64) == "embedding_bag"


def test_auto_on_cuda_uses_triton_when_installed(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert resolve_impl("auto", device="cuda", n_latents=16384, k=64, d=4096) == "triton"
    assert resolve_impl("auto", device="cuda", n_latents=8192, k=64, d=4096) == "triton"
    # N/k = 64 < 128: the dense step won there on an H100 (MIN_LATENTS_PER_ACTIVE).
    assert resolve_impl("auto", device="cuda", n_latents=4096, k=64, d=4096) == "dense"


def test_auto_on_cuda_without_triton_falls_back_to_embedding_bag(monkeypatch):
    monkeypatch.setattr(dispatch, "triton_available", lambda: False)
    assert resolve_impl("auto", device="cuda", n_latents=131072, k=64, d=4096) == "embedding_bag"


def test_explicit_impls_are_honoured():
    for impl in ("embedding_bag", "dense"):
        assert resolve_impl(impl, device=CPU, n_latents=16, k=15, d=4) == impl
    # The interpreter is on in tests (tests/conftest.py), so triton runs on CPU tensors.
    assert resolve_impl("triton", device=CPU, n_latents=16, k=2, d=4) == "triton"


def test_unknown_impl_is_a_value_error():
    with pytest.raises(ValueError, match="impl must be one of"):
        resolve_impl("cuda", device=CPU, n_latents=16, k=2, d=4)


def test_triton_on_cpu_without_interpreter_names_the_fix(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(ValueError, match="TRITON_INTERPRET=1.*embedding_bag"):
        resolve_impl("triton", device=CPU, n_latents=16, k=2, d=4)


def test_triton_missing_names_the_fix(monkeypatch):
    monkeypatch.setattr(dispatch.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match=r"pip install 'sae-lens-maira\[gpu\]'"):
        resolve_impl("triton", device=CPU, n_latents=16, k=2, d=4)


def test_choice_is_logged_once_per_shape(caplog, monkeypatch):
    monkeypatch.setattr(dispatch, "_logged", set())
    with caplog.at_level(logging.INFO, logger="sae_lens_maira.kernels.dispatch"):
        for _ in range(3):
            resolve_impl("auto", device=CPU, n_latents=4096, k=32, d=64)
        resolve_impl("auto", device=CPU, n_latents=8192, k=32, d=64)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert "embedding_bag" in messages[0] and "n_latents=4096" in messages[0]


def test_import_and_cpu_ops_work_without_triton():
    """With triton unimportable, the package imports, auto runs, and impl='triton' says why not."""
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from sae_lens_maira.kernels import sparse_decode, resolve_impl, triton_available\n"
        "assert not triton_available()\n"
        "out = sparse_decode(torch.tensor([[1, 2]]), torch.ones(1, 2), torch.eye(4))\n"
        "assert out.tolist() == [[0.0, 1.0, 1.0, 0.0]], out\n"
        "try:\n"
        "    resolve_impl('triton', device='cpu', n_latents=4, k=2, d=4)\n"
        "except ValueError as e:\n"
        "    assert 'pip install' in str(e)\n"
        "else:\n"
        "    raise SystemExit('no error')\n"
        "assert 'triton' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_importing_the_package_does_not_import_triton():
    code = (
        "import sys\n"
        "import sae_lens_maira.kernels\n"
        "assert 'triton' not in sys.modules, 'triton imported eagerly'\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_dense_fallback_used_by_auto_matches_sparse():
    """At N/k < 4 auto runs dense; results agree with the sparse path."""
    gen = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(12, generator=gen)[:6] for _ in range(3)])
    values, W = torch.randn(3, 6, generator=gen), torch.randn(12, 5, generator=gen)
    torch.testing.assert_close(
        sparse_decode(idx, values, W), sparse_decode(idx, values, W, impl="embedding_bag")
    )
