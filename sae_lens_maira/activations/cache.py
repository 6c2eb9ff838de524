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

Every on-disk step can be killed and rerun: shards are renamed into place when complete; the
merge links them into a dataset built under ``final.partial`` and renamed once to ``final``
(shards are deleted only after that), whose files are then moved into the output folder with
``cache_info.json`` last (the commit). Rank 0 holds ``<output>/.lock`` (:mod:`output_lock`) for the
run, and ``.tmp_shards/fingerprint.json`` (:mod:`fingerprint`) stops a resume with other inputs.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import datasets
import torch
from datasets import Array2D, Dataset, Features, Value
from datasets import Sequence as HFSequence
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from sae_lens_maira.activations.fingerprint import cache_fingerprint, describe_change
from sae_lens_maira.activations.output_lock import LOCK_FILE, OutputLock
from sae_lens_maira.activations.selection import selection_mask
from sae_lens_maira.data.skips import SkipCollector, SkippedStudy, announce
from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2, hook_layer
from sae_lens_maira.processing.images import ImageLoadError
from sae_lens_maira.processing.processor import EncodedPrompt, Maira2Processor

logger = logging.getLogger(__name__)

INFO_FILE = "cache_info.json"
TMP_DIR = ".tmp_shards"  # the work folder: rank shards, staging, the fingerprint
FINAL_DIR = "final"  # the merged dataset, complete once renamed from final.partial
FINGERPRINT_FILE = "fingerprint.json"
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
    skipped: dict[str, str] = field(default_factory=dict)  # study_id -> message
    dropped_tail_positions: int = 0
    skipped_studies: list[SkippedStudy] = field(default_factory=list)  # at load and when encoding
    n_studies_listed: int = 0  # studies the source listed: n_studies plus those it left out
    reused: bool = False  # the folder already held this finished cache; nothing was computed

    def skip_summary(self) -> str:
        """The console line: ``skipped 2 of 40 studies: ...; see <cache_info.json>``."""
        return SkipCollector(self.skipped_studies).summary(
            self.n_studies_listed or self.n_studies, self.path / INFO_FILE
        )


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


def _concat(parts: list[dict[str, torch.Tensor]], d_in: int) -> dict[str, torch.Tensor]:
    """The parts' columns end to end; a shard whose every study was skipped has no parts."""
    if not parts:
        return {"acts": torch.empty(0, d_in), "token_ids": torch.empty(0, dtype=torch.long),
                "roles": torch.empty(0, dtype=torch.long),
                "study_index": torch.empty(0, dtype=torch.int32),
                "positions": torch.empty(0, dtype=torch.int32)}  # fmt: skip
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
        self.d_in = d_in
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
        self, index: int, parts: list[dict[str, torch.Tensor]], skipped: list[SkippedStudy]
    ) -> None:
        columns = _concat(([self.tail] if self.tail else []) + parts, self.d_in)
        rows, tail = _pack_rows(columns, self.cfg, self.features)
        partial = self.dir / f"shard_{index:05d}.partial"
        if len(rows):
            _save_quietly(rows, partial)
        else:  # every position went to the tail: mark the shard done without an (unloadable) empty table
            partial.mkdir()
        save_file(tail, str(self.dir / f"tail_{index:05d}.safetensors"))
        partial.rename(self.dir / f"shard_{index:05d}")
        self.progress["shards_done"] = index + 1
        self.progress["skipped"].update({s.study_id: s.detail for s in skipped})
        self.progress.setdefault("skipped_studies", []).extend(s.to_dict() for s in skipped)
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
) -> tuple[list[dict[str, torch.Tensor]], list[SkippedStudy]]:
    encoded: list[tuple[int, EncodedPrompt]] = []
    skipped = SkipCollector()
    for gi, study in studies:
        try:
            encoded.append((gi, _encode(processor, study, cfg.with_report)))
        except (ImageLoadError, ValueError) as err:  # bombs, tiny or broken images, bad prompts
            skipped.add_error(study.study_id, err)
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
        _check_storage_range(acts, chunk, cfg)
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
    return [results[gi] for gi in sorted(results)], skipped.items


