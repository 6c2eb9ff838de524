"""Open-I (Indiana University chest X-ray collection) reports, as shipped inside torchxrayvision.

The NLM's report collection (3,955 radiology reports, CC BY-NC-ND 4.0) ships in the
``torchxrayvision`` wheel on PyPI as ``torchxrayvision/data/NLMCXR_reports.tgz``: one XML file
per report with ``AbstractText`` sections COMPARISON, INDICATION, FINDINGS and IMPRESSION, MeSH
``major`` and ``automatic`` terms, and the ids of the report's images. We read the tgz straight
out of the wheel (a zip), without installing or importing torchxrayvision (and so without torch).
``XXXX`` marks words removed by de-identification; they are kept as they are.

Labels come from the MeSH ``major`` terms (heading before the first ``/``), see
:data:`MESH_LABEL_RULES`. Images are not in the wheel: :func:`openi_studies` renders synthetic
radiographs whose visible findings follow the labels (:mod:`.synthetic_xray`).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from tqdm.auto import tqdm

from sae_lens_maira.cache_dirs import openi_wheel_dir

from .study import ImageRef, Study
from .synthetic_xray import RenderSpec, SyntheticXrayRenderer, stable_seed

OPENI_WHEEL_VERSION = "1.5.7"
OPENI_TGZ_MEMBER = "torchxrayvision/data/NLMCXR_reports.tgz"
OPENI_DICOM_MEMBER = "torchxrayvision/data/nlmcxr_dicom_metadata.csv.gz"
SECTIONS = ("COMPARISON", "INDICATION", "FINDINGS", "IMPRESSION")

#: How labels are derived from MeSH major terms. A report is positive for a label when one of
#: its major terms has one of the ``headings`` (the part before the first "/", compared
#: case-insensitively), or a heading plus qualifier listed in ``qualified`` (e.g. "Cardiac
#: Shadow/enlarged"), or matches ``pattern`` anywhere in the term.
#:
#: * cardiomegaly: "Cardiomegaly", and "Cardiac Shadow" qualified "enlarged" (the same finding
#:   worded as an enlarged cardiac silhouette).
#: * pleural_effusion: "Pleural Effusion" only (a blunted costophrenic angle alone can be
#:   pleural thickening, so "Costophrenic Angle/blunted" is not counted).
#: * devices: lines, tubes and implanted devices that the paper's device features respond to:
#:   "Catheters, Indwelling", "Implanted Medical Device", "Tube, Inserted", "Medical Device"
#:   (external monitor leads), "Pacemaker, Artificial", "Defibrillators, Implantable", and any
#:   term containing "pacemaker" or the whole word "tube(s)" ("Tuberculosis" is not a tube).
#:   Surgical clips and sternotomy wires ("Surgical Instruments") and stents are not counted.
#: * normal: the major term "normal" (the indexers' code for a normal study).
class MeshLabelRule(TypedDict, total=False):
    """A label is true when a major term's heading is one of ``headings``, is a ``(heading,
    qualifier)`` pair of ``qualified``, or the term matches ``pattern``."""

    headings: tuple[str, ...]
    qualified: tuple[tuple[str, str], ...]
    pattern: re.Pattern[str]


MESH_LABEL_RULES: dict[str, MeshLabelRule] = {
    "cardiomegaly": {"headings": ("cardiomegaly",), "qualified": (("cardiac shadow", "enlarged"),)},
    "pleural_effusion": {"headings": ("pleural effusion",)},
    "devices": {
        "headings": (
            "catheters, indwelling",
            "implanted medical device",
            "tube, inserted",
            "medical device",
            "pacemaker, artificial",
            "defibrillators, implantable",
        ),
        "pattern": re.compile(r"pacemaker|\btubes?\b", re.IGNORECASE),
    },
    "normal": {"headings": ("normal",)},
}

#: MeSH headings that tell the renderer which device to draw (first match wins per term).
_DEVICE_HINTS = (
    ("pacemaker", "pacemaker"),
    ("defibrillator", "pacemaker"),
    ("implanted medical device", "pacemaker"),
    ("catheters, indwelling", "central_line"),
    ("medical device", "central_line"),
    ("tube, inserted", "endotracheal_tube"),
)


@dataclass
class OpenIReport:
    """One Open-I report. Empty sections are ``None``; ``labels`` follow :data:`MESH_LABEL_RULES`."""

    uid: str
    comparison: str | None
    indication: str | None
    findings: str | None
    impression: str | None
    mesh_major: tuple[str, ...]
    mesh_automatic: tuple[str, ...]
    image_ids: tuple[str, ...]
    captions: tuple[str, ...] = ()
    image_views: dict[str, str] = field(default_factory=dict)
    labels: dict[str, bool] = field(default_factory=dict)


def mesh_labels(mesh_major: Iterable[str]) -> dict[str, bool]:
    """Labels from MeSH major terms, by :data:`MESH_LABEL_RULES`."""
    terms = [t.strip() for t in mesh_major if t and t.strip()]
    parts = [[p.strip().lower() for p in t.split("/")] for t in terms]
    out = {}
    for name, rule in MESH_LABEL_RULES.items():
        headings = rule.get("headings", ())
        qualified = rule.get("qualified", ())
        pattern = rule.get("pattern")
        hit = False
        for term, p in zip(terms, parts, strict=True):
            if p[0] in headings or any(p[0] == h and q in p[1:] for h, q in qualified):
                hit = True
            elif pattern is not None and pattern.search(term):
                hit = True
        out[name] = hit
    return out


def ensure_openi_wheel(
    cache_dir: str | Path | None = None,
    version: str = OPENI_WHEEL_VERSION,
    *,
    timeout: float = 600.0,
) -> Path:
    """Path to the torchxrayvision wheel in ``cache_dir``, downloading it with pip if absent.

    Runs ``python -m pip download --no-deps torchxrayvision==VERSION -d cache_dir`` with the
    current interpreter (about 29 MB). Never downloads again when the wheel is present.
    """
    cache = Path(cache_dir).expanduser() if cache_dir is not None else openi_wheel_dir()
    found = sorted(cache.glob(f"torchxrayvision-{version}-*.whl"))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        f"torchxrayvision=={version}",
        "-d",
        str(cache),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RuntimeError(f"could not run {' '.join(cmd)!r}: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        hint = (
            "pip is not installed in this environment (python -m ensurepip)"
            if "No module named pip" in (proc.stderr or "")
            else "check network access to PyPI, or download the wheel elsewhere and put it in "
            f"{cache}"
        )
        raise RuntimeError(
            f"downloading torchxrayvision=={version} failed (exit {proc.returncode}): "
            + " | ".join(tail)
            + f". Fix: {hint}."
        )
    found = sorted(cache.glob(f"torchxrayvision-{version}-*.whl"))
    if not found:
        raise RuntimeError(
            f"pip reported success but no torchxrayvision-{version} wheel is in {cache}"
        )
    return found[0]


def _text(el: ET.Element | None) -> str | None:
    if el is None or el.text is None:
        return None
    text = " ".join(el.text.split())
    return text or None


def parse_openi_xml(data: bytes | str, name: str = "<xml>") -> OpenIReport:
    """Parse one Open-I report XML document."""
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise ValueError(f"{name}: not well-formed Open-I XML ({exc})") from exc
    uid_el = root.find("uId")
    uid = uid_el.get("id") if uid_el is not None else None
    if not uid:
        raise ValueError(f"{name}: no <uId id=...>; is this an Open-I (ecgen-radiology) report?")
    sections: dict[str, str | None] = dict.fromkeys(SECTIONS)
    for el in root.iter("AbstractText"):
        label = (el.get("Label") or "").upper()
        if label in sections:
            sections[label] = _text(el)
    mesh = root.find("MeSH")
    major = tuple(
        t for t in (_text(e) for e in (mesh.findall("major") if mesh is not None else [])) if t
    )
    auto = tuple(
        t for t in (_text(e) for e in (mesh.findall("automatic") if mesh is not None else [])) if t
    )
    images = tuple(i for i in (el.get("id") for el in root.findall("parentImage")) if i)
    captions = tuple(
        c for c in (_text(el.find("caption")) for el in root.findall("parentImage")) if c
    )
    return OpenIReport(
        uid=uid,
        comparison=sections["COMPARISON"],
        indication=sections["INDICATION"],
        findings=sections["FINDINGS"],
        impression=sections["IMPRESSION"],
        mesh_major=major,
        mesh_automatic=auto,
        image_ids=images,
        captions=captions,
        labels=mesh_labels(major),
    )


def _reports_from_tgz(data: bytes, source: str) -> list[OpenIReport]:
    reports = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                xml = member.isfile() and member.name.endswith(".xml")
                fh = tar.extractfile(member) if xml else None
                if fh is not None:
                    reports.append(parse_openi_xml(fh.read(), f"{source}:{member.name}"))
    except tarfile.TarError as exc:
        raise ValueError(f"{source}: not a readable .tgz of Open-I reports ({exc})") from exc
    return reports


def _image_views(data: bytes) -> dict[str, str]:
    """Image id -> DICOM ViewPosition (PA, AP, LL, LATERAL, ...) from the wheel's metadata."""
    views = {}
    with gzip.open(io.BytesIO(data), "rt", newline="") as fh:
        for row in csv.DictReader(fh):
            view = (row.get("View Position") or "").strip()
            if view:
                views[row["imageid"]] = view
    return views


