"""Feature explanations and their detection scores as one JSONL row per feature.

Autointerp writes these; the exports and the viewer read them. Keeping the record here (not in
``autointerp/``) lets dashboards take explanations from any source, e.g. the study's released ones.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Explanation:
    feature: int
    text: str
    explainer: str = ""  # model or backend that wrote it
    scorer: str = ""
    method: str = "sae-lens-maira-autointerp"
    detection: dict[str, Any] = field(default_factory=dict)  # balanced_accuracy, f1, n, ...
    private: bool = False  # written from private-mode examples (no study text shown to the LLM)

    @property
    def score(self) -> float | None:
        return self.detection.get("balanced_accuracy")


def load_explanations(path: str | Path) -> dict[int, Explanation]:
    """Read a JSONL file of explanations; a later row for the same feature wins."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(
            f"explanations file {p} does not exist; run `sae-lens-maira autointerp` first"
        )
    out: dict[int, Explanation] = {}
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            exp = Explanation(**{k: row[k] for k in Explanation.__dataclass_fields__ if k in row})
        except (json.JSONDecodeError, TypeError, KeyError) as err:
            raise ValueError(f"{p}:{n} is not an explanation row ({err})") from None
        out[int(exp.feature)] = exp
    return out


def append_explanation(path: str | Path, explanation: Explanation) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(asdict(explanation), ensure_ascii=False) + "\n")