def _check_storage_range(
    acts: torch.Tensor, chunk: list[tuple[int, EncodedPrompt]], cfg: CacheConfig
) -> None:
    """float16 storage holds |x| <= 65504; larger activations would be cached as inf."""
    if cfg.storage_dtype != "float16":
        return
    limit = torch.finfo(torch.float16).max
    peaks = [float(acts[row, : len(enc)].abs().max()) for row, (_, enc) in enumerate(chunk)]
    if max(peaks) > limit:
        over = [enc for (_, enc), peak in zip(chunk, peaks) if peak > limit]
        raise ValueError(
            f"activations at {cfg.hook_name} reach {max(peaks):.4g} in {len(over)} studies of this batch, "
            f"beyond float16's largest value {limit:.0f} (they would be stored as inf); set "
            "cache.storage_dtype: float32"
        )


def cache_activations(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    cfg: CacheConfig,
    *,
    rank: int = 0,
    world_size: int = 1,
    show_progress: bool = True,
    source_skips: Sequence[SkippedStudy] = (),
) -> CacheResult | None:
    """Cache this rank's share of ``studies``; rank 0 (or a single process) returns the merged result.

    ``source_skips`` are the studies the data source left out (missing files); they head
    ``cache_info.json``'s ``skipped_studies``, followed by those whose images or prompts failed
    here, in study order.

    With ``world_size > 1`` the caller must have initialised ``torch.distributed``; ranks meet at a
    barrier before rank 0 merges. Rank 0 holds the output folder's lock for the whole run. A
    finished cache made from the same inputs is returned as it is (the same command run twice, or
    rerun after a kill during the final clean-up, does nothing).
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
    fingerprint = cache_fingerprint(cfg, model, studies, world_size)
    lock = OutputLock(out, "activation cache run") if rank == 0 else None
    try:
        if lock is not None:
            lock.acquire()
            _prepare_output(out, cfg, fingerprint)
        _barrier(world_size)
        if (out / INFO_FILE).is_file():  # rank 0 found it finished with the same fingerprint
            _barrier(world_size)
            if rank != 0:
                return None
            result = replace(_result_from_info(out), reused=True)
            if result.skipped_studies:
                announce(result.skip_summary())
            return result
        d_in = model.cfg.d_model
        writer = _RankWriter(out, rank, cfg, d_in)
        shards = _rank_shards(studies, cfg, rank, world_size)
        model.eval()
        n_mine = sum(len(s) for s in shards)
        bar = tqdm(total=n_mine, desc=f"caching {cfg.hook_name}" + (f" [rank {rank}]" if world_size > 1 else ""),
                   disable=not show_progress, unit="study")  # fmt: skip
        bar.update(sum(len(s) for s in shards[: writer.progress["shards_done"]]))
        try:
            for index in range(writer.progress["shards_done"], len(shards)):
                parts, skipped = _process_shard(model, processor, shards[index], cfg)
                writer.write_shard(index, parts, skipped)
                bar.update(len(shards[index]))
        finally:  # an error message then starts on its own line
            bar.close()
        _barrier(world_size)
        result = None
        if rank == 0:
            result = _merge(out, cfg, studies, world_size, d_in, fingerprint, source_skips)
        _barrier(world_size)
        return result
    finally:
        if lock is not None:
            lock.release()


def _rank_shards(
    studies: Sequence[Study], cfg: CacheConfig, rank: int, world_size: int
) -> list[list[tuple[int, Study]]]:
    mine = [(i, s) for i, s in enumerate(studies) if i % world_size == rank]
    return [mine[i : i + cfg.shard_studies] for i in range(0, len(mine), cfg.shard_studies)]


def _write_json_atomically(path: Path, data: object, indent: int | None = None) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent))
    os.replace(tmp, path)


def _clear(out: Path) -> None:
    """Delete everything in ``out`` but the lock file this run holds."""
    for p in out.iterdir():
        if p.name != LOCK_FILE:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _prepare_output(out: Path, cfg: CacheConfig, fingerprint: dict) -> None:
    """Check the folder against this run's fingerprint: resume, start, or refuse saying why."""
    work = out / TMP_DIR
    info_path = out / INFO_FILE
    if info_path.is_file():
        old = json.loads(info_path.read_text()).get("fingerprint")
        changes = (
            describe_change(old, fingerprint) if old else ["it has no fingerprint (older version)"]
        )
        if cfg.overwrite:
            _clear(out)
        elif changes:
            raise FileExistsError(
                f"{out} already holds a finished cache made from other inputs ({'; '.join(changes)}); "
                "set cache.overwrite: true to rebuild it, or choose another cache.output_dir"
            )
        else:
            if work.exists():  # killed after the cache was committed, before the clean-up
                shutil.rmtree(work)
            logger.info("%s already holds this cache (same fingerprint); nothing to do", out)
            return
    fp_path = work / FINGERPRINT_FILE
    if fp_path.is_file():
        changes = describe_change(json.loads(fp_path.read_text()), fingerprint)
        if changes and cfg.overwrite:
            _clear(out)
        elif changes:
            raise ValueError(
                f"{out} holds an unfinished cache started from other inputs: {'; '.join(changes)}. "
                f"To resume it, rerun with the inputs it was started with; to start over, delete {work} "
                "(or set cache.overwrite: true)"
            )
    elif work.exists():  # no fingerprint yet: killed before anything was cached, or an older layout
        if (work / "settings.json").is_file() and not cfg.overwrite:
            raise ValueError(
                f"{out} holds an unfinished cache of an older version of this package; delete {work} "
                "to start over"
            )
        shutil.rmtree(work)
    leftovers = [p.name for p in out.iterdir() if p.name not in (TMP_DIR, LOCK_FILE)]
    if (
        leftovers and not (work / FINAL_DIR).is_dir()
    ):  # a publish in progress has moved files already
        raise FileExistsError(
            f"{out} is not empty ({leftovers[:5]}) and holds no cache of this run; choose a new "
            "cache.output_dir"
        )
    work.mkdir(parents=True, exist_ok=True)
    if not fp_path.is_file():
        _write_json_atomically(fp_path, fingerprint)


