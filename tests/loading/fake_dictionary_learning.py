"""Fake dictionary_learning checkpoints and a fake offline Hugging Face cache (tests only).

Files follow dictionary_learning's MatryoshkaBatchTopK format: ``ae.pt`` is a state dict of
tensors (W_enc [d, F], b_enc, W_dec [F, d], b_dec, k, threshold, group_sizes) and
``config.json`` is ``{"trainer": {...}, "buffer": {...}}`` as trainSAE writes it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def write_dl_folder(
    folder: Path,
    *,
    d_in: int = 32,
    ef: int = 4,
    k: int = 8,
    fractions: tuple[float, ...] = (0.125, 0.375, 0.5),
    threshold: float = 0.4,
    buffer: bool = True,
    norm_factor: float | None = None,
    dict_class: str = "MatryoshkaBatchTopKSAE",
    weights_dtype: torch.dtype = torch.float32,
    seed: int = 0,
    layer: int = 15,
) -> dict[str, torch.Tensor]:
    """Write ae.pt + config.json; return the float32 tensors that were saved."""
    folder.mkdir(parents=True, exist_ok=True)
    d_sae = ef * d_in
    sizes = [int(f * d_sae) for f in fractions[:-1]]
    sizes.append(d_sae - sum(sizes))
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    state = {
        "W_enc": (W_dec.T + 0.1 * torch.randn(d_in, d_sae, generator=g)).to(weights_dtype),
        "b_enc": (0.2 * torch.randn(d_sae, generator=g)).to(weights_dtype),
        "W_dec": W_dec.to(weights_dtype),
        "b_dec": (0.5 * torch.randn(d_in, generator=g)).to(weights_dtype),
        "k": torch.tensor(k, dtype=torch.int),
        "threshold": torch.tensor(threshold, dtype=torch.float32),
        "group_sizes": torch.tensor(sizes),
    }
    torch.save(state, folder / "ae.pt")
    trainer: dict[str, Any] = {
        "trainer_class": "MatryoshkaBatchTopKTrainer",
        "dict_class": dict_class,
        "lr": 2e-4,
        "steps": 1000,
        "auxk_alpha": 1 / 32,
        "warmup_steps": 1000,
        "decay_start": None,
        "threshold_beta": 0.999,
        "threshold_start_step": 1000,
        "top_k_aux": d_in // 2,
        "seed": 0,
        "activation_dim": d_in,
        "dict_size": d_sae,
        "group_fractions": list(fractions),
        "group_weights": [1 / len(sizes)] * len(sizes),
        "group_sizes": sizes,
        "k": k,
        "device": "cuda:0",
        "layer": layer,
        "lm_name": "microsoft/maira-2",
        "wandb_name": "MatryoshkaBatchTopKTrainer",
        "submodule_name": f"resid_post_layer_{layer}",
    }
    if norm_factor is not None:
        trainer["norm_factor"] = norm_factor
    config: dict[str, Any] = {"trainer": trainer}
    if buffer:
        config["buffer"] = {"d_submodule": d_in, "io": "out", "n_ctxs": 3000, "ctx_len": 1024}
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    return {
        name: value.float() if value.is_floating_point() else value for name, value in state.items()
    }


def reference_encode(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """dictionary_learning's inference encode: relu((x - b_dec) W_enc + b_enc), > threshold."""
    post = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    return post * (post > state["threshold"])


def reference_decode(state: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    return f @ state["W_dec"] + state["b_dec"]


def hub_snapshot(cache: Path, repo_id: str) -> Path:
    """Create the cache skeleton of ``repo_id`` (refs/main -> COMMIT); return the snapshot dir."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / "main").write_text(COMMIT)
    snapshot = storage / "snapshots" / COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    return snapshot
