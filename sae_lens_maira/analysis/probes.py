"""Linear probes: does a hook point carry each finding at the positions an SAE will read?

Activations are taken on teacher-forced findings prompts (prompt + reference report), the way
the activation cache sees studies, at the positions the study's token policy keeps: the first
and last token of each image run, the variable prompt text (indication, comparison, ...) and the
report. A class-balanced, L2-regularised logistic regression per finding and position group is
fitted on training studies and scored by balanced accuracy on held-out studies. An SAE can only
find a feature that detects a finding where such a direction exists (the demo's model card
reports them, :mod:`sae_lens_maira.demo.held_out`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sae_lens_maira.analysis.metrics import balanced_accuracy
from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.processing.roles import Role

#: Position groups: (roles, image slot or None). Text groups average their tokens.
POSITION_GROUPS: dict[str, tuple[frozenset[Role], int | None]] = {
    "frontal_first": (frozenset({Role.IMAGE_FIRST}), 0),
    "frontal_last": (frozenset({Role.IMAGE_LAST}), 0),
    "lateral_first": (frozenset({Role.IMAGE_FIRST}), 1),
    "lateral_last": (frozenset({Role.IMAGE_LAST}), 1),
    "prompt_text": (
        frozenset({Role.INDICATION, Role.TECHNIQUE, Role.COMPARISON, Role.PRIOR_REPORT}),
        None,
    ),
    "report": (frozenset({Role.REPORT}), None),
}


@torch.no_grad()
def collect_group_features(
    model: HookedMaira2,
    processor: Maira2Processor,
    studies: Sequence[Study],
    hook_names: Sequence[str],
    *,
    batch_size: int = 16,
) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Per hook and group: (features [n_studies, d_model], present [n_studies] bool)."""
    missing = [h for h in hook_names if h not in model.hook_dict]
    if missing:
        raise ValueError(
            f"{missing} are not hook points of the model (e.g. 'blocks.1.hook_resid_post')"
        )
    d = model.cfg.d_model
    out = {
        h: {g: (torch.zeros(len(studies), d), torch.zeros(len(studies), dtype=torch.bool))
            for g in POSITION_GROUPS}
        for h in hook_names
    }  # fmt: skip
    layers = [int(h.split(".")[1]) + 1 for h in hook_names if h.startswith("blocks.")]
    stop = max(layers) if len(layers) == len(hook_names) else None
    for start in range(0, len(studies), batch_size):
        chunk = list(studies[start : start + batch_size])
        batch = processor(chunk, with_report=True, padding_side="right")
        _, cache = model.run_with_cache(
            batch.input_ids,
            pixel_values=batch.pixel_values,
            attention_mask=batch.attention_mask,
            names_filter=list(hook_names),
            stop_at_layer=stop,
        )
        rows = slice(start, start + len(chunk))
        for group, (roles, slot) in POSITION_GROUPS.items():
            keep = torch.isin(batch.roles, torch.tensor(sorted(int(r) for r in roles)))
            if slot is not None:
                keep &= batch.image_slot == slot
            counts = keep.sum(1)
            for hook in hook_names:
                acts = cache[hook].float()
                feats, present = out[hook][group]
                feats[rows] = (acts * keep[..., None]).sum(1) / counts.clamp(min=1)[:, None]
                present[rows] = counts > 0
    return out


def fit_logistic(
    x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-2, max_iter: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class-balanced logistic regression (mean weighted log-loss + ``l2/2 * |w|^2``) by L-BFGS.

    Returns (w, b). Positives and negatives carry equal total weight, so a decision threshold
    of 0 suits balanced accuracy.
    """
    x = x.double()
    y = y.double()
    n_pos = float(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError("fit_logistic needs both positive and negative examples")
    weights = torch.where(y > 0.5, 0.5 / n_pos, 0.5 / (len(y) - n_pos))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-10, tolerance_change=1e-12)  # fmt: skip

    def closure():
        opt.zero_grad()
        z = x @ w + b
        loss = (weights * torch.nn.functional.softplus(-(2 * y - 1) * z)).sum()
        loss = loss + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def probe_findings(
    model: HookedMaira2,
    processor: Maira2Processor,
    train_studies: Sequence[Study],
    test_studies: Sequence[Study],
    hook_names: str | Sequence[str],
    findings: Sequence[str],
    *,
    l2: float = 1e-2,
    batch_size: int = 16,
) -> dict[str, dict[str, dict[str, float]]]:
    """Held-out balanced accuracy per hook, position group and finding (NaN where a group or a
    class is missing)."""
    hooks = [hook_names] if isinstance(hook_names, str) else list(hook_names)
    train = collect_group_features(model, processor, train_studies, hooks, batch_size=batch_size)
    test = collect_group_features(model, processor, test_studies, hooks, batch_size=batch_size)
    result: dict[str, dict[str, dict[str, float]]] = {}
    for hook in hooks:
        result[hook] = {}
        for group in POSITION_GROUPS:
            xtr, ptr = train[hook][group]
            xte, pte = test[hook][group]
            row = {}
            for f in findings:
                ytr = torch.tensor([bool(s.labels.get(f)) for s in train_studies])[ptr]
                yte = torch.tensor([bool(s.labels.get(f)) for s in test_studies])[pte]
                if ytr.all() or not ytr.any() or yte.all() or not yte.any():
                    row[f] = float("nan")
                    continue
                a = xtr[ptr]
                mean, std = a.mean(0), a.std(0).clamp(min=1e-6)
                w, b = fit_logistic((a - mean) / std, ytr.float(), l2=l2)
                pred = (((xte[pte] - mean) / std).double() @ w + b) > 0
                score = balanced_accuracy(pred, yte)
                row[f] = float("nan") if score is None else score
            result[hook][group] = row
    return result
