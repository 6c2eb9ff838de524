"""Studies a command could not use, recorded and reported the same way by every command.

A study is skipped, never silently dropped: when its source cannot find an image file (at load
time), when an image cannot be decoded or breaks a size limit (``ImageLoadError.reason``), or
when its prompt is invalid. ``cache`` keeps the list in ``cache_info.json``; ``dashboards
collect`` and ``steer`` write ``<out>/skipped_studies.json``; all print the same console line
(:meth:`SkipCollector.summary`). A run that skips every study stops with
:class:`AllStudiesSkippedError`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .study import Study

logger = logging.getLogger(__name__)

SKIPS_FILE = "skipped_studies.json"
#: The reason of a ValueError without its own (e.g. a prompt longer than the model's context).
INVALID_STUDY = "invalid_study"


class AllStudiesSkippedError(ValueError):
    """Every study of the run was skipped: there is nothing to compute."""


@dataclass(frozen=True)
class SkippedStudy:
    """One study left out: its id, why (a short key such as ``image_too_large``) and the message."""

    study_id: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SkippedStudy:
        return cls(str(d["study_id"]), str(d["reason"]), str(d.get("detail", "")))


def skip_reason(err: BaseException) -> str:
    """``err.reason`` where the error carries one (ImageLoadError), else :data:`INVALID_STUDY`."""
    reason = getattr(err, "reason", None)
    return str(reason) if reason else INVALID_STUDY


class SkipCollector:
    """The skipped studies of one run, in the order they were met."""

    def __init__(self, items: Iterable[SkippedStudy] = ()) -> None:
        self.items: list[SkippedStudy] = list(items)

    def add(self, study_id: str, reason: str, detail: str) -> SkippedStudy:
        item = SkippedStudy(str(study_id), reason, detail)
        self.items.append(item)
        logger.warning("skipping study %s (%s): %s", study_id, reason, detail)
        return item

    def add_error(self, study_id: str, err: BaseException) -> SkippedStudy:
        return self.add(study_id, skip_reason(err), str(err))

    def extend(self, items: Iterable[SkippedStudy]) -> None:
        self.items.extend(items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[SkippedStudy]:
        return iter(self.items)

    def ids(self) -> set[str]:
        return {s.study_id for s in self.items}

    def counts(self) -> dict[str, int]:
        """Skips per reason, reasons sorted."""
        return dict(sorted(Counter(s.reason for s in self.items).items()))

    def to_json(self) -> list[dict[str, str]]:
        return [s.to_dict() for s in self.items]

    def summary(self, n_studies: int, where: str | Path | None = None) -> str:
        """``skipped 2 of 40 studies: 1 image_too_large, 1 missing_image; see <where>``."""
        if not self.items:
            return f"skipped 0 of {n_studies} studies"
        counts = ", ".join(f"{n} {reason}" for reason, n in self.counts().items())
        line = f"skipped {len(self.items)} of {n_studies} studies: {counts}"
        return line + (f"; see {where}" if where is not None else "")

    def write(self, path: str | Path, n_studies: int) -> Path:
        """``skipped_studies.json``: how many studies the run read, the counts and every skip."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"n_studies": n_studies, "n_skipped": len(self.items),
                "counts": self.counts(), "skipped_studies": self.to_json()}  # fmt: skip
        path.write_text(json.dumps(data, indent=1))
        return path

    def check_some_left(self, n_studies: int, what: str = "the run") -> None:
        """Raise :class:`AllStudiesSkippedError` when all ``n_studies`` studies were skipped."""
        if n_studies and len(self.ids()) >= n_studies:
            examples = "; ".join(f"{s.study_id}: {s.detail}" for s in self.items[:3])
            raise AllStudiesSkippedError(
                f"{what} skipped every one of its {n_studies} studies "
                f"({', '.join(f'{n} {r}' for r, n in self.counts().items())}), so there is nothing "
                f"to compute; fix the data source (e.g. {examples})"
            )


def announce(line: str) -> None:
    """The console summary line (stderr, so it shows beside the command's own output)."""
    print(line, file=sys.stderr)


def keep_usable(
    studies: Sequence[Study],
    check: Callable[[Study], Any],
    skips: SkipCollector,
    limit: int | None = None,
) -> list[Study]:
    """The studies for which ``check(study)`` raises no ValueError (ImageLoadError is one), in
    order, up to ``limit``; the others are recorded in ``skips``."""
    kept: list[Study] = []
    for study in studies:
        if limit is not None and len(kept) >= limit:
            break
        try:
            check(study)
        except ValueError as err:
            skips.add_error(study.study_id, err)
            continue
        kept.append(study)
    return kept
