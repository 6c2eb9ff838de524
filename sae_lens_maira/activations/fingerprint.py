"""What defines an activation cache, so a resume or a rerun never mixes two different inputs.

The fingerprint holds the cache settings (hook, selection, context size, dtype, shard size, ...),
the world size, the model (config and a sample of every weight tensor) and one digest per study
(its id, its text fields and its images: a file by path, size and mtime, an array by content).
``describe_change`` names what differs, for the message that refuses a resume.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sae_lens_maira.data.study import ImageRef, Study

#: CacheConfig fields that do not change the cached rows (where and whether to overwrite).
NOT_FINGERPRINTED = ("output_dir", "overwrite")


def _image_digest(ref: ImageRef | None) -> str:
    if ref is None:
        return "-"
    if isinstance(ref, (str, Path)):
        path = Path(ref)
        try:
            st = path.stat()
            return f"file:{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        except OSError:
            return f"missing:{path}"
    if isinstance(ref, Image.Image):
        ref = np.asarray(ref)
    if isinstance(ref, np.ndarray):
        arr = np.ascontiguousarray(ref)
        return f"array:{arr.dtype}:{arr.shape}:" + hashlib.sha256(arr.tobytes()).hexdigest()[:16]
    return f"other:{type(ref).__name__}"


def study_digest(study: Study) -> str:
    parts: dict[str, Any] = {
        f.name: getattr(study, f.name)
        for f in fields(study)
        if f.name not in ("frontal", "lateral", "prior_frontal", "labels", "meta")
    }
    parts["images"] = [_image_digest(study.frontal), _image_digest(study.lateral),
                       _image_digest(study.prior_frontal)]  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_digest(model: torch.nn.Module) -> str:
    """The model config and the first values of every parameter: tells two checkpoints apart cheaply."""
    h = hashlib.sha256(json.dumps(_cfg_dict(model), sort_keys=True, default=str).encode())
    with torch.no_grad():
        for name, p in model.state_dict().items():
            h.update(name.encode() + str(tuple(p.shape)).encode())
            if p.is_floating_point() and p.numel():
                h.update(p.detach().flatten()[:64].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()[:16]


def _cfg_dict(model: torch.nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "cfg", None)
    if cfg is None:
        return {}
    try:
        d = asdict(cfg)
    except TypeError:
        d = dict(vars(cfg))
    return {k: v for k, v in d.items() if k not in ("device",)}


def cache_fingerprint(
    cfg: Any, model: torch.nn.Module, studies: Sequence[Study], world_size: int
) -> dict[str, Any]:
    settings = {k: v for k, v in asdict(cfg).items() if k not in NOT_FINGERPRINTED}
    return {
        "settings": settings,
        "world_size": world_size,
        "model": model_digest(model),
        "studies": [[s.study_id, study_digest(s)] for s in studies],
    }


def describe_change(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints (empty when they agree)."""
    changes: list[str] = []
    old_s, new_s = old.get("settings", {}), new.get("settings", {})
    for key in sorted(old_s.keys() | new_s.keys()):
        if old_s.get(key) != new_s.get(key):
            changes.append(f"cache.{key} was {old_s.get(key)!r}, now {new_s.get(key)!r}")
    if old.get("world_size") != new.get("world_size"):
        changes.append(
            f"world size was {old.get('world_size')}, now {new.get('world_size')} "
            f"(relaunch with torchrun --nproc-per-node {old.get('world_size')} to resume)"
        )
    if old.get("model") != new.get("model"):
        changes.append("the model checkpoint (config or weights) differs")
    a = dict(map(tuple, old.get("studies", [])))
    b = dict(map(tuple, new.get("studies", [])))
    added = [k for k in b if k not in a]
    removed = [k for k in a if k not in b]
    edited = [k for k in b if k in a and a[k] != b[k]]
    order_changed = not (added or removed) and list(a) != list(b)
    for label, ids in (
        ("added", added),
        ("removed", removed),
        ("with other images or text", edited),
    ):
        if ids:
            changes.append(f"{len(ids)} studies {label} (e.g. {', '.join(ids[:3])})")
    if order_changed:
        changes.append("the studies are in another order")
    return changes
