"""Which SAE features detect a finding? Per-study feature maxima, thresholds chosen on training
studies, balanced accuracy on held-out ones.

A study's score for a feature is its largest activation over chosen positions (by default the
prompt's variable text and the first/last image tokens, never the report, which names the finding
outright). For every feature the threshold that maximises balanced accuracy on training studies
is found in one sort; the best features are then scored on held-out studies with that threshold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from sae_lens_maira.analysis.metrics import balanced_accuracy
from sae_lens_maira.processing.roles import Role

#: Positions that carry what the model saw, not what the report says.
DETECTION_ROLES = (
    Role.IMAGE_FIRST,
    Role.IMAGE_LAST,
    Role.INDICATION,
    Role.TECHNIQUE,
    Role.COMPARISON,
)


@dataclass
class FeatureDetector:
    finding: str
    feature: int
    threshold: float
    train_balanced_accuracy: float
    held_out_balanced_accuracy: float | None = None
    held_out_positives: int = 0
    held_out_negatives: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def study_maxima_from_cache(
    dataset: Any,
    sae: Any,
    hook_name: str,
    n_studies: int,
    roles: Sequence[Role] = DETECTION_ROLES,
    batch_rows: int = 64,
) -> torch.Tensor:
    """[n_studies, d_sae] maxima of SAE features over ``roles`` positions of a cached dataset.

    ``dataset`` is an activation cache (:mod:`sae_lens_maira.activations.cache`): rows of positions
    with ``study_index`` and ``roles`` columns. Studies without such positions get zeros.
    """
    param = next(sae.parameters())
    out = torch.zeros(n_studies, int(sae.cfg.d_sae))
    keep = torch.tensor([int(r) for r in roles])
    dataset = dataset.with_format("torch", columns=[hook_name, "study_index", "roles"])
    for start in range(0, len(dataset), batch_rows):
        rows = dataset[start : start + batch_rows]
        acts = rows[hook_name].reshape(-1, rows[hook_name].shape[-1])
        study = rows["study_index"].reshape(-1).long()
        mask = torch.isin(rows["roles"].reshape(-1).long(), keep)
        if not bool(mask.any()):
            continue
        feats = sae.encode(acts[mask].to(device=param.device, dtype=param.dtype)).float().cpu()
        out.scatter_reduce_(
            0, study[mask][:, None].expand_as(feats), feats, reduce="amax", include_self=True
        )
    return out


def best_thresholds(
    scores: torch.Tensor, labels: torch.Tensor, chunk: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per feature, the threshold (predict positive when score > t) with the best balanced accuracy.

    ``scores`` [n, d], ``labels`` [n] bool. Returns (balanced accuracy [d], threshold [d]).
    """
    labels = labels.bool()
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"need positive and negative studies to choose thresholds (have {n_pos} and {n_neg})"
        )
    bas, ths = [], []
    for start in range(0, scores.shape[1], chunk):
        x = scores[:, start : start + chunk].float()
        order = torch.argsort(x, dim=0, descending=True)
        xs = torch.gather(x, 0, order)
        ys = labels[order].float()
        tpr = ys.cumsum(0) / n_pos
        fpr = (1 - ys).cumsum(0) / n_neg
        ba = (tpr + 1 - fpr) / 2
        # a cut is only possible between different values: predict positive for the top i+1
        nxt = torch.cat([xs[1:], torch.full_like(xs[:1], -float("inf"))])
        ba = torch.where(xs > nxt, ba, torch.full_like(ba, -1.0))
        i = ba.argmax(0)
        best = ba.gather(0, i[None])[0]
        hi, lo = xs.gather(0, i[None])[0], nxt.gather(0, i[None])[0]
        th = (hi + torch.where(torch.isinf(lo), hi - 1, lo)) / 2
        # all-positive prediction (threshold below everything) is BA 0.5: never better than a cut
        bas.append(best.clamp_min(0.5))
        ths.append(th)
    return torch.cat(bas), torch.cat(ths)


def finding_detectors(
    train_scores: torch.Tensor,
    train_labels: Mapping[str, Sequence[bool]],
    held_out_scores: torch.Tensor | None = None,
    held_out_labels: Mapping[str, Sequence[bool]] | None = None,
    top: int = 3,
) -> dict[str, list[FeatureDetector]]:
    """The ``top`` features per finding by training balanced accuracy, scored on held-out studies."""
    out: dict[str, list[FeatureDetector]] = {}
    for finding, labels in train_labels.items():
        y = torch.tensor(list(labels), dtype=torch.bool)
        if y.numel() != train_scores.shape[0]:
            raise ValueError(f"{finding}: {y.numel()} labels for {train_scores.shape[0]} studies")
        ba, th = best_thresholds(train_scores, y)
        idx = torch.argsort(ba, descending=True)[:top].tolist()
        rows = []
        for f in idx:
            det = FeatureDetector(finding, int(f), float(th[f]), float(ba[f]))
            if held_out_scores is not None and held_out_labels is not None:
                yt = torch.tensor(list(held_out_labels[finding]), dtype=torch.bool)
                det.held_out_balanced_accuracy = balanced_accuracy(
                    held_out_scores[:, f] > th[f], yt
                )
                det.held_out_positives, det.held_out_negatives = int(yt.sum()), int((~yt).sum())
            rows.append(det)
        out[finding] = rows
    return out


def detectors_from_caches(
    train_cache: Any,
    held_out_cache: Any,
    sae: Any,
    hook_name: str,
    train_studies: Sequence[Any],
    held_out_studies: Sequence[Any],
    findings: Sequence[str],
    top: int = 3,
) -> dict[str, list[FeatureDetector]]:
    """Detectors for ``findings`` from two activation caches: thresholds chosen on the training
    cache's studies, scored on the held-out cache's (each cache's ``study_index`` counts into its
    own study list, whose labels are the truth)."""
    train_max = study_maxima_from_cache(train_cache, sae, hook_name, len(train_studies))
    held_max = study_maxima_from_cache(held_out_cache, sae, hook_name, len(held_out_studies))
    return finding_detectors(
        train_max,
        labels_of(train_studies, findings),
        held_max,
        labels_of(held_out_studies, findings),
        top=top,
    )


def labels_of(studies: Iterable[Any], findings: Sequence[str]) -> dict[str, list[bool]]:
    studies = list(studies)
    return {f: [bool(s.labels.get(f, False)) for s in studies] for f in findings}


def detector_table(detectors: dict[str, list[FeatureDetector]]) -> list[dict[str, Any]]:
    return [d.to_dict() for rows in detectors.values() for d in rows]


__all__ = [
    "DETECTION_ROLES", "FeatureDetector", "detector_table", "best_thresholds",
    "detectors_from_caches", "finding_detectors", "labels_of", "study_maxima_from_cache",
]  # fmt: skip
