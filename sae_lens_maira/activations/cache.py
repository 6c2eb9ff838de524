"""Cache selected activations of studies in SAELens's cached-activation format, resumably.

Studies run through HookedMaira2 up to the hook (``stop_at_layer``: no later blocks, no
unembedding); the selection policy picks positions; selected positions are packed in study order
into rows of ``context_size`` and written as an HF arrow dataset whose activation column is named
after the hook (``Array2D(context_size, d_in)``) plus ``token_ids`` (what SAELens's
``use_cached_activations`` reads) and ``roles``, ``study_index``, ``positions`` per position.

Work is split into shards of ``shard_studies`` studies; a shard and the leftover positions that
did not fill its last row are written before the progress file moves on, so a killed run resumes
at the next shard and produces the same dataset as an uninterrupted one. Under ``torchrun`` each
rank takes every ``world_size``-th study, writes its own shards, and rank 0 merges them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
import torch
from datasets import Array2D, Dataset, Features, Value
from datasets import Sequence as HFSequence
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sae_lens_maira.activations.selection import selection_mask
from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2, hook_layer
from sae_lens_maira.processing.images import ImageLoadError
from sae_lens_maira.processing.processor import EncodedPrompt, Maira2Processor

logger = logging.getLogger(__name__)

INFO_FILE = "cache_info.json"
TMP_DIR = ".tmp_shards"
_COLUMNS = ("acts", "token_ids", "roles", "study_index", "positions")


@dataclass
class CacheConfig:
    hook_name: str
    output_dir: str
    context_size: int = 128  # positions per stored row
    batch_size: int = 4  # studies per forward pass
    shard_studies: int = 64  # studies per shard: the resume granularity
    selection: str | list[str] = "study"
    with_report: bool = True  # teacher-force the findings after the prompt
    storage_dtype: str = "float32"  # "float32" or "float16"
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.context_size < 1 or self.batch_size < 1 or self.shard_studies < 1:
            raise ValueError("context_size, batch_size and shard_studies must be positive")
        if self.storage_dtype not in ("float32", "float16"):
            raise ValueError(
                f"storage_dtype must be 'float32' or 'float16', not {self.storage_dtype!r}"
            )


@dataclass
class CacheResult:
    path: Path
    n_rows: int
    n_positions: int
    n_studies: int
    skipped: dict[str, str] = field(default_factory=dict)  # study_id -> reason
    dropped_tail_positions: int = 0


def _features(cfg: CacheConfig, d_in: int) -> Features:
    return Features(
        {
            cfg.hook_name: Array2D(shape=(cfg.context_size, d_in), dtype=cfg.storage_dtype),
            "token_ids": HFSequence(Value("int32"), length=cfg.context_size),
            "roles": HFSequence(Value("int8"), length=cfg.context_size),
            "study_index": HFSequence(Value("int32"), length=cfg.context_size),
            "positions": HFSequence(Value("int32"), length=cfg.context_size),
        }
    )


def _concat(parts: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.cat([p[k] for p in parts]) for k in _COLUMNS}


def _pack_rows(
    columns: dict[str, torch.Tensor], cfg: CacheConfig, features: Features
) -> tuple[Dataset, dict[str, torch.Tensor]]:
    """Whole rows of ``context_size`` positions as a dataset, and the leftover positions."""
    C = cfg.context_size
    n_rows = columns["acts"].shape[0] // C
    full = {k: v[: n_rows * C] for k, v in columns.items()}
    tail = {k: v[n_rows * C :].contiguous() for k, v in columns.items()}
    rows = {
        cfg.hook_name: full["acts"]
        .reshape(n_rows, C, columns["acts"].shape[-1])
        .to(getattr(torch, cfg.storage_dtype))
        .numpy(),
        "token_ids": full["token_ids"].reshape(n_rows, C).to(torch.int32).numpy(),
        "roles": full["roles"].reshape(n_rows, C).to(torch.int8).numpy(),
        "study_index": full["study_index"].reshape(n_rows, C).to(torch.int32).numpy(),
        "positions": full["positions"].reshape(n_rows, C).to(torch.int32).numpy(),
    }
    return Dataset.from_dict(rows, features=features), tail


class _RankWriter:
    """One rank's shards, leftover tail and progress file under ``<output>/.tmp_shards/rankNNN``."""

    def __init__(self, root: Path, rank: int, cfg: CacheConfig, d_in: int) -> None:
        self.dir = root / TMP_DIR / f"rank{rank:03d}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cfg = cfg
        self.features = _features(cfg, d_in)
        self.progress_file = self.dir / "progress.json"
        self.progress = {"shards_done": 0, "skipped": {}, "n_positions": 0}
        if self.progress_file.is_file():
            self.progress = json.loads(self.progress_file.read_text())
        self._discard_unfinished()
        self.tail = self._load_tail()

    def _discard_unfinished(self) -> None:
        done = self.progress["shards_done"]
        for p in self.dir.iterdir():
            if p.name.endswith(".partial") or (
                p.name.startswith("shard_") and int(p.name[6:11]) >= done
            ):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            elif p.name.startswith("tail_") and int(p.name[5:10]) != done - 1:
                p.unlink()

    def _load_tail(self) -> dict[str, torch.Tensor] | None:
        done = self.progress["shards_done"]
        path = self.dir / f"tail_{done - 1:05d}.safetensors"
        return load_file(str(path)) if done and path.is_file() else None

    def write_shard(
        self, index: int, parts: list[dict[str, torch.Tensor]], skipped: dict[str, str]
    ) -> None:
        columns = _concat(([self.tail] if self.tail else []) + parts)
        rows, tail = _pack_rows(columns, self.cfg, self.features)
        partial = self.dir / f"shard_{index:05d}.partial"
        if len(rows):
            _save_quietly(rows, partial)
        else:  # every position went to the tail: mark the shard done without an (unloadable) empty table
            partial.mkdir()
        save_file(tail, str(self.dir / f"tail_{index:05d}.safetensors"))
        partial.rename(self.dir / f"shard_{index:05d}")
        self.progress["shards_done"] = index + 1
        self.progress["skipped"].update(skipped)
        self.progress["n_positions"] += sum(int(p["acts"].shape[0]) for p in parts)
        tmp = self.progress_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.progress))
        os.replace(tmp, self.progress_file)
        old_tail = self.dir / f"tail_{index - 1:05d}.safetensors"
        if old_tail.is_file():
            old_tail.unlink()
        self.tail = tail

    def shards(self) -> list[Path]:
        return sorted(p for p in self.dir.iterdir() if p.name.startswith("shard_") and p.is_dir())


