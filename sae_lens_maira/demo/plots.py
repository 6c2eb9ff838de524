"""The training figure: tower warm-up loss, report loss, and validation mention rates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _smooth(values: list[float], window: int) -> np.ndarray:
    v = np.asarray(values, dtype=float)
    if len(v) < window or window < 2:
        return v
    kernel = np.ones(window) / window
    head = np.array([v[: i + 1].mean() for i in range(window - 1)])
    return np.concatenate([head, np.convolve(v, kernel, mode="valid")])


def plot_training(summary: dict[str, Any], path: str | Path) -> Path:
    """Four panels from a training summary (``demo_training.json``), written as a PNG: image
    tower warm-up, report-text pretraining, findings generation, validation mention rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    vis = summary.get("vision_losses") or []
    ax = axes[0]
    if vis:
        ax.plot(np.arange(1, len(vis) + 1), vis, color="0.75", lw=0.8, label="per step")
        ax.plot(np.arange(1, len(vis) + 1), _smooth(vis, 20), color="C0", label="smoothed")
        ax.legend(frameon=False)
    ax.set(title="1. image tower warm-up", xlabel="step", ylabel="BCE loss (what the image shows)")

    ax = axes[1]
    text = summary.get("text_losses") or []
    if text:
        ax.plot(np.arange(1, len(text) + 1), text, color="0.75", lw=0.8, label="per step")
        ax.plot(np.arange(1, len(text) + 1), _smooth(text, 20), color="C0", label="smoothed")
        ax.legend(frameon=False)
    ax.set(title="2. language pretraining on report text", xlabel="step",
           ylabel="next-token loss (nats)")  # fmt: skip

    ax = axes[2]
    steps, losses = summary.get("lm_steps") or [], summary.get("lm_losses") or []
    if losses:
        ax.plot(steps, losses, color="0.75", lw=0.8, label="train (batch)")
        ax.plot(steps, _smooth(losses, 15), color="C0", label="train (smoothed)")
    evals = [e for e in summary.get("evals") or [] if "val_loss" in e]
    if evals:
        ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", color="C3",
                label="validation")  # fmt: skip
    if summary.get("best_step"):
        ax.axvline(summary["best_step"], color="0.5", ls=":", lw=1, label="kept")
    grounding = (summary.get("config") or {}).get("grounding_steps")
    if grounding:
        ax.axvspan(0, grounding, color="C2", alpha=0.08, label="grounding warm-up")
    ax.set(title="3. findings generation", xlabel="step", ylabel="target token loss (nats)")
    ax.legend(frameon=False)

    ax = axes[3]
    evals = summary.get("evals") or []
    if evals:
        names = list(evals[-1].get("mentions", {}))
        for i, name in enumerate(names):
            x = [e["step"] for e in evals]
            ax.plot(x, [e["mentions"][name]["positives"] for e in evals], "o-", color=f"C{i}",
                    label=f"{name.replace('_', ' ')}: positives")  # fmt: skip
            ax.plot(x, [e["mentions"][name]["negatives"] for e in evals], "x--", color=f"C{i}",
                    alpha=0.6, label="negatives")  # fmt: skip
            ref = evals[-1].get("reference", {}).get(name, {}).get("positives")
            if ref is not None:
                ax.axhline(ref, color=f"C{i}", lw=0.8, ls=":")
    ax.set(title="validation: generated reports mentioning", xlabel="step",
           ylabel="fraction of studies (dotted: reference)", ylim=(-0.03, 1.03))  # fmt: skip
    ax.legend(frameon=False, fontsize=7)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
