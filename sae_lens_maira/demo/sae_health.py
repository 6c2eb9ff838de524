"""Is the SAE healthy on the positions it was trained on? EV, L0 and dead latents.

SAELens's end-of-training evals splice the SAE into whole multimodal prompts, most of whose
positions (intermediate image tokens, boilerplate) the study's token selection never trains on;
those figures say little about the SAE itself. These are measured on the training cache: the
selected positions, exactly the distribution the SAE was fit to.
"""

from __future__ import annotations

from typing import Any

import torch

from sae_lens_maira.processing.roles import Role


@torch.no_grad()
def sae_health(exp: Any, sae: Any, max_positions: int = 50_000, batch: int = 4096) -> dict[str, float]:
    """Explained variance, mean L0 and the share of latents that never fire, over up to
    ``max_positions`` cached training positions (in cache order: deterministic)."""
    import datasets

    hook = exp.section("cache")["hook_name"]
    ds = datasets.Dataset.load_from_disk(str(exp.path(exp.section("cache")["output_dir"])))
    ds = ds.with_format("torch", columns=[hook, "roles"])
    param = next(sae.parameters())
    d_sae = int(sae.cfg.d_sae)
    fired = torch.zeros(d_sae, dtype=torch.bool)
    sq_err, l0_sum, s2, n = 0.0, 0.0, 0.0, 0
    s1: torch.Tensor | None = None
    rows_per_read = 64
    for start in range(0, len(ds), rows_per_read):
        rows = ds[start : start + rows_per_read]
        acts = rows[hook].reshape(-1, rows[hook].shape[-1]).float()
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
    if n == 0 or s1 is None:  # (s1 is None exactly when n == 0)
        raise ValueError("the training cache holds no positions to measure the SAE on")
    total_var = s2 - float(s1.pow(2).sum()) / n  # sum of squared deviations from the mean
    return {
        "explained_variance": 1.0 - sq_err / max(total_var, 1e-12),
        "l0": l0_sum / n,
        "dead_fraction": float((~fired).float().mean()),
        "n_positions": n,
    }
