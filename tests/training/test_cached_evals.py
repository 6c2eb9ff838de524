"""SAE health and checkpoint curves from an activation cache, on small synthetic caches."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from sae_lens import StandardSAE, StandardSAEConfig

from sae_lens_maira.processing.roles import Role
from sae_lens_maira.training.cached_evals import checkpoint_curve, checkpoint_folders, sae_health

HOOK = "blocks.1.hook_resid_post"
D = 4


def _cache(n_rows: int = 10, ctx: int = 6, pad_rows: tuple[int, ...] = (), seed: int = 0):
    """A cached-activation dataset: ``pad_rows`` end in two padding positions holding 1e3."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n_rows, ctx, D, generator=g) + 0.5
    roles = torch.full((n_rows, ctx), int(Role.REPORT))
    for r in pad_rows:
        roles[r, -2:] = int(Role.PAD)
        acts[r, -2:] = 1e3
    ds = datasets.Dataset.from_dict({HOOK: acts.tolist(), "roles": roles.tolist()})
    return ds, acts, roles


class _SplitSAE(torch.nn.Module):
    """Latents relu(x), relu(-x) and one that never fires: decodes x exactly (or 0 with
    ``zero``)."""

    def __init__(self, zero: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.cfg = SimpleNamespace(d_sae=2 * D + 1)
        self.zero = zero

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.relu(), (-x).relu(), torch.zeros_like(x[:, :1])], -1)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        out = f[:, :D] - f[:, D : 2 * D]
        return torch.zeros_like(out) if self.zero else out


def test_exact_reconstruction_is_full_ev_and_the_silent_latent_is_dead():
    ds, acts, _ = _cache()
    h = sae_health(ds, _SplitSAE(), HOOK)
    x = acts.reshape(-1, D)
    assert h["n_positions"] == x.shape[0]
    assert h["explained_variance"] == pytest.approx(1.0, abs=1e-6)
    assert h["l0"] == pytest.approx(float((x != 0).sum()) / x.shape[0])
    assert h["dead_fraction"] == pytest.approx(1 / (2 * D + 1))


def test_padding_is_skipped_and_ev_is_against_the_mean():
    ds, acts, roles = _cache(pad_rows=(1, 7))
    h = sae_health(ds, _SplitSAE(zero=True), HOOK)  # reconstructs nothing
    x = acts.reshape(-1, D)[roles.reshape(-1) != int(Role.PAD)].double()
    want = 1 - float(x.pow(2).sum() / (x - x.mean(0)).pow(2).sum())
    assert h["n_positions"] == x.shape[0] == 10 * 6 - 4
    assert h["explained_variance"] == pytest.approx(want, rel=1e-5)
    assert h["explained_variance"] < 0  # predicting 0 is worse than predicting the mean


def test_max_positions_reads_the_first_positions_in_cache_order():
    ds, acts, _ = _cache(n_rows=200)
    cut = sae_health(ds, _SplitSAE(zero=True), HOOK, max_positions=100, batch=7)
    first = sae_health(ds.select(range(17)), _SplitSAE(zero=True), HOOK, max_positions=100)
    assert cut["n_positions"] == first["n_positions"] == 100
    assert cut["explained_variance"] == pytest.approx(first["explained_variance"], rel=1e-6)
    whole = sae_health(ds, _SplitSAE(zero=True), HOOK, max_positions=10**9)
    assert whole["n_positions"] == 200 * 6
    assert whole["explained_variance"] != pytest.approx(cut["explained_variance"], rel=1e-6)


def test_a_cache_without_positions_is_an_error():
    ds, _, _ = _cache(n_rows=2)
    only_pad = ds.map(lambda r: {"roles": [int(Role.PAD)] * len(r["roles"])})
    with pytest.raises(ValueError, match="no positions"):
        sae_health(only_pad, _SplitSAE(), HOOK)


def _save(folder: Path, *, exact: bool, mean: torch.Tensor) -> None:
    sae = StandardSAE(StandardSAEConfig(d_in=D, d_sae=2 * D))
    with torch.no_grad():
        eye = torch.eye(D)
        sae.W_enc.copy_(torch.cat([eye, -eye], 1))
        sae.b_enc.zero_()
        sae.b_dec.copy_(torch.zeros(D) if exact else mean)
        sae.W_dec.copy_(torch.cat([eye, -eye], 0) if exact else torch.zeros(2 * D, D))
    sae.save_model(str(folder))


def test_checkpoint_curve_scores_each_checkpoint_in_token_order(tmp_path):
    ds, acts, _ = _cache(n_rows=80)
    rows = 64  # the curve reads the first 64 rows
    x = acts[:rows].reshape(-1, D)
    run = tmp_path / "checkpoints" / "run"
    _save(run / "1000", exact=False, mean=x.mean(0))  # predicts the mean: EV 0
    _save(run / "200", exact=True, mean=x.mean(0))  # reconstructs exactly: EV 1
    (run / "final").mkdir()  # not a checkpoint
    assert [p.name for p in checkpoint_folders(tmp_path / "checkpoints")] == ["200", "1000"]
    curve = checkpoint_curve(ds, HOOK, tmp_path / "checkpoints")
    assert [c["tokens"] for c in curve] == [200, 1000]
    assert curve[0]["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert curve[0]["l0"] == pytest.approx(float((x != 0).sum()) / x.shape[0])
    assert curve[1]["explained_variance"] == pytest.approx(0.0, abs=1e-5)
    assert checkpoint_curve(ds, HOOK, None) == []
