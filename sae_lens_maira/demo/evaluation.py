"""Does the small model read the image? Generated findings vs. what the pictures show.

A study *mentions* a finding when the report labeller (:func:`label_report`) calls it positive.
For each finding we compare the mention rate of generated reports on studies whose images show
the finding (positives, from the MeSH labels the images were rendered from) and on the others;
the reference reports' rates are the ceiling a text-faithful model can reach.
"""

from __future__ import annotations

from collections.abc import Sequence

from sae_lens_maira.data.labeller import Status, label_report
from sae_lens_maira.data.study import Study
from sae_lens_maira.model.generation import generate_findings
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.steering.fluency import teacher_forced_loss


def mention_summary(
    texts: Sequence[str], studies: Sequence[Study], findings: Sequence[str]
) -> dict[str, dict[str, float]]:
    """Per finding: positive-mention rate of ``texts`` on positive and on negative studies."""
    if len(texts) != len(studies):
        raise ValueError(f"{len(texts)} texts for {len(studies)} studies")
    labels = [label_report(t, list(findings)) for t in texts]
    out: dict[str, dict[str, float]] = {}
    for f in findings:
        pos = [lab[f] is Status.POSITIVE for lab, s in zip(labels, studies) if s.labels.get(f)]
        neg = [lab[f] is Status.POSITIVE for lab, s in zip(labels, studies) if not s.labels.get(f)]
        out[f] = {
            "positives": sum(pos) / len(pos) if pos else float("nan"),
            "negatives": sum(neg) / len(neg) if neg else float("nan"),
            "n_positives": len(pos),
            "n_negatives": len(neg),
        }
    return out


def mention_score(summary: dict[str, dict[str, float]]) -> float:
    """Mean over findings of (rate on positives - rate on negatives): 1 = perfectly grounded."""
    gaps = [r["positives"] - r["negatives"] for r in summary.values() if r["n_positives"]]
    return sum(gaps) / len(gaps) if gaps else 0.0


def evaluation_subset(
    studies: Sequence[Study], findings: Sequence[str], *, per_finding: int, negatives: int
) -> list[Study]:
    """Up to ``per_finding`` positives of each finding plus ``negatives`` studies with none,
    in a fixed order (the same subset at every evaluation)."""
    chosen: dict[str, Study] = {}
    for f in findings:
        for s in [s for s in studies if s.labels.get(f)][:per_finding]:
            chosen.setdefault(s.study_id, s)
    clean = [s for s in studies if not any(s.labels.get(f) for f in findings)]
    for s in clean[:negatives]:
        chosen.setdefault(s.study_id, s)
    return list(chosen.values())


def evaluate_generation(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    findings: Sequence[str],
    *,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    with_loss: bool = True,
    progress: bool = False,
) -> dict:
    """Generated vs reference mention rates, distinct outputs and (optionally) the report loss."""
    texts = generate_findings(
        model, processor, studies, max_new_tokens=max_new_tokens, batch_size=batch_size,
        progress=progress,
    )  # fmt: skip
    summary = mention_summary(texts, studies, findings)
    result = {
        "mentions": summary,
        "reference": mention_summary([s.findings or "" for s in studies], studies, findings),
        "score": mention_score(summary),
        "distinct": len(set(texts)),
        "n_studies": len(studies),
        "samples": sample_records(studies, texts, findings),
    }
    if with_loss:
        result["val_loss"] = teacher_forced_loss(model, processor, studies, batch_size=batch_size)
    return result


def sample_records(
    studies: Sequence[Study], texts: Sequence[str], findings: Sequence[str]
) -> list[dict]:
    """One JSON record per study: its labels, the generated report and the reference."""
    return [
        {
            "study_id": s.study_id,
            "labels": {f: bool(s.labels.get(f)) for f in findings},
            "generated": t,
            "reference": s.findings,
        }
        for s, t in zip(studies, texts, strict=True)
    ]
