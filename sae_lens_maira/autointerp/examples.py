"""Examples as the explainer and scorer see them: text with image runs summarised, activating tokens
marked ``<<like this>>`` for the explainer and unmarked for the scorer (delphi's conventions)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from sae_lens_maira.dashboards.feature_stats import GAP, Example, FeatureStats

_IMG = re.compile(r"^<img(\d+):r(\d+)c(\d+)>$")


@dataclass
class AutointerpConfig:
    """delphi's defaults: 40 explainer examples, 50 test examples over 10 activation intervals,
    50 non-activating examples; tokens above ``mark_fraction`` of an example's max are marked.

    Scoring uses only held-out sequences (never shown to the explainer). A feature with fewer than
    ``min_held_out_activating`` / ``min_held_out_non_activating`` of them is reported as not scored;
    to reach the minimum, activating sequences are taken out of the explainer's set first.
    """

    n_explain: int = 40
    n_test_groups: int = 10
    n_test_per_group: int = 5
    n_non_activating: int = 50
    mark_fraction: float = 0.25
    examples_per_prompt: int = 10
    private: bool = False
    seed: int = 0
    min_held_out_activating: int = 5
    min_held_out_non_activating: int = 5

    def __post_init__(self) -> None:
        if self.min_held_out_activating < 1 or self.min_held_out_non_activating < 1:
            raise ValueError(
                "min_held_out_activating and min_held_out_non_activating must be at least 1: "
                "a detection score needs both classes"
            )


@dataclass
class Shown:
    """One example in prompt form, with its truth for scoring."""

    text: str  # marked (explainer) or plain (scorer) rendering
    tokens: list[str]
    marked: list[bool]
    activating: bool
    example: Example


def image_token(tok: str) -> tuple[int, int, int] | None:
    """(image, row, col) of a patch pseudo-token, else None."""
    m = _IMG.match(tok)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def _join(tokens: list[str]) -> str:
    """Sentencepiece pieces (``▁word``) join without spaces; whole words join with spaces."""
    if any(t.startswith("▁") for t in tokens):
        return "".join(tokens).replace("▁", " ").strip()
    return " ".join(tokens)


def render(ex: Example, slot_names: tuple[str, ...], marked: list[bool] | None) -> str:
    """Text of an example; each run of image patches becomes ``[frontal image r04c02-r05c03: ...]``
    listing marked patches (explainer) or just the patch range (scorer)."""
    parts: list[str] = []
    run: list[tuple[int, int, int, bool]] = []
    words: list[str] = []

    def flush_words():
        if words:
            parts.append(_join(words))
            words.clear()

    def flush_run():
        if not run:
            return
        img = run[0][0]
        slot = slot_names[img] if img < len(slot_names) else f"image{img}"
        first, last = run[0], run[-1]
        desc = f"[{slot} image r{first[1]:02d}c{first[2]:02d}-r{last[1]:02d}c{last[2]:02d}"
        hot = [f"<<r{r:02d}c{c:02d}>>" for _, r, c, m in run if m]
        parts.append(desc + (": " + " ".join(hot) if hot else "") + "]")
        run.clear()

    for i, tok in enumerate(ex.tokens):
        pos = image_token(tok)
        m = bool(marked and marked[i])
        if pos is not None:
            if run and run[0][0] != pos[0]:
                flush_run()
            flush_words()
            run.append((*pos, m))
            continue
        flush_run()
        if tok == GAP:
            flush_words()
            parts.append("…")
            continue
        words.append(f"<<{tok}>>" if m else tok)
    flush_run()
    flush_words()
    return " ".join(parts)


def shown(ex: Example, slot_names, cfg: AutointerpConfig, mark: bool, activating: bool) -> Shown:
    top = max(ex.values) if ex.values else 0.0
    marks = [v > 0 and v >= cfg.mark_fraction * top for v in ex.values]
    text = render(ex, slot_names, marks if mark else None)
    return Shown(text, ex.tokens, marks, activating, ex)


@dataclass
class FeatureSplit:
    """One feature's examples: what the explainer sees and the disjoint held-out test set."""

    explain: list[Example]
    baseline: list[Example]  # non-activating contexts shown to the explainer
    test_activating: list[Example]
    test_non_activating: list[Example]

    def shortfall(self, cfg: AutointerpConfig) -> str | None:
        """Why the feature cannot be scored (None when it can)."""
        n_pos, n_neg = len(self.test_activating), len(self.test_non_activating)
        if n_pos >= cfg.min_held_out_activating and n_neg >= cfg.min_held_out_non_activating:
            return None
        return (
            f"{n_pos} held-out activating and {n_neg} non-activating examples; scoring needs at "
            f"least {cfg.min_held_out_activating} and {cfg.min_held_out_non_activating} "
            "(collect statistics over more studies, or lower min_held_out_*)"
        )


def split_examples(stats: FeatureStats, f: int, cfg: AutointerpConfig) -> FeatureSplit:
    """Explainer examples and held-out test examples, with no sequence in both.

    Held-out activating examples are sampled across activation intervals; when fewer than
    ``min_held_out_activating`` lie outside the explainer's top examples, sampled sequences move
    from the explainer's set to the test set (the explainer always keeps at least one).
    """
    top = stats.top_examples(f, cfg.n_explain, private=cfg.private)
    groups = stats.quantile_groups(f, cfg.n_test_groups, cfg.n_test_per_group, private=cfg.private,
                                   seed=cfg.seed)  # fmt: skip
    sampled: dict[int, Example] = {}
    for g in groups:
        for e in g.examples:
            sampled.setdefault(e.seq, e)
    top_seqs = {e.seq for e in top}
    held = [e for seq, e in sampled.items() if seq not in top_seqs]
    movable = [e for seq, e in sampled.items() if seq in top_seqs]
    need = cfg.min_held_out_activating - len(held)
    if need > 0 and movable:
        moved = movable[: max(0, min(need, len(top) - 1))]
        held += moved
        moved_seqs = {e.seq for e in moved}
        top = [e for e in top if e.seq not in moved_seqs]
    negatives = stats.non_activating_examples(f, None, private=cfg.private)
    test_neg = negatives[: cfg.n_non_activating]
    baseline = negatives[cfg.n_non_activating : 2 * cfg.n_non_activating]
    return FeatureSplit(top, baseline, held, test_neg)


def explainer_examples(stats: FeatureStats, f: int, cfg: AutointerpConfig) -> list[Shown]:
    exs = split_examples(stats, f, cfg).explain
    return [shown(e, stats.slot_names, cfg, mark=True, activating=True) for e in exs]


def scoring_examples(stats: FeatureStats, f: int, cfg: AutointerpConfig) -> list[Shown]:
    """Held-out activating examples across activation intervals plus non-activating ones, shuffled."""
    split = split_examples(stats, f, cfg)
    out = [shown(e, stats.slot_names, cfg, mark=False, activating=True) for e in split.test_activating]
    out += [shown(e, stats.slot_names, cfg, mark=False, activating=False)
            for e in split.test_non_activating]  # fmt: skip
    random.Random(cfg.seed * 1_000_003 + f).shuffle(out)
    return out