def _uid_key(report: OpenIReport) -> tuple[int, str]:
    digits = re.sub(r"\D", "", report.uid)
    return (int(digits) if digits else 0, report.uid)


def load_openi_reports(path: str | Path) -> list[OpenIReport]:
    """Read all Open-I reports from the torchxrayvision wheel, the ``NLMCXR_reports.tgz`` or a
    folder of the report XML files, sorted by numeric id.

    From the wheel, image view positions (PA/AP/LL/...) are added from the DICOM metadata it
    also ships (``image_views``; about two thirds of the images have one, and laterals are
    often tagged "PA", so treat them as a hint).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist; get the wheel with ensure_openi_wheel(cache_dir) "
            f"(pip download --no-deps torchxrayvision=={OPENI_WHEEL_VERSION})"
        )
    views: dict[str, str] = {}
    if path.is_dir():
        files = sorted(path.rglob("*.xml"))
        if not files:
            raise ValueError(f"{path} holds no .xml report files")
        reports = [parse_openi_xml(f.read_bytes(), str(f)) for f in files]
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as wheel:
            names = set(wheel.namelist())
            if OPENI_TGZ_MEMBER not in names:
                raise ValueError(
                    f"{path} has no {OPENI_TGZ_MEMBER}; pass the torchxrayvision "
                    f"{OPENI_WHEEL_VERSION} wheel (ensure_openi_wheel) or the .tgz itself"
                )
            reports = _reports_from_tgz(wheel.read(OPENI_TGZ_MEMBER), f"{path}:{OPENI_TGZ_MEMBER}")
            if OPENI_DICOM_MEMBER in names:
                views = _image_views(wheel.read(OPENI_DICOM_MEMBER))
    else:
        reports = _reports_from_tgz(path.read_bytes(), str(path))
    if not reports:
        raise ValueError(f"{path} contains no Open-I report XML files")
    for report in reports:
        report.image_views = {i: views[i] for i in report.image_ids if i in views}
    return sorted(reports, key=_uid_key)


def label_counts(
    reports: Sequence[OpenIReport], *, with_findings_only: bool = True
) -> dict[str, int]:
    """Positives per label (over reports with FINDINGS by default), plus ``"reports"``."""
    chosen = [r for r in reports if r.findings or not with_findings_only]
    counts = {"reports": len(chosen)}
    for name in MESH_LABEL_RULES:
        counts[name] = sum(bool(r.labels.get(name)) for r in chosen)
    return counts


def render_spec(report: OpenIReport, seed: int) -> RenderSpec:
    """What to draw for a report: its labels plus side/device hints from its MeSH terms."""
    side = None
    if report.labels.get("pleural_effusion"):
        sides = set()
        for term in report.mesh_major:
            parts = [p.strip().lower() for p in term.split("/")]
            if parts[0] == "pleural effusion":
                sides.update(q for q in parts[1:] if q in ("left", "right", "bilateral"))
        if "bilateral" in sides or {"left", "right"} <= sides:
            side = "bilateral"
        elif len(sides) == 1:
            side = sides.pop()
    kinds: list[str] = []
    if report.labels.get("devices"):
        for term in report.mesh_major:
            low = term.lower()
            for needle, kind in _DEVICE_HINTS:
                if needle in low:
                    kinds.append(kind)
                    break
    return RenderSpec.from_labels(
        report.labels, seed, effusion_side=side, device_kinds=tuple(dict.fromkeys(kinds)) or None
    )


def _has_lateral(report: OpenIReport) -> bool:
    """Whether the real study had a lateral view. Open-I studies are mostly PA + lateral pairs;
    the DICOM view positions are no help here (1,000 two-image studies tag both images "PA"),
    so two or more images count as frontal + lateral."""
    return len(report.image_ids) >= 2


def openi_studies(
    reports: Sequence[OpenIReport],
    renderer: SyntheticXrayRenderer | None = None,
    *,
    seed: int = 0,
    lateral: str = "auto",
    image_dir: str | Path | None = None,
    progress: bool = True,
) -> list[Study]:
    """Studies for the reports that have FINDINGS, with synthetic images following the labels.

    * findings is the target text; indication and comparison come from the report; Open-I has
      no technique section, so technique stays ``None`` (the prompt writes N/A).
    * Images are rendered by ``renderer`` (default: 224 px) with a per-study seed derived from
      the uid and ``seed``, so a study always gets the same pixels.
    * ``lateral``: ``"auto"`` adds a lateral view when the real study had one (DICOM view
      position, else at least two images), ``"always"`` or ``"never"``.
    * ``image_dir``: write PNGs there (reused when already present) and put their paths in the
      studies instead of keeping PIL images in memory.
    """
    if lateral not in ("auto", "always", "never"):
        raise ValueError(f"lateral must be 'auto', 'always' or 'never', got {lateral!r}")
    renderer = renderer or SyntheticXrayRenderer(224)
    out_dir = None
    if image_dir is not None:
        out_dir = Path(image_dir).expanduser() / f"openi_{renderer.size}px_seed{seed}"
        out_dir.mkdir(parents=True, exist_ok=True)
    studies = []
    chosen = [r for r in reports if r.findings]
    for report in tqdm(chosen, desc="rendering Open-I studies", disable=not progress):
        study_seed = stable_seed(report.uid, seed)
        spec = render_spec(report, study_seed)
        want_lateral = lateral == "always" or (lateral == "auto" and _has_lateral(report))
        views = ("frontal", "lateral") if want_lateral else ("frontal",)
        images: dict[str, ImageRef] = {}
        if out_dir is not None:
            paths = {v: out_dir / f"{report.uid}_{v}.png" for v in views}
            if not all(p.exists() for p in paths.values()):
                for v, im in renderer.render(spec, study_seed, views).items():
                    im.save(paths[v])
            images = dict(paths)
        else:
            images = dict(renderer.render(spec, study_seed, views))
        studies.append(
            Study(
                study_id=report.uid,
                frontal=images["frontal"],
                lateral=images.get("lateral"),
                indication=report.indication,
                comparison=report.comparison,
                findings=report.findings,
                labels=dict(report.labels),
                meta={
                    "source": "openi",
                    "impression": report.impression,
                    "mesh_major": list(report.mesh_major),
                    "image_ids": list(report.image_ids),
                    "render": {
                        "seed": study_seed,
                        "effusion": spec.effusion,
                        "effusion_size": spec.effusion_size,
                        "devices": list(spec.devices),
                        "cardiomegaly": spec.cardiomegaly,
                    },
                },
            )
        )
    return studies
