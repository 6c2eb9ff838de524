"""Train the small default once and reuse it: a cache keyed by data, settings and code.

The key hashes (1) the training studies (ids, texts, labels, render specs, image size), (2) the
training settings (:class:`DemoModelConfig`, seed) and (3) the source of the code that trains and
defines the model (this package, ``model/`` and ``processing/``), so any change retrains and
nothing stale is reused. Training writes into a temporary sibling folder that is renamed into
place only when complete, so an interrupted run never leaves a folder that looks cached.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sae_lens_maira.data.splits import split_studies
from sae_lens_maira.data.study import Study
from sae_lens_maira.demo.small_model import SUMMARY_NAME, DemoModelConfig, train_small_model
from sae_lens_maira.demo.studies import DemoStudies, demo_studies, studies_fingerprint

#: Code whose changes must retrain the model (relative to the package root).
_CODE_DIRS = ("demo", "model", "processing")
#: Files in those folders that only use a trained model (editing them must not retrain it).
_NOT_TRAINING = {"demo/pipeline.py", "demo/summary.py", "demo/held_out.py", "demo/probes.py"}
_KEY_FILE = "cache_key.json"
#: Validation studies are carved out of the training split (never trained on).
VALIDATION_FRACTION = 0.08
VALIDATION_SALT = "demo-validation"


def code_fingerprint() -> str:
    """SHA-256 over the source files that train and define the small model."""
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for sub in _CODE_DIRS:
        for path in sorted((root / sub).rglob("*.py")):
            if path.relative_to(root).as_posix() in _NOT_TRAINING:
                continue
            h.update(str(path.relative_to(root)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def demo_model_key(
    train_studies: list[Study], config: DemoModelConfig, *, seed: int = 0
) -> dict[str, str]:
    """The parts of the cache key, and their combined ``key``."""
    parts = {
        "data": studies_fingerprint(train_studies, config.image_size),
        "config": hashlib.sha256(
            json.dumps({"config": config.to_dict(), "seed": seed}, sort_keys=True).encode()
        ).hexdigest(),
        "code": code_fingerprint(),
    }
    parts["key"] = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return parts


def split_validation(
    train: list[Study], fraction: float = VALIDATION_FRACTION, minimum: int = 4
) -> tuple[list[Study], list[Study]]:
    """(fit, validation) out of the training split, deterministic by study id.

    Validation holds the studies :func:`hash_split` assigns to it, topped up with the studies of
    lowest hash when that gives fewer than ``minimum`` (small collections).
    """
    if len(train) < 2 * minimum:
        raise ValueError(
            f"{len(train)} training studies are too few to set {minimum} aside for validation; "
            "use more studies"
        )
    _, val = split_studies(train, fraction, salt=VALIDATION_SALT)
    if len(val) < minimum:
        ranked = sorted(train, key=lambda s: _hash_rank(s.study_id))
        val = ranked[:minimum]
    chosen = {s.study_id for s in val}
    return [s for s in train if s.study_id not in chosen], [
        s for s in train if s.study_id in chosen
    ]


def _hash_rank(study_id: str) -> bytes:
    return hashlib.sha256(f"{VALIDATION_SALT}:{study_id}".encode()).digest()


def ensure_demo_model(
    cache_dir: str | Path | None = None,
    *,
    studies: DemoStudies | None = None,
    config: DemoModelConfig | None = None,
    seed: int = 0,
    budget_s: float | None = 600.0,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> Path:
    """The trained small model's folder, training it first unless a matching one is cached.

    ``studies`` defaults to :func:`demo_studies` (the Open-I wheel and renders under
    ``cache_dir``). The model lives in ``cache_dir/models/maira2-small-<key>/``; load it with
    ``HookedMaira2.from_pretrained(path)`` and ``Maira2Processor.from_pretrained(path)``.
    """
    config = config or DemoModelConfig()
    if studies is None:
        studies = demo_studies(cache_dir, image_size=config.image_size, progress=progress)
    if studies.image_size != config.image_size:
        raise ValueError(
            f"the studies were rendered at {studies.image_size} px but the model reads "
            f"{config.image_size} px images; render them with demo_studies(image_size="
            f"{config.image_size})"
        )
    key = demo_model_key(studies.train, config, seed=seed)
    root = _models_dir(cache_dir)
    final = root / f"maira2-small-{key['key'][:16]}"
    if _is_complete(final, key["key"]):
        if log:
            log(f"using the cached small model {final}")
        return final
    root.mkdir(parents=True, exist_ok=True)
    fit, val = split_validation(studies.train)
    tmp: Path | None = None
    try:
        # small models trained on CPU land differently from run to run; a run that does not
        # learn to write every finding is retried with the next seed and the better one kept
        started = time.perf_counter()
        for attempt in range(max(1, config.max_attempts)):
            run_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=root))
            train_small_model(
                fit, val, run_dir, config=config, budget_s=budget_s, seed=seed + attempt,
                threads=threads, progress=progress, log=log,
            )  # fmt: skip
            if tmp is None or mention_gap(run_dir) > mention_gap(tmp):
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
                tmp = run_dir
            else:
                shutil.rmtree(run_dir, ignore_errors=True)
            gap = mention_gap(tmp)
            if gap >= config.min_mention_gap:
                break
            spent = time.perf_counter() - started
            if budget_s is not None and spent * (attempt + 2) / (attempt + 1) > budget_s:
                if log:
                    log(
                        f"kept the best of {attempt + 1} run(s): another would exceed {budget_s:.0f} s"
                    )
                break
            if log and attempt + 1 < config.max_attempts:
                log(
                    f"the kept weights mention some finding for only {gap:.0%} more validation "
                    f"positives than negatives (< {config.min_mention_gap:.0%}); retraining with "
                    f"seed {seed + attempt + 1}"
                )
        assert tmp is not None
        (tmp / _KEY_FILE).write_text(
            json.dumps(
                {
                    **key,
                    "n_fit": len(fit),
                    "n_validation": len(val),
                    "held_out_ids": [s.study_id for s in studies.held_out],
                },
                indent=2,
            )  # fmt: skip
        )
        if final.exists():  # stale or incomplete folder under the final name
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        for partial in root.glob(f".{final.name}.*.partial"):
            shutil.rmtree(partial, ignore_errors=True)
        raise
    return final


def mention_gap(model_dir: Path) -> float:
    """The kept weights' smallest (positives - negatives) validation mention rate over findings.

    -inf when the run recorded no validation of the kept step.
    """
    summary = json.loads((Path(model_dir) / SUMMARY_NAME).read_text())
    kept = [e for e in summary.get("evals", []) if e.get("step") == summary.get("best_step")]
    if not kept:
        return float("-inf")
    gaps = [
        m["positives"] - m["negatives"]
        for m in kept[-1].get("mentions", {}).values()
        if m.get("n_positives") and m.get("n_negatives")
    ]
    return min(gaps) if gaps else float("-inf")


def _models_dir(cache_dir: str | Path | None) -> Path:
    if cache_dir is None:
        from sae_lens_maira.data.openi import default_cache_dir

        return default_cache_dir().parent / "models"
    return Path(cache_dir).expanduser() / "models"


def _is_complete(folder: Path, key: str) -> bool:
    marker = folder / _KEY_FILE
    if not (folder.is_dir() and marker.is_file() and (folder / SUMMARY_NAME).is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False
