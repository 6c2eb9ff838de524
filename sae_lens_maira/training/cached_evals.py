"""Is the SAE healthy on the positions it was trained on? EV, L0 and dead latents from a cache.

SAELens's end-of-training evals splice the SAE into whole multimodal prompts, most of whose
positions (intermediate image tokens, boilerplate) the study's token selection never trains on;
those figures say little about the SAE itself. These are measured on an activation cache
(:mod:`sae_lens_maira.activations.cache`): the selected positions, exactly the distribution the
SAE was fit to, read in cache order (deterministic).

:func:`sae_health` streams up to ``max_positions`` non-padding positions; :func:`checkpoint_curve`
scores every saved checkpoint of a run on the first rows of the cache, so the curve is cheap
enough to draw for each run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sae_lens_maira.processing.roles import Role


@torch.no_grad()
def sae_health(
    dataset: Any, sae: Any, hook_name: str, max_positions: int = 50_000, batch: int = 4096
) -> dict[str, float]:
    """Explained variance, mean L0 and the share of latents that never fire, over up to
    ``max_positions`` positions of ``dataset`` (a cached-activation dataset with ``hook_name``
    and ``roles`` columns; padding positions are skipped)."""
    ds = dataset.with_format("torch", columns=[hook_name, "roles"])
    param = next(sae.parameters())
    d_sae = int(sae.cfg.d_sae)
    fired = torch.zeros(d_sae, dtype=torch.bool)
    sq_err, l0_sum, s2, n = 0.0, 0.0, 0.0, 0
    s1: torch.Tensor | None = None
    rows_per_read = 64
    for start in range(0, len(ds), rows_per_read):
        rows = ds[start : start + rows_per_read]
        acts = rows[hook_name].reshape(-1, rows[hook_name].shape[-1]).float()
        keep = rows["roles"].reshape(-1) != int(Role.PAD)  # rows are packed; never padding
        acts = acts[keep][: max_positions - n]
        for i in range(0, len(acts), batch):
            x = acts[i : i + batch]
            feats = sae.encode(x.to(param.dtype))
            recon = sae.decode(feats).float()
            sq_err += float((x - recon).pow(2).sum())
            active = feats > 0
            l0_sum += float(active.sum())
            fired |= active.any(0).cpu()
            s1 = x.sum(0) if s1 is None else s1 + x.sum(0)
            s2 += float(x.pow(2).sum())
        n += len(acts)
        if n >= max_positions:
            break
    if n == 0 or s1 is None:
        raise ValueError("the activation cache holds no positions to measure the SAE on")
    total_var = s2 - float(s1.pow(2).sum()) / n  # sum of squared deviations from the mean
    return {
        "explained_variance": 1.0 - sq_err / max(total_var, 1e-12),
        "l0": l0_sum / n,
        "dead_fraction": float((~fired).float().mean()),
        "n_positions": n,
    }


def checkpoint_folders(checkpoints: Path) -> list[Path]:
    """The saved checkpoints of a run (``<checkpoint_dir>/<run>/<tokens>``), by training tokens."""
    found = (p for p in Path(checkpoints).glob("*/*") if p.name.isdigit())
    return sorted(found, key=lambda p: int(p.name))


@torch.no_grad()
def checkpoint_curve(
    dataset: Any, hook_name: str, checkpoints: Path | None, rows: int = 64
) -> list[dict[str, float]]:
    """Explained variance and L0 of every saved checkpoint on the first ``rows`` rows of
    ``dataset`` (every position of those rows); [] when the run saved none (``None``)."""
    from sae_lens import SAE

    if checkpoints is None:
        return []
    ds = dataset.with_format("torch", columns=[hook_name])
    x = ds[: min(len(ds), rows)][hook_name].reshape(-1, ds[0][hook_name].shape[-1]).float()
    curve = []
    for ck in checkpoint_folders(checkpoints):
        sae = SAE.load_from_disk(str(ck))
        feats = sae.encode(x)
        recon = sae.decode(feats)
        ev = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        curve.append(
            {
                "tokens": int(ck.name),
                "explained_variance": float(ev),
                "l0": float((feats > 0).sum(-1).float().mean()),
            }
        )
    return curve
