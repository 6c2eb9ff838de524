"""Findings generation stops at the first evaluation that clears the targets with a margin."""

import torch

from sae_lens_maira.demo.small_model import DemoModelConfig, meets_stop_margin
from sae_lens_maira.training.loop import run_training


class _Stub(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))
        self.vision_tower = torch.nn.Identity()


def _run(scores, stop_when, steps=40):
    model = _Stub()
    seen = []

    def evaluate(m, step):
        seen.append(step)
        return {"score": scores.get(step, 0.0), "ok": step in scores}

    history = run_training(
        model, next_batch=lambda: {}, loss_fn=lambda m, b: (m.w**2).sum(),
        groups=[{"params": [model.w], "lr": 0.1, "base_lr": 0.1, "weight_decay": 0.0}],
        steps=steps, warmup_steps=2, evaluate=evaluate, eval_every=10, select_after=10,
        stop_when=stop_when, progress=False,
    )  # fmt: skip
    return history, seen


def test_training_stops_at_the_first_eval_that_meets_the_rule():
    history, seen = _run({20: 0.5, 30: 0.9}, stop_when=lambda r: r["ok"])
    # step 10 is the warm-up (select_after): never a stopping point; 20 meets the rule
    assert seen == [10, 20]
    assert history.stopped_at == 20 and history.steps[-1] == 20 and history.best_step == 20
    assert history.lrs == _run({}, stop_when=None)[0].lrs[:20]  # same schedule (on `steps`)


def test_without_a_rule_or_a_match_every_step_runs():
    for rule in (None, lambda r: False):
        history, seen = _run({20: 0.5}, stop_when=rule)
        assert seen == [10, 20, 30, 40] and history.stopped_at is None and len(history.steps) == 40


def test_stop_margin_is_stricter_than_the_targets():
    cfg = DemoModelConfig(findings=("a", "b"), stop_positive_rate=0.75)

    def result(pos_a, neg_a, pos_b=1.0, neg_b=0.0):
        return {"mentions": {
            "a": {"positives": pos_a, "negatives": neg_a, "n_positives": 12, "n_negatives": 30},
            "b": {"positives": pos_b, "negatives": neg_b, "n_positives": 12, "n_negatives": 30},
        }}  # fmt: skip

    assert meets_stop_margin(result(0.75, 0.05), cfg)
    assert not meets_stop_margin(result(0.7, 0.0), cfg)  # passes the 0.5 target, not the margin
    assert not meets_stop_margin(result(0.9, 0.08), cfg)
    assert not meets_stop_margin(result(0.9, 0.0, pos_b=0.6), cfg)
    assert not meets_stop_margin({"mentions": {}}, cfg)
    assert not meets_stop_margin(result(1.0, 0.0), DemoModelConfig(findings=("a", "b"), stop_positive_rate=None))
