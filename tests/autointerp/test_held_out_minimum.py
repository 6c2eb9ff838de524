"""Detection scores only from enough held-out examples of both classes; a hard HTTP failure stops
scheduling (issue 16 item 6, issue 15's autointerp part)."""

from __future__ import annotations

import threading

import pytest

from sae_lens_maira.autointerp.examples import AutointerpConfig, split_examples
from sae_lens_maira.autointerp.metrics import detection_metrics
from sae_lens_maira.autointerp.offline import OfflineExplainer, OfflineScorer
from sae_lens_maira.autointerp.runner import AutointerpStopped, run_autointerp
from sae_lens_maira.dashboards.explanations import load_explanations
from sae_lens_maira.dashboards.stats_pass import FeatureStatsCollector, FeatureStatsConfig
from sae_lens_maira.dashboards.synthetic import TOKEN_FEATURE, make_synthetic
from sae_lens_maira.http_retry import HTTPRequestError


@pytest.fixture(scope="module")
def small_collection():
    """24 studies: with delphi's 40 explainer examples every activating sequence is a top example."""
    data = make_synthetic(n_studies=24, batch_size=8, d_sae=8, grid=(8, 8), seed=3, with_images=False)
    cfg = FeatureStatsConfig(n_top=40, ctx_left=4, ctx_right=4, text_context=6, n_random_contexts=60,
                             n_corr_positions=0)  # fmt: skip
    c = FeatureStatsCollector(data.d_sae, data.grid, cfg)
    for b in data.batches:
        c.update(b)
    return c.finalize(data.namer, data.meta)


def test_one_class_gives_no_balanced_accuracy():
    assert detection_metrics([False, False], [False, False])["balanced_accuracy"] is None
    assert detection_metrics([True], [True])["balanced_accuracy"] is None


def test_held_out_examples_are_disjoint_from_the_explainer_and_reach_the_minimum(small_collection):
    cfg = AutointerpConfig()  # n_explain 40 > the activating sequences of a 24-study collection
    for f in small_collection.alive_features():
        split = split_examples(small_collection, f, cfg)
        shown = {e.seq for e in split.explain}
        assert not shown & {e.seq for e in split.test_activating}
        assert not {(e.seq, e.max_index, tuple(e.tokens)) for e in split.baseline} & {
            (e.seq, e.max_index, tuple(e.tokens)) for e in split.test_non_activating
        }
        assert split.explain  # the explainer keeps at least one example
    split = split_examples(small_collection, TOKEN_FEATURE, cfg)
    assert len(split.test_activating) >= cfg.min_held_out_activating


def test_autointerp_on_24_studies_scores_only_what_it_can(small_collection, tmp_path):
    cfg = AutointerpConfig(min_held_out_activating=5, min_held_out_non_activating=5)
    names = small_collection.slot_names
    res = run_autointerp(small_collection, tmp_path / "e.jsonl", OfflineExplainer(names),
                         OfflineScorer(names), cfg=cfg, concurrency=2)  # fmt: skip
    assert res[TOKEN_FEATURE].detection["scored"] is True
    assert res[TOKEN_FEATURE].detection["n_activating"] >= 5
    assert res[TOKEN_FEATURE].score is not None and res[TOKEN_FEATURE].score > 0.5
    for e in res.values():
        d = e.detection
        if d["scored"]:
            assert d["n_activating"] >= 5 and d["n_non_activating"] >= 5
            assert 0 <= e.score <= 1
        else:
            assert e.score is None and "held-out" in d["reason"]
    # a minimum the collection cannot meet: every feature reported as not scored, none as a score
    strict = AutointerpConfig(min_held_out_activating=500)
    res = run_autointerp(small_collection, tmp_path / "strict.jsonl", OfflineExplainer(names),
                         OfflineScorer(names), cfg=strict)  # fmt: skip
    assert res and all(e.score is None and not e.detection["scored"] for e in res.values())
    assert all(e.score is None for e in load_explanations(tmp_path / "strict.jsonl").values())
    with pytest.raises(ValueError, match="at least 1"):
        AutointerpConfig(min_held_out_non_activating=0)


class _FailingExplainer(OfflineExplainer):
    """Fails for good on the first feature it is asked about; counts the calls."""

    name = "failing"

    def __init__(self, slot_names, transient: bool):
        super().__init__(slot_names)
        self.calls, self.transient, self.lock = 0, transient, threading.Lock()

    def explain(self, examples, baseline):
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            raise HTTPRequestError("HTTP 401 from the endpoint", transient=self.transient, status=401)
        return super().explain(examples, baseline)


def test_a_non_transient_http_failure_stops_scheduling(small_collection, tmp_path):
    names = small_collection.slot_names
    feats = small_collection.alive_features()
    assert len(feats) >= 4
    explainer = _FailingExplainer(names, transient=False)
    out = tmp_path / "e.jsonl"
    with pytest.raises(AutointerpStopped, match="HTTP 401") as info:
        run_autointerp(small_collection, out, explainer, OfflineScorer(names), feats,
                       AutointerpConfig(), concurrency=1)  # fmt: skip
    assert explainer.calls == 1  # nothing after the failure was started
    assert info.value.n_unscheduled == len(feats) - 1 and info.value.n_done == 0
    # a transient failure (retries exhausted) skips that feature only; the rerun fills it in
    explainer = _FailingExplainer(names, transient=True)
    res = run_autointerp(small_collection, out, explainer, OfflineScorer(names), feats,
                         AutointerpConfig(), concurrency=1)  # fmt: skip
    assert len(res) == len(feats) - 1
    res = run_autointerp(small_collection, out, OfflineExplainer(names), OfflineScorer(names), feats,
                         AutointerpConfig())  # fmt: skip
    assert set(res) == set(feats)