def _run_batch(
    model: HookedMaira2, processor: Maira2Processor, encoded: list[EncodedPrompt], hook: str
) -> torch.Tensor:
    batch = processor.collate(encoded, padding_side="right")
    return model.run_to_hook(
        hook, batch.input_ids, attention_mask=batch.attention_mask, pixel_values=batch.pixel_values
    )


def _encode(processor: Maira2Processor, study: Study, with_report: bool) -> EncodedPrompt:
    enc = processor.encode_study(study, with_report=with_report)
    enc.pixel_values = processor.image_processor(enc.images) if enc.images else None
    return enc


def _process_shard(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: list[tuple[int, Study]],
    cfg: CacheConfig,
) -> tuple[list[dict[str, torch.Tensor]], dict[str, str]]:
    encoded: list[tuple[int, EncodedPrompt]] = []
    skipped: dict[str, str] = {}
    for gi, study in studies:
        try:
            encoded.append((gi, _encode(processor, study, cfg.with_report)))
        except (ImageLoadError, ValueError) as err:
            skipped[study.study_id] = str(err)
            logger.warning("skipping study %s: %s", study.study_id, err)
    # longest first within the shard to cut padding; results are put back in study order below
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][1]))
    results: dict[int, dict[str, torch.Tensor]] = {}
    for start in range(0, len(order), cfg.batch_size):
        chunk = [encoded[i] for i in order[start : start + cfg.batch_size]]
        acts = _run_batch(model, processor, [e for _, e in chunk], cfg.hook_name)
        if not torch.isfinite(acts).all():
            in_chunk = {gi for gi, _ in chunk}
            ids = [s.study_id for gi, s in studies if gi in in_chunk]
            raise ValueError(
                f"activations at {cfg.hook_name} contain NaN or inf for studies {ids}; the model or its "
                "inputs are numerically broken (try dtype=float32, check the checkpoint and the images)"
            )
        for row, (gi, enc) in enumerate(chunk):
            roles = torch.tensor(enc.roles)
            keep = selection_mask(roles, cfg.selection)
            pos = keep.nonzero().squeeze(-1)
            results[gi] = {
                "acts": acts[row, : len(enc)][keep.to(acts.device)].float().cpu(),
                "token_ids": torch.tensor(enc.input_ids)[keep],
                "roles": roles[keep],
                "study_index": torch.full((len(pos),), gi, dtype=torch.int32),
                "positions": pos.to(torch.int32),
            }
    return [results[gi] for gi in sorted(results)], skipped


