from types import SimpleNamespace

import datasets
import pytest
import torch

from sae_lens_maira.analysis.finding_features import (
    best_thresholds,
    detectors_from_caches,
    finding_detectors,
)
from sae_lens_maira.analysis.metrics import balanced_accuracy
from sae_lens_maira.processing.roles import Role


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


class _ReluSAE(torch.nn.Module):
    """Latent i = relu(x_i): feature ids are activation coordinates."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))
        self.cfg = SimpleNamespace(d_sae=d)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.relu()


def _cache_and_studies(n: int, seed: int, d: int = 6, ctx: int = 4, miss_first: bool = False):
    """Studies one per row (image first, indication, report, report); coordinate 2 is high at
    the image token of positives (but the first one's with ``miss_first``), coordinate 4 at
    every positive's report tokens (which name the finding)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=g) < 0.4
    y[:2] = torch.tensor([True, False])  # both classes present
    acts = torch.rand(n, ctx, d, generator=g) * 0.5
    acts[:, 0, 2] += 2.0 * y
    if miss_first:
        acts[0, 0, 2] = 0.0
    acts[:, 2:, 4] += 5.0 * y[:, None]
    roles = torch.tensor([int(Role.IMAGE_FIRST), int(Role.INDICATION), int(Role.REPORT), int(Role.REPORT)])
    cache = datasets.Dataset.from_dict({
        "h": acts.tolist(), "roles": roles.expand(n, ctx).tolist(),
        "study_index": torch.arange(n)[:, None].expand(n, ctx).tolist(),
    })  # fmt: skip
    studies = [SimpleNamespace(labels={"effusion": bool(v)}) for v in y]
    return cache, studies, y


def test_detectors_from_caches_pick_the_image_feature_not_the_report_one():
    train_cache, train_studies, _ = _cache_and_studies(40, seed=2, miss_first=True)
    held_cache, held_studies, held_y = _cache_and_studies(20, seed=3)
    det = detectors_from_caches(
        train_cache, held_cache, _ReluSAE(6), "h", train_studies, held_studies, ["effusion"], top=2
    )
    best = det["effusion"][0]
    # feature 4 separates the classes perfectly, but only on report positions: never read
    assert best.feature == 2 and det["effusion"][1].feature != 4
    assert best.train_balanced_accuracy < 1.0 and best.held_out_balanced_accuracy == 1.0
    assert (best.held_out_positives, best.held_out_negatives) == (int(held_y.sum()), int((~held_y).sum()))
