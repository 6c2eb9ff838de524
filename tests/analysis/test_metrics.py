"""Balanced accuracy's one edge-case rule: no score unless both classes are present."""

from __future__ import annotations

import pytest
import torch

from sae_lens_maira.analysis.metrics import balanced_accuracy
from sae_lens_maira.autointerp.metrics import detection_metrics


def test_by_hand() -> None:
    truth = torch.tensor([1, 1, 1, 0, 0, 0, 0, 0], dtype=torch.bool)
    pred = torch.tensor([1, 0, 1, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert balanced_accuracy(pred, truth) == pytest.approx((2 / 3 + 3 / 5) / 2)
    assert balanced_accuracy(pred.tolist(), truth.tolist()) == pytest.approx((2 / 3 + 3 / 5) / 2)


@pytest.mark.parametrize(
    ("pred", "truth"),
    [([True, False], [True, True]), ([True, True], [False, False]), ([], []),
     ([False, False], [False, False])],
)  # fmt: skip
def test_one_class_or_none_is_no_score(pred: list[bool], truth: list[bool]) -> None:
    assert balanced_accuracy(pred, truth) is None


def test_perfect_and_inverted_predictions() -> None:
    truth = [True, False, True, False]
    assert balanced_accuracy(truth, truth) == 1.0
    assert balanced_accuracy([not t for t in truth], truth) == 0.0
    assert balanced_accuracy([True] * 4, truth) == 0.5  # a constant guess, both classes present


def test_lengths_must_match() -> None:
    with pytest.raises(ValueError, match="3 predictions for 2 examples"):
        balanced_accuracy([True, False, True], [True, False])


def test_autointerp_scores_with_the_same_function() -> None:
    pred, truth = [True, False, False, True, True], [True, False, True, True, False]
    assert detection_metrics(pred, truth)["balanced_accuracy"] == balanced_accuracy(pred, truth)
    assert detection_metrics([True], [True])["balanced_accuracy"] is None