def cache_activations(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    cfg: CacheConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    show_progress: bool = True,
) -> CacheResult | None:
    """Cache this rank's share of ``studies``; rank 0 (or a single process) returns the merged result.

    With ``world_size > 1`` the caller must have initialised ``torch.distributed``; ranks meet at a
    barrier before rank 0 merges.
    """
    out = Path(cfg.output_dir)
    layer = hook_layer(cfg.hook_name)
    if layer is not None and layer >= model.cfg.n_layers:
        raise ValueError(
            f"{cfg.hook_name} names block {layer} but the model has {model.cfg.n_layers} blocks"
        )
    if cfg.hook_name not in model.hook_dict:
        raise ValueError(
            f"the model has no hook {cfg.hook_name!r}; e.g. 'blocks.{model.cfg.n_layers // 2}.hook_resid_post'"
        )
    if rank == 0:
        _prepare_output(out, cfg)
    _barrier(world_size)
    d_in = model.cfg.d_model
    writer = _RankWriter(out, rank, cfg, d_in)
    mine = [(i, s) for i, s in enumerate(studies) if i % world_size == rank]
    shards = [mine[i : i + cfg.shard_studies] for i in range(0, len(mine), cfg.shard_studies)]
    model.eval()
    bar = tqdm(total=len(mine), desc=f"caching {cfg.hook_name}" + (f" [rank {rank}]" if world_size > 1 else ""),
               disable=not show_progress, unit="study")  # fmt: skip
    bar.update(sum(len(s) for s in shards[: writer.progress["shards_done"]]))
    for index in range(writer.progress["shards_done"], len(shards)):
        parts, skipped = _process_shard(model, processor, shards[index], cfg)
        writer.write_shard(index, parts, skipped)
        bar.update(len(shards[index]))
    bar.close()
    _barrier(world_size)
    result = None
    if rank == 0:
        result = _merge(out, cfg, studies, world_size, d_in)
    _barrier(world_size)
    return result


def _prepare_output(out: Path, cfg: CacheConfig) -> None:
    if (out / INFO_FILE).is_file():
        if not cfg.overwrite:
            raise FileExistsError(
                f"{out} already holds a finished cache; pass overwrite=True to rebuild it"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = out / TMP_DIR / "settings.json"
    wanted = json.dumps(asdict(cfg), sort_keys=True)
    if settings.is_file() and settings.read_text() != wanted:
        raise ValueError(
            f"{out} holds an unfinished cache made with other settings; delete it or use the same config to resume"
        )
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(wanted)
    leftovers = [p for p in out.iterdir() if p.name != TMP_DIR]
    if leftovers:
        raise FileExistsError(
            f"{out} is not empty ({[p.name for p in leftovers][:5]}); choose a new output_dir"
        )


def _merge(
    out: Path, cfg: CacheConfig, studies: Sequence[Study], world_size: int, d_in: int
) -> CacheResult:
    from sae_lens.cache_activations_runner import CacheActivationsRunner

    staging = out / TMP_DIR / "staging"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    k = 0
    skipped: dict[str, str] = {}
    n_positions = dropped = 0
    tails: list[dict[str, torch.Tensor]] = []
    for rank in range(world_size):
        rank_dir = out / TMP_DIR / f"rank{rank:03d}"
        progress = json.loads((rank_dir / "progress.json").read_text())
        skipped.update(progress["skipped"])
        n_positions += progress["n_positions"]
        tail = sorted(rank_dir.glob("tail_*.safetensors"))
        if tail:
            tails.append(load_file(str(tail[-1])))
        for shard in sorted(p for p in rank_dir.iterdir() if p.name.startswith("shard_")):
            if (shard / "state.json").is_file():
                shard.rename(staging / f"shard_{k:05d}")
                k += 1
    if tails:  # the ranks' leftovers fill further rows; only the last partial row is left out
        rows, rest = _pack_rows(_concat(tails), cfg, _features(cfg, d_in))
        dropped = int(rest["acts"].shape[0])
        if len(rows):
            _save_quietly(rows, staging / f"shard_{k:05d}")
            k += 1
    if k == 0:
        raise ValueError(
            f"no complete row of {cfg.context_size} positions was cached ({n_positions} selected positions); "
            "lower context_size or add studies"
        )
    ds = CacheActivationsRunner._consolidate_shards(staging, out, copy_files=False)
    info = {
        "hook_name": cfg.hook_name,
        "context_size": cfg.context_size,
        "d_in": d_in,
        "selection": cfg.selection,
        "n_rows": len(ds),
        "n_positions": len(ds) * cfg.context_size,
        "dropped_tail_positions": dropped,
        "n_studies": len(studies),
        "study_ids": [s.study_id for s in studies],
        "skipped": skipped,
        "world_size": world_size,
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=1))
    shutil.rmtree(out / TMP_DIR)
    if skipped:
        logger.warning(
            "skipped %d studies (see %s): %s", len(skipped), out / INFO_FILE, list(skipped)[:5]
        )
    if dropped:
        logger.info(
            "%d selected positions did not fill a last row of %d and were left out",
            dropped,
            cfg.context_size,
        )
    return CacheResult(out, len(ds), len(ds) * cfg.context_size, len(studies), skipped, dropped)


def _save_quietly(ds: Dataset, path: Path) -> None:
    """save_to_disk without a progress bar per shard (the study bar already shows progress)."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds.save_to_disk(str(path))
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _barrier(world_size: int) -> None:
    if world_size > 1:
        torch.distributed.barrier()
