"""What a study source returns: the studies plus an account of what it left out and why."""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .skips import SkippedStudy
from .study import Study

#: How many skip messages a result keeps verbatim (the counts are always complete).
MAX_PROBLEMS = 50


@dataclass
class LoadResult:
    """Studies from a source; ``skipped`` counts left-out studies by reason, ``problems`` keeps
    the first messages (file and line or study id) so a user can find and fix them."""

    studies: list[Study]
    skipped: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    skipped_studies: list[SkippedStudy] = field(default_factory=list)  # those with a study id

    def skip(self, reason: str, message: str, study_id: str | None = None) -> None:
        self.skipped[reason] += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(message)
        if study_id is not None:
            self.skipped_studies.append(SkippedStudy(study_id, reason, message))

    def __len__(self) -> int:
        return len(self.studies)

    def __iter__(self):
        return iter(self.studies)

    def summary(self) -> str:
        parts = [f"{len(self.studies)} studies"]
        parts += [f"{n} skipped ({reason})" for reason, n in sorted(self.skipped.items())]
        return ", ".join(parts)


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """Rows of a .csv or .csv.gz as dicts (all values strings)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    return list(csv.DictReader(io.StringIO(raw.decode("utf-8-sig"), newline="")))
