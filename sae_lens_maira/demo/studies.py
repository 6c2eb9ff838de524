"""The demo's studies: real Open-I reports with synthetic radiographs, split train / held out.

Everything downstream (the small model's training, the activation cache, SAE evaluation) must
agree on which studies are held out, so the split lives here and is a pure function of the study
ids (:func:`sae_lens_maira.data.splits.split_studies`, default salt). It is the split an
experiment YAML gets with ``data: {source: openi, image_size: 112, split: held_out,
held_out_fraction: 0.2}``.

Rendering ~3,400 studies takes ~40 s on one core; PNGs are written once under the cache folder
and reused, and ``workers > 1`` renders chunks in parallel processes. The folder is named by
:func:`render_key` (the renderer's settings and the source of the code that turns a report into
pixels), so editing the renderer renders afresh instead of reusing stale images.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from sae_lens_maira.cache_dirs import default_cache_dir, openi_wheel_dir
from sae_lens_maira.data.openi import (
    OpenIReport,
    ensure_openi_wheel,
    load_openi_reports,
    openi_studies,
)
from sae_lens_maira.data.splits import split_studies
from sae_lens_maira.data.study import Study
from sae_lens_maira.data.synthetic_xray import SyntheticXrayRenderer
from sae_lens_maira.demo_settings import DemoSettings

#: Image side of the small default (8 x 8 patches of 14 px) and the held-out share: the demo
#: settings' defaults (``demo.image_size``, ``demo.held_out_fraction``), not copies.
DEMO_IMAGE_SIZE = DemoSettings.image_size
DEMO_HELD_OUT_FRACTION = DemoSettings.held_out_fraction
DEMO_RENDER_SEED = 0
#: The findings the demo is judged on by default (labels from MeSH, mentions from the report
#: labeller): ``demo.findings``' default, the labeller's own list. A run reads its config's.
DEMO_FINDINGS = DemoSettings.findings


@dataclass
class DemoStudies:
    """The demo's train and held-out studies (images as PNG paths under the cache)."""

    train: list[Study]
    held_out: list[Study]
    image_size: int = DEMO_IMAGE_SIZE
    held_out_fraction: float = DEMO_HELD_OUT_FRACTION
    source: str = ""
    meta: dict = field(default_factory=dict)

    def counts(self, findings: Sequence[str] = DEMO_FINDINGS) -> dict[str, dict[str, int]]:
        """Studies and positives per finding in each split (for logs and reports)."""
        out = {}
        for name, part in (("train", self.train), ("held_out", self.held_out)):
            row = {"studies": len(part)}
            row.update({f: sum(bool(s.labels.get(f)) for s in part) for f in findings})
            out[name] = row
        return out


def studies_fingerprint(studies: Sequence[Study], image_size: int) -> str:
    """SHA-256 over ids, texts, labels and render specs (not pixels: they follow the specs)."""
    h = hashlib.sha256(f"image_size={image_size}".encode())
    for s in studies:
        record = {
            "id": s.study_id,
            "findings": s.findings,
            "indication": s.indication,
            "comparison": s.comparison,
            "technique": s.technique,
            "labels": {k: bool(v) for k, v in sorted(s.labels.items())},
            "render": s.meta.get("render"),
            "lateral": s.lateral is not None,
        }
        h.update(json.dumps(record, sort_keys=True, default=str).encode())
    return h.hexdigest()


#: Modules whose source decides a study's pixels (relative to the package root): the renderer,
#: and the Open-I code that turns a report's labels into a render spec and per-study seed.
RENDER_CODE = ("data/synthetic_xray.py", "data/openi.py")


def package_root() -> Path:
    """The ``sae_lens_maira`` package folder (the root the code fingerprints are taken under)."""
    return Path(__file__).resolve().parents[1]


def source_fingerprint(files: Sequence[Path], root: Path) -> str:
    """SHA-256 over the files' paths (relative to ``root``) and contents."""
    h = hashlib.sha256()
    for path in files:
        h.update(Path(path).relative_to(root).as_posix().encode())
        h.update(Path(path).read_bytes())
    return h.hexdigest()


def render_key(image_size: int, seed: int = DEMO_RENDER_SEED, *, root: Path | None = None) -> str:
    """The rendered images' key: size, line width, seed and the rendering code's source."""
    root = Path(root) if root is not None else package_root()
    spec = SyntheticXrayRenderer(image_size)
    settings = json.dumps({"size": spec.size, "line_px": spec.line_px, "seed": seed})
    h = hashlib.sha256(settings.encode())
    h.update(source_fingerprint([root / f for f in RENDER_CODE], root).encode())
    return h.hexdigest()


def _render_chunk(args: tuple[list[OpenIReport], int, int, str]) -> list[Study]:
    reports, size, seed, image_dir = args
    return openi_studies(
        reports, SyntheticXrayRenderer(size), seed=seed, image_dir=image_dir, progress=False
    )


def render_openi_studies(
    reports: Sequence[OpenIReport],
    image_dir: str | Path,
    *,
    image_size: int = DEMO_IMAGE_SIZE,
    seed: int = DEMO_RENDER_SEED,
    workers: int = 1,
    progress: bool = True,
) -> list[Study]:
    """:func:`openi_studies` with PNGs under ``image_dir``, in ``workers`` processes."""
    chosen = [r for r in reports if r.findings]
    if workers <= 1 or len(chosen) < 64:
        return openi_studies(
            chosen,
            SyntheticXrayRenderer(image_size),
            seed=seed,
            image_dir=image_dir,
            progress=progress,
        )
    n_chunks = workers * 8
    chunks = [chosen[i::n_chunks] for i in range(n_chunks)]
    by_id: dict[str, Study] = {}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = pool.map(_render_chunk, [(c, image_size, seed, str(image_dir)) for c in chunks])
        bar = tqdm(total=len(chosen), desc="rendering Open-I studies", disable=not progress)
        for part in jobs:
            by_id.update((s.study_id, s) for s in part)
            bar.update(len(part))
        bar.close()
    return [by_id[r.uid] for r in chosen]  # the collection's order, whatever the chunking


def demo_studies(
    cache_dir: str | Path | None = None,
    *,
    wheel: str | Path | None = None,
    image_size: int = DEMO_IMAGE_SIZE,
    held_out_fraction: float = DEMO_HELD_OUT_FRACTION,
    seed: int = DEMO_RENDER_SEED,
    workers: int = 1,
    progress: bool = True,
) -> DemoStudies:
    """Open-I studies with FINDINGS, rendered at ``image_size`` and split deterministically.

    ``cache_dir`` holds the wheel (fetched with pip when absent, unless ``wheel`` is given) and
    the rendered PNGs (``images/<render key>/openi_{size}px_seed{seed}/``).
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if wheel is None:
        wheel = ensure_openi_wheel(openi_wheel_dir(cache))
    reports = load_openi_reports(wheel)
    studies = render_openi_studies(
        reports,
        cache / "images" / render_key(image_size, seed)[:16],
        image_size=image_size,
        seed=seed,
        workers=workers,
        progress=progress,
    )
    if not studies:
        raise ValueError(f"{wheel} holds no Open-I reports with a FINDINGS section")
    train, held_out = split_studies(studies, held_out_fraction)
    if not train:
        raise ValueError(
            f"held_out_fraction={held_out_fraction} left no training studies out of {len(studies)}"
        )
    return DemoStudies(
        train, held_out, image_size=image_size, held_out_fraction=held_out_fraction,
        source=str(wheel),
    )  # fmt: skip