def _merge(
    out: Path,
    cfg: CacheConfig,
    studies: Sequence[Study],
    world_size: int,
    d_in: int,
    fingerprint: dict,
    source_skips: Sequence[SkippedStudy] = (),
) -> CacheResult:
    """Build the dataset under ``final.partial``, rename it once, then publish it into ``out``.

    Rank shards are linked (not moved) into the staging folder, so a kill before the rename
    leaves them intact and the rerun builds the same dataset again; after the rename only the
    publish (moving finished files, ``cache_info.json`` last) remains, then the clean-up.
    """
    work = out / TMP_DIR
    final = work / FINAL_DIR
    if not final.is_dir():
        _build_final(work, cfg, studies, world_size, d_in, fingerprint, source_skips)
    info = json.loads((final / INFO_FILE).read_text()) if (final / INFO_FILE).is_file() else None
    names = sorted(p.name for p in final.iterdir() if p.name != INFO_FILE)
    for name in names:
        os.replace(final / name, out / name)
    if info is not None:
        os.replace(final / INFO_FILE, out / INFO_FILE)  # the commit: the cache is finished now
    shutil.rmtree(work)
    result = _result_from_info(out)
    if result.skipped_studies:
        announce(result.skip_summary())
    if result.dropped_tail_positions:
        logger.info(
            "%d selected positions did not fill a last row of %d and were left out",
            result.dropped_tail_positions,
            cfg.context_size,
        )
    return result


