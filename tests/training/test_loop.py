"""The fixed-step AdamW loop on a tiny regression: schedule values, weight selection, EMA, frozen parts."""

from __future__ import annotations

import math

import pytest
import torch

from sae_lens_maira.training.loop import run_training, warmup_cosine_factor


def test_schedule_warms_up_linearly_then_follows_the_whole_run_s_cosine():
    steps, warm, floor = 10, 4, 0.1
    got = [warmup_cosine_factor(s, steps, warm, floor) for s in range(steps)]
    assert got[:4] == [0.25, 0.5, 0.75, 1.0]  # warm-up reaches 1 at its last step
    # after warm-up: the cosine at step / steps (not restarted at the end of warm-up)
    for s in range(4, steps):
        want = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * s / steps))
        assert got[s] == want
    assert got[5] == pytest.approx(0.55)  # half way: the mean of 1 and the floor
    assert got[4] > got[5] > got[9] > floor
    assert warmup_cosine_factor(0, 10, 0, 0.0) == 1.0  # no warm-up starts at the peak


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(3, 1)
        self.tower = torch.nn.Sequential(torch.nn.Dropout(0.5))  # "frozen": never trained
        self.tower.requires_grad_(False)


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    model = _Net()
    groups = [{"params": list(model.lin.parameters()), "lr": 0.2, "base_lr": 0.2, "weight_decay": 0.0}]
    modes: list[tuple[bool, bool]] = []

    def loss_fn(m: _Net, batch):
        modes.append((m.training, m.tower.training))
        xb, yb = batch
        return (m.lin(xb).squeeze(-1) - yb).pow(2).mean()

    return model, groups, loss_fn, (lambda: (x, y)), modes


def test_lrs_follow_the_schedule_and_the_loss_falls():
    model, groups, loss_fn, batch, _ = _setup()
    seen: list[float] = []
    orig = torch.optim.AdamW.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return orig(self, *a, **k)

    torch.optim.AdamW.step = spy  # type: ignore[method-assign]
    try:
        h = run_training(model, next_batch=batch, loss_fn=loss_fn, groups=groups, steps=12,
                         warmup_steps=3, min_lr_ratio=0.2, progress=False)  # fmt: skip
    finally:
        torch.optim.AdamW.step = orig  # type: ignore[method-assign]
    want = [0.2 * warmup_cosine_factor(s, 12, 3, 0.2) for s in range(12)]
    assert seen == want and h.lrs == want
    assert h.steps == list(range(1, 13)) and h.losses[-1] < h.losses[0] / 2
    assert not model.training  # left in eval mode
    with pytest.raises(ValueError, match="at least 1"):
        run_training(model, next_batch=batch, loss_fn=loss_fn, groups=groups, steps=0,
                     warmup_steps=0, progress=False)  # fmt: skip


def test_the_best_evaluation_after_select_after_is_restored_and_frozen_parts_stay_in_eval():
    model, groups, loss_fn, batch, modes = _setup()
    snapshots: dict[int, torch.Tensor] = {}
    # scores: best at step 2 (ignored: not after select_after=3), then a peak at 6, tie at 10
    scores = {2: 9.0, 4: 1.0, 6: 5.0, 8: 2.0, 10: 5.0, 12: 0.0}

    def evaluate(m: _Net, step: int) -> dict:
        assert not m.training
        snapshots[step] = m.lin.weight.detach().clone()
        return {"score": scores[step]}

    logged: list[str] = []
    h = run_training(model, next_batch=batch, loss_fn=loss_fn, groups=groups, steps=12,
                     warmup_steps=2, evaluate=evaluate, eval_every=2, select_after=3,
                     frozen=("tower",), progress=False, log=logged.append)  # fmt: skip
    assert [e["step"] for e in h.evals] == [2, 4, 6, 8, 10, 12]
    assert h.best_step == 10  # ties go to the later evaluation
    assert torch.equal(model.lin.weight, snapshots[10])
    assert not torch.equal(snapshots[10], snapshots[12])
    # every training step ran in train mode with the frozen tower in eval mode, evals included
    assert len(modes) == 12 and all(m == (True, False) for m in modes)
    assert any("kept the weights of step 10" in line for line in logged)


def test_ema_weights_are_what_is_kept():
    model, groups, loss_fn, batch, _ = _setup()
    live: list[torch.Tensor] = []
    decay, after = 0.5, 2
    h = run_training(model, next_batch=batch, loss_fn=loss_fn, groups=groups, steps=6,
                     warmup_steps=1, ema_decay=decay, select_after=after, progress=False,
                     after_step=lambda: live.append(model.lin.weight.detach().clone()))  # fmt: skip
    # after_step ran after each of the 6 steps, then once more when the average was swapped in
    assert len(live) == 7 and h.best_step is None
    ema = live[after].clone()  # the average starts at step select_after + 1
    for w in live[after + 1 : 6]:
        ema = ema.lerp(w, 1 - decay)
    assert torch.allclose(model.lin.weight, ema, atol=1e-7)
    assert not torch.allclose(model.lin.weight, live[5])
