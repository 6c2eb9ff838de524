"""Screening steering candidates by what they do to the reports, on a scripted generator."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sae_lens_maira.steering.screening import (
    add_sweep,
    examples,
    feature_scales,
    mentions,
    remove_sweep,
    screen_candidates,
)
from sae_lens_maira.steering.settings import SteerSettings

NORMAL = "The lungs are clear. No pleural effusion."
STATED = "There is a small left pleural effusion."
STUFFED = "Effusion effusion effusion effusion pleural effusion."

#: feature -> (placement it works at, scale multiple it needs, what it writes when added)
SCRIPT = {
    3: ("image", 2.0, STATED),  # states the finding fluently from twice its scale, at the image
    5: ("image+generated", 1.0, STUFFED),  # says the word, but stuffs it in
    7: ("image+generated", 4.0, STATED),  # works only at the second placement and x4
}
#: features whose suppression removes the mention
REMOVES = {3, 7}


class ScriptedGenerator:
    """Stands in for :class:`ReportGenerator`: reports follow the clamp by a fixed script."""

    def __init__(self, spec: SteerSettings, scales: dict[int, float]) -> None:
        self.spec, self.scales, self.calls = spec, scales, []

    def __call__(self, studies, feature=None, value=None, where=None):
        self.calls.append((feature, value, where))
        out = []
        for s in studies:
            base = STATED if s.positive else NORMAL
            if feature is None:
                out.append(base)
            elif value == 0.0:
                out.append(NORMAL if feature in REMOVES else base)
            else:
                at, need, text = SCRIPT.get(feature, ("", float("inf"), base))
                works = where == at and value >= need * self.scales[feature] - 1e-9
                out.append(text if works else base)
        return out


def _studies(n: int, positive: bool):
    return [SimpleNamespace(study_id=f"{'p' if positive else 'n'}{i}", positive=positive) for i in range(n)]


def _spec() -> SteerSettings:
    return SteerSettings(coefficients=(1.0, 2.0, 4.0), where=("image", "image+generated"))


def test_mentions_follow_the_labeller():
    assert mentions([STATED, NORMAL, STUFFED], "pleural_effusion") == [True, False, True]


def test_add_sweep_keeps_the_smallest_coefficient_with_the_best_fluent_rate():
    gen = ScriptedGenerator(_spec(), {3: 0.5})
    sweep = add_sweep(gen, _studies(4, False), 3, 0.5, "pleural_effusion", "image")
    assert [p["value"] for p in sweep["points"]] == [0.5, 1.0, 2.0]
    assert [p["fluent_mention_rate"] for p in sweep["points"]] == [0.0, 1.0, 1.0]
    assert sweep["best"]["coefficient"] == 2.0
    stuffed = add_sweep(ScriptedGenerator(_spec(), {5: 1.0}), _studies(4, False), 5, 1.0,
                        "pleural_effusion", "image+generated")["best"]  # fmt: skip
    assert stuffed["mention_rate"] == 1.0 and stuffed["fluent_mention_rate"] == 0.0


def test_remove_sweep_only_counts_studies_whose_report_stated_it():
    gen = ScriptedGenerator(_spec(), {3: 1.0})
    studies = _studies(3, True) + _studies(2, False)
    baseline = gen(studies)
    rem = remove_sweep(gen, studies, 3, "pleural_effusion", baseline)
    assert rem["n"] == 3 and rem["removed_rate"] == 1.0 and rem["study_ids"] == ["p0", "p1", "p2"]
    assert gen.calls[-1] == (3, 0.0, "image+generated")  # suppressed at spec.suppress_where
    keep = remove_sweep(gen, studies, 5, "pleural_effusion", baseline)
    assert keep["removed_rate"] == 0.0
    none = remove_sweep(gen, _studies(2, False), 3, "pleural_effusion", [NORMAL, NORMAL])
    assert none["n"] == 0 and none["removed_rate"] is None


def test_screen_picks_the_candidate_that_changes_the_finding_both_ways():
    scales = {5: 1.0, 7: 0.25, 3: 0.5}
    gen = ScriptedGenerator(_spec(), scales)
    logged = []
    best, rows = screen_candidates(gen, [5, 7, 3], scales, "pleural_effusion", _studies(4, False),
                                   _studies(4, True), log=lambda f, r: logged.append(f))  # fmt: skip
    # 5 only stuffs the word in and removes nothing; 7 and 3 both score 2: the earlier one wins
    assert rows[5]["score"] == 0.0 and rows[5]["remove"] == 0.0
    assert rows[7] == {"add": 1.0, "add_coefficient": 4.0, "where": "image+generated", "remove": 1.0,
                       "score": 2.0, "by_where": {"image": 0.0, "image+generated": 1.0}}  # fmt: skip
    assert rows[3]["where"] == "image" and rows[3]["add_coefficient"] == 2.0 and rows[3]["score"] == 2.0
    assert best == 7 and logged == [5, 7, 3]
    best, _ = screen_candidates(gen, [3, 7], scales, "pleural_effusion", _studies(4, False), _studies(4, True))
    assert best == 3


def test_feature_scales_are_the_mean_maximum_on_positives():
    maxima = torch.tensor([[2.0, 0.0, 0.0], [4.0, 0.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    everywhere = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    labels = [True, True, False, True]
    # feature 0: mean of its nonzero maxima over positives (2, 4), not the negative's 9
    assert feature_scales(maxima, labels, [0, 1, 2]) == {0: 3.0, 1: 1.0, 2: 1.0}
    # a feature silent on positives takes its largest maximum anywhere, else 1
    assert feature_scales(maxima, labels, [1, 2], all_maxima=everywhere) == {1: 3.0, 2: 1.0}


def test_examples_put_mentions_first():
    assert examples([NORMAL, STATED, NORMAL], "pleural_effusion") == [STATED, NORMAL]
    assert examples([NORMAL], "pleural_effusion", n=3) == [NORMAL]
