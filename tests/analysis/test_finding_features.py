import pytest
import torch

from sae_lens_maira.analysis.finding_features import best_thresholds, finding_detectors
from sae_lens_maira.analysis.metrics import balanced_accuracy


def _brute(x, y):
    best, best_t = 0.5, None
    for t in sorted(set(x.tolist())):
        for cut in (t - 1e-6,):
            ba = balanced_accuracy(x > cut, y)
            if ba > best:
                best, best_t = ba, cut
    return best, best_t


def test_best_thresholds_match_a_brute_force_search():
    g = torch.Generator().manual_seed(0)
    y = torch.rand(60, generator=g) < 0.3
    x = torch.rand(60, 5, generator=g)
    x[:, 2] += y.float() * 0.8  # a feature that detects the label
    x[:, 4] = torch.where(torch.rand(60, generator=g) < 0.7, torch.zeros(60), x[:, 4])  # ties at 0
    ba, th = best_thresholds(x, y, chunk=2)
    for f in range(5):
        want, _ = _brute(x[:, f], y)
        assert ba[f].item() == pytest.approx(want, abs=1e-6), f
        assert balanced_accuracy(x[:, f] > th[f], y) == pytest.approx(ba[f].item(), abs=1e-6)
    assert ba.argmax().item() == 2 and ba[2] > 0.9


def test_finding_detectors_pick_and_score_the_planted_feature():
    g = torch.Generator().manual_seed(1)
    train_y = torch.rand(200, generator=g) < 0.2
    test_y = torch.rand(100, generator=g) < 0.2
    train = torch.rand(200, 32, generator=g)
    test = torch.rand(100, 32, generator=g)
    train[:, 7] += 2 * train_y
    test[:, 7] += 2 * test_y
    det = finding_detectors(
        train, {"effusion": train_y.tolist()}, test, {"effusion": test_y.tolist()}, top=2
    )
    best = det["effusion"][0]
    assert (
        best.feature == 7
        and best.train_balanced_accuracy == 1.0
        and best.held_out_balanced_accuracy == 1.0
    )
    assert best.held_out_positives == int(test_y.sum())
    with pytest.raises(ValueError, match="need positive and negative"):
        best_thresholds(train, torch.zeros(200, dtype=torch.bool))