def _build_final(
    work: Path,
    cfg: CacheConfig,
    studies: Sequence[Study],
    world_size: int,
    d_in: int,
    fingerprint: dict,
    source_skips: Sequence[SkippedStudy] = (),
) -> None:
    from sae_lens_maira.compat.sae_lens import consolidate_shards

    staging, partial = work / "staging", work / (FINAL_DIR + ".partial")
    for p in (staging, partial):
        if p.exists():
            shutil.rmtree(p)
    staging.mkdir()
    k = 0
    skipped: dict[str, str] = {}
    encode_skips: list[SkippedStudy] = []
    n_positions = dropped = 0
    tails: list[dict[str, torch.Tensor]] = []
    for rank in range(world_size):
        rank_dir = work / f"rank{rank:03d}"
        progress_file = rank_dir / "progress.json"
        progress = (json.loads(progress_file.read_text()) if progress_file.is_file()
                    else {"shards_done": 0, "skipped": {}, "n_positions": 0})  # fmt: skip
        expected = len(_rank_shards(studies, cfg, rank, world_size))
        if progress["shards_done"] != expected:
            raise RuntimeError(
                f"rank {rank} finished {progress['shards_done']} of its {expected} shards; rerun the "
                f"same command with {world_size} processes to finish them"
            )
        skipped.update(progress["skipped"])
        encode_skips += _progress_skips(progress)
        n_positions += progress["n_positions"]
        tail = rank_dir / f"tail_{expected - 1:05d}.safetensors"
        if expected and tail.is_file():
            tails.append(load_file(str(tail)))
        for shard in sorted(p for p in rank_dir.iterdir() if p.name.startswith("shard_")):
            if (shard / "state.json").is_file():
                shutil.copytree(shard, staging / f"shard_{k:05d}", copy_function=_link_or_copy)
                k += 1
    if tails:  # the ranks' leftovers fill further rows; only the last partial row is left out
        rows, rest = _pack_rows(_concat(tails, d_in), cfg, _features(cfg, d_in))
        dropped = int(rest["acts"].shape[0])
        if len(rows):
            _save_quietly(rows, staging / f"shard_{k:05d}")
            k += 1
    index = {s.study_id: i for i, s in enumerate(studies)}
    # in study order, whatever the world size
    encode_skips.sort(key=lambda s: index.get(s.study_id, len(index)))
    all_skips = SkipCollector([*source_skips, *encode_skips])
    SkipCollector(encode_skips).check_some_left(len(studies), "the activation cache")
    if k == 0:
        raise ValueError(
            f"no complete row of {cfg.context_size} positions was cached ({n_positions} selected positions); "
            "lower context_size or add studies"
        )
    partial.mkdir()
    ds = consolidate_shards(staging, partial)
    info = {
        "hook_name": cfg.hook_name,
        "context_size": cfg.context_size,
        "d_in": d_in,
        "selection": cfg.selection,
        "storage_dtype": cfg.storage_dtype,
        "n_rows": len(ds),
        "n_positions": len(ds) * cfg.context_size,
        "dropped_tail_positions": dropped,
        "n_studies": len(studies),
        "study_ids": [s.study_id for s in studies],
        "skipped": skipped,
        "skipped_studies": all_skips.to_json(),
        "n_studies_listed": len(studies) + len(source_skips),
        "world_size": world_size,
        "fingerprint": fingerprint,
    }
    del ds
    _write_json_atomically(partial / INFO_FILE, info, indent=1)
    partial.rename(work / FINAL_DIR)


def _progress_skips(progress: dict) -> list[SkippedStudy]:
    """A rank's skips; progress files of older versions only kept study id -> message."""
    if "skipped_studies" in progress:
        return [SkippedStudy.from_dict(d) for d in progress["skipped_studies"]]
    return [SkippedStudy(k, "unreadable_image", v) for k, v in progress.get("skipped", {}).items()]


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link a finished shard file into staging (no extra disk); copy where links fail."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _result_from_info(out: Path) -> CacheResult:
    info = json.loads((out / INFO_FILE).read_text())
    return CacheResult(
        out,
        int(info["n_rows"]),
        int(info["n_positions"]),
        int(info["n_studies"]),
        dict(info.get("skipped", {})),
        int(info.get("dropped_tail_positions", 0)),
        [SkippedStudy.from_dict(d) for d in info.get("skipped_studies", [])],
        int(info.get("n_studies_listed", info["n_studies"])),
    )


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
