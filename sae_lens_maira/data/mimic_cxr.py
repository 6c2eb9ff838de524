"""MIMIC-CXR-JPG studies from a local PhysioNet download, as MAIRA-2's prompt needs them.

Layout (as PhysioNet ships it; credentialed access, so nothing here downloads)::

    root/
      mimic-cxr-2.0.0-metadata.csv(.gz)   dicom_id, subject_id, study_id, ViewPosition, StudyDate, StudyTime, ...
      mimic-cxr-2.0.0-split.csv(.gz)      dicom_id, study_id, subject_id, split (train/validate/test)
      mimic_cxr_sectioned.csv(.gz)        optional, from MIT-LCP's section script: study (s5...), impression,
                                          findings, last_paragraph, comparison[, indication, technique]
      files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg
      files/pXX/pNNNNNNNN/sNNNNNNNN.txt   free-text reports (from MIMIC-CXR), optional

Per study: current frontal (PA preferred over AP), lateral (LATERAL or LL) when present, and
the patient's previous study (by StudyDate/StudyTime) as prior frontal and prior report (its
findings, else its impression). Indication, technique and comparison come from the report.
Studies without findings or without a frontal image are skipped and counted.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from .loaded import LoadResult, read_csv_rows
from .study import Study

FRONTAL_VIEWS = ("PA", "AP")  # in order of preference
LATERAL_VIEWS = ("LATERAL", "LL")
SPLITS = ("train", "validate", "test")

#: Report headers -> Study fields. Headers not listed (EXAMINATION, NOTIFICATION, ...) end the
#: previous section and are otherwise ignored.
SECTION_HEADERS = {
    "INDICATION": "indication",
    "HISTORY": "indication",
    "CLINICAL HISTORY": "indication",
    "CLINICAL INFORMATION": "indication",
    "REASON FOR EXAM": "indication",
    "REASON FOR EXAMINATION": "indication",
    "TECHNIQUE": "technique",
    "COMPARISON": "comparison",
    "COMPARISONS": "comparison",
    "FINDINGS": "findings",
    "FINDINGS AND IMPRESSION": "findings",
    "IMPRESSION": "impression",
    "CONCLUSION": "impression",
}
_HEADER = re.compile(r"^[ \t]*([A-Z][A-Z /&()-]{2,40}?)[ \t]*:", re.MULTILINE)


def parse_report_sections(text: str) -> dict[str, str]:
    """Sections of a free-text MIMIC-CXR report: indication, technique, comparison, findings,
    impression (whitespace normalised; absent sections left out)."""
    out: dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    for i, m in enumerate(matches):
        name = " ".join(m.group(1).split())
        key = SECTION_HEADERS.get(name)
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        body = " ".join(text[m.end() : end].split())
        if key and body and key not in out:
            out[key] = body
    return out


def _find_table(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.csv", f"{stem}.csv.gz"):
        if (root / name).exists():
            return root / name
    return None


def image_path(root: Path, subject_id: str, study_id: str, dicom_id: str) -> Path:
    """``root/files/pXX/pNNNNNNNN/sNNNNNNNN/<dicom_id>.jpg``."""
    return (
        root
        / "files"
        / f"p{subject_id[:2]}"
        / f"p{subject_id}"
        / f"s{study_id}"
        / f"{dicom_id}.jpg"
    )


def report_path(root: Path, subject_id: str, study_id: str) -> Path:
    """``root/files/pXX/pNNNNNNNN/sNNNNNNNN.txt``."""
    return root / "files" / f"p{subject_id[:2]}" / f"p{subject_id}" / f"s{study_id}.txt"


@dataclass
class _Img:
    dicom_id: str
    view: str
    when: tuple[int, float]


def _when(date: str, time: str) -> tuple[int, float]:
    try:
        return int(float(date or 0)), float(time or 0.0)
    except ValueError:
        return 0, 0.0


def _pick(images: list[_Img], views: Iterable[str]) -> _Img | None:
    for view in views:
        chosen = sorted(
            (im for im in images if im.view == view), key=lambda im: (im.when, im.dicom_id)
        )
        if chosen:
            return chosen[0]
    return None


def load_mimic_cxr(
    root: str | Path,
    *,
    split: str | Iterable[str] | None = None,
    reports_dir: str | Path | None = None,
    sectioned_csv: str | Path | None = None,
    with_prior: bool = True,
    with_lateral: bool = True,
    check_files: bool = True,
    on_missing: str = "error",
    progress: bool = True,
) -> LoadResult:
    """Studies from a local MIMIC-CXR-JPG download (see the module docstring for the layout).

    ``split``: keep only these official splits ("train", "validate", "test"). ``reports_dir``:
    where the free-text ``files/pXX/...txt`` reports live (default ``root``). ``sectioned_csv``:
    the section script's output (default: ``root/mimic_cxr_sectioned.csv(.gz)`` when present);
    its findings/impression/comparison take precedence over the parsed text. ``on_missing``:
    ``"error"`` raises on a missing image file, ``"skip"`` skips and counts the study.
    """
    root = Path(root).expanduser()
    if on_missing not in ("error", "skip"):
        raise ValueError(f"on_missing must be 'error' or 'skip', got {on_missing!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"MIMIC-CXR-JPG root {root} is not a folder")
    meta_path = _find_table(root, "mimic-cxr-2.0.0-metadata")
    if meta_path is None:
        raise FileNotFoundError(
            f"no mimic-cxr-2.0.0-metadata.csv(.gz) in {root}; point root at the MIMIC-CXR-JPG "
            "folder that holds it and files/"
        )
    rows = read_csv_rows(meta_path)
    need = {"dicom_id", "subject_id", "study_id", "ViewPosition", "StudyDate", "StudyTime"}
    if rows and not need <= set(rows[0]):
        raise ValueError(f"{meta_path} lacks columns {sorted(need - set(rows[0]))}")

    wanted: set[str] | None = None
    split_of: dict[str, str] = {}
    split_path = _find_table(root, "mimic-cxr-2.0.0-split")
    if split_path is not None:
        for r in read_csv_rows(split_path):
            split_of[r["study_id"]] = r["split"]
    if split is not None:
        wanted = {split} if isinstance(split, str) else set(split)
        bad = wanted - set(SPLITS)
        if bad:
            raise ValueError(f"unknown split(s) {sorted(bad)}; use {SPLITS}")
        if split_path is None:
            raise FileNotFoundError(
                f"split={split!r} needs mimic-cxr-2.0.0-split.csv(.gz) in {root}"
            )

    sectioned: dict[str, dict[str, str]] = {}
    if sectioned_csv:
        sec_path: Path | None = Path(sectioned_csv).expanduser()
        if not sec_path.exists():
            raise FileNotFoundError(f"sectioned reports {sec_path} do not exist")
    else:
        sec_path = _find_table(root, "mimic_cxr_sectioned")
    if sec_path is not None:
        for r in read_csv_rows(sec_path):
            sid = r.get("study", "").strip().lstrip("s")
            sectioned[sid] = {k: " ".join((v or "").split()) for k, v in r.items() if k != "study"}
    reports_root = Path(reports_dir).expanduser() if reports_dir else root

    studies_imgs: dict[str, list[_Img]] = defaultdict(list)
    subject_of: dict[str, str] = {}
    for r in rows:
        sid = r["study_id"]
        subject_of[sid] = r["subject_id"]
        studies_imgs[sid].append(
            _Img(
                r["dicom_id"],
                (r["ViewPosition"] or "").strip().upper(),
                _when(r["StudyDate"], r["StudyTime"]),
            )
        )
    when_of = {sid: min(im.when for im in imgs) for sid, imgs in studies_imgs.items()}
    by_subject: dict[str, list[str]] = defaultdict(list)
    for sid in studies_imgs:
        by_subject[subject_of[sid]].append(sid)
    previous: dict[str, str] = {}
    for sids in by_subject.values():
        sids.sort(key=lambda s: (when_of[s], s))
        for earlier, later in zip(sids[:-1], sids[1:], strict=True):
            previous[later] = earlier

    section_cache: dict[str, dict[str, str]] = {}

    def sections(sid: str) -> dict[str, str]:
        if sid not in section_cache:
            sec: dict[str, str] = {}
            txt = report_path(reports_root, subject_of[sid], sid)
            if txt.exists():
                sec = parse_report_sections(txt.read_text(encoding="utf-8", errors="replace"))
            for key in ("findings", "impression", "comparison", "indication", "technique"):
                value = sectioned.get(sid, {}).get(key)
                if value:
                    sec[key] = value
            section_cache[sid] = sec
        return section_cache[sid]

    result = LoadResult(studies=[])
    order = sorted(studies_imgs, key=lambda s: (subject_of[s], when_of[s], s))
    for sid in tqdm(order, desc="MIMIC-CXR studies", disable=not progress):
        if wanted is not None and split_of.get(sid) not in wanted:
            result.skipped["not_in_split"] += 1
            continue
        subject = subject_of[sid]
        frontal = _pick(studies_imgs[sid], FRONTAL_VIEWS)
        if frontal is None:
            result.skip("no_frontal", f"s{sid}: no PA/AP image in the metadata", f"s{sid}")
            continue
        sec = sections(sid)
        if not sec.get("findings"):
            result.skip("no_findings", f"s{sid}: no FINDINGS section", f"s{sid}")
            continue
        lateral = _pick(studies_imgs[sid], LATERAL_VIEWS) if with_lateral else None
        paths = {"frontal": image_path(root, subject, sid, frontal.dicom_id)}
        if lateral is not None:
            paths["lateral"] = image_path(root, subject, sid, lateral.dicom_id)
        prior_sid = previous.get(sid) if with_prior else None
        prior_report = None
        if prior_sid is not None:
            prior_front = _pick(studies_imgs[prior_sid], FRONTAL_VIEWS)
            if prior_front is not None:
                paths["prior_frontal"] = image_path(root, subject, prior_sid, prior_front.dicom_id)
            psec = sections(prior_sid)
            prior_report = psec.get("findings") or psec.get("impression")
        if check_files:
            missing = [f"{k}={p}" for k, p in paths.items() if not p.exists()]
            if missing:
                msg = f"s{sid}: missing image file(s) " + ", ".join(missing)
                if on_missing == "error":
                    raise FileNotFoundError(
                        msg
                        + " (download them, or pass on_missing='skip' to skip and count such studies)"
                    )
                result.skip("missing_image", msg, f"s{sid}")
                continue
        result.studies.append(
            Study(
                study_id=f"s{sid}",
                frontal=paths["frontal"],
                lateral=paths.get("lateral"),
                prior_frontal=paths.get("prior_frontal"),
                indication=sec.get("indication"),
                technique=sec.get("technique"),
                comparison=sec.get("comparison"),
                prior_report=prior_report,
                findings=sec["findings"],
                meta={
                    "source": "mimic-cxr",
                    "subject_id": subject,
                    "split": split_of.get(sid),
                    "impression": sec.get("impression"),
                    "frontal_view": frontal.view,
                    "dicom_ids": {k: p.stem for k, p in paths.items()},
                    "prior_study_id": f"s{prior_sid}" if prior_sid else None,
                    "study_datetime": when_of[sid],
                },
            )
        )
    return result
