"""The demo's summary: one markdown page with tables and plots, next to everything it links."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _plot_sae_curve(curve: list[dict[str, float]], path: Path) -> Path | None:
    if not curve:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tokens = [c["tokens"] for c in curve]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(tokens, [c["explained_variance"] for c in curve], "o-", color="tab:blue")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("explained variance", color="tab:blue")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(tokens, [c["l0"] for c in curve], "s--", color="tab:orange")
    ax2.set_ylabel("L0 (active latents per token)", color="tab:orange")
    ax.set_title("SAE training (checkpoints, training activations)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _rel(path: str | Path, base: Path) -> str:
    return os.path.relpath(Path(path), base)


def write_summary(run: Any) -> Path:
    out: Path = run.out
    f = run.facts
    lines = ["# sae-lens-maira demo: the study end to end on the small default", ""]
    total = sum(run.timings.values())
    lines += [
        "Real Open-I chest X-ray reports (Indiana University collection, CC BY-NC-ND 4.0, read from the "
        "`torchxrayvision` wheel) paired with synthetic radiographs whose findings follow each report's "
        "MeSH labels; a small MAIRA-2-shaped model trained here; a Matryoshka BatchTopK SAE trained with "
        "SAELens's runner on its layer activations; features, dashboards, explanations and steering.",
        "",
        f"Total time {total / 60:.1f} min: "
        + ", ".join(
            f"{k.split(' ', 1)[1].split(':')[0]} {v:.0f} s" for k, v in run.timings.items()
        ),  # fmt: skip
        "",
        "## Data",
        "",
        "| studies with findings | train | held out | " + " | ".join(f["data"]["labels"]) + " |",
        "|---|---|---|" + "---|" * len(f["data"]["labels"]),
        f"| {f['data']['studies']} | {f['data']['train']} | {f['data']['held_out']} | "
        + " | ".join(str(v) for v in f["data"]["labels"].values())
        + " |",
        "",
        "## Model",
        "",
        f"Checkpoint (hub layout, loads with `HookedMaira2.from_pretrained`): `{f['model']['checkpoint']}`",
        "",
    ]
    gen, ref = f["model"].get("generated", {}), f["model"].get("reference", {})
    if gen:
        lines += [
            "Held-out studies: how often the model's greedy findings mention each finding, for studies "
            "with it (positives) and without it (negatives); the reference reports' rates for comparison. "
            f"{f['model']['distinct_generations']} distinct reports out of {f['model']['n_generated']}.",
            "",
            "| finding | positives | generated, positives | generated, negatives "
            "| reference, positives | reference, negatives |",
            "|---|---|---|---|---|---|",
        ]
        for name, g in gen.items():
            r = ref.get(name, {})
            lines.append(
                f"| {name} | {g['n_positives']} | {g['positives']:.0%} | {g['negatives']:.0%} "
                f"| {r.get('positives', float('nan')):.0%} | {r.get('negatives', float('nan')):.0%} |"
            )
        lines.append("")
    probes = f["model"].get("probes") or {}
    for hook, groups in probes.items():
        names = list(next(iter(groups.values())))
        lines += [
            f"Linear probes on `{hook}` (balanced accuracy on held-out studies, by position group): "
            "what the SAE can find there.",
            "",
            "| positions | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
            *[f"| {g} | " + " | ".join(f"{row[n]:.2f}" for n in names) + " |"
              for g, row in groups.items()],
            "",
        ]  # fmt: skip
    for png in map(Path, f["model"].get("plots", [])):
        lines += [f"![{png.stem}]({_rel(png, out)})", ""]

    m = f["sae"]["metrics"]
    curve_png = _plot_sae_curve(f.get("sae_curve", []), out / "sae_training.png")

    def metric(key: str) -> str:
        hits = [v for k, v in m.items() if k.endswith(key)]
        return f"{hits[0]:.3g}" if hits else "n/a"

    lines += [
        "## SAE",
        "",
        f"Hook `{f['cache']['hook']}`; {f['cache']['train']:,} training positions (the study's selection: "
        f"first/last image tokens and variable text); weights in `{_rel(f['sae']['path'], out)}`.",
        "",
        "| explained variance | L0 | CE loss score | KL score | dead latents |",
        "|---|---|---|---|---|",
        f"| {metric('explained_variance')} | {metric('/l0')} | {metric('ce_loss_score')} | {metric('kl_div_score')} "
        f"| {metric('dead_latents_fraction')} |",
        "",
        "(SAELens's evals with the SAE spliced into the model on whole multimodal prompts. Its CE loss "
        "averages over every position, most of which predict image or prompt tokens the model was never "
        "trained to predict, so the KL score is the informative one here.)",
        "",
    ]
    if curve_png:
        lines += [f"![SAE training]({_rel(curve_png, out)})", ""]

    dash = f["dashboards"]
    lines += [
        "## Features that detect each finding",
        "",
        "Per study, a feature's score is its largest activation over the prompt's first/last image tokens "
        "and variable text (never the report). Threshold chosen on training studies; balanced accuracy on "
        f"held-out studies. Explanations by the {dash['backend']} autointerp backend, with their detection "
        "scores (balanced accuracy of the explanation predicting activation).",
        "",
        "| finding | feature | train BA | held-out BA | explanation | detection score |",
        "|---|---|---|---|---|---|",
    ]
    viewer_dir = Path(dash["viewer"]).parent
    for finding, rows in f["detectors"].items():
        for d in rows:
            feat = d["feature"]
            exp = dash["explanations"].get(feat, "")
            score = dash["detection_scores"].get(feat)
            page = viewer_dir / "features" / f"{feat}.html"
            link = f"[{feat}]({_rel(page, out)})" if page.is_file() else str(feat)
            lines.append(f"| {finding} | {link} | {d['train_balanced_accuracy']:.2f} | "
                         f"{d['held_out_balanced_accuracy']:.2f} | {exp.replace('|', '/')} | "
                         f"{'' if score is None else f'{score:.2f}'} |")  # fmt: skip
    lines += ["", f"Dashboards: [offline viewer]({_rel(dash['viewer'], out)}) (feature pages draw the feature over "
              "the X-ray); Neuronpedia export and SAE-Dashboard batches in "
              + ", ".join(f"`{_rel(p, out)}`" for p in dash["exports"]) + ".", ""]  # fmt: skip

    st = f["steering"]
    lines += [
        "## Steering",
        "",
        f"Feature {st['feature']} ({st.get('kind', 'detector')}) added along its decoder direction at "
        "generated positions, on held-out studies without effusion; reports labelled by the rule-based "
        "labeller. Candidates: features that read effusion (detectors on image/prompt positions and on "
        "report positions) and features whose direction raises the effusion words' logits (writers); "
        "the one with the highest mean mention rate in a short sweep on training studies without "
        "effusion was kept.",
        "",
        "| candidate | kind | mean mention rate (screening) |",
        "|---|---|---|",
        *[
            f"| {c} | {st.get('kinds', {}).get(c, 'detector')} | "
            + (f"{st['screening'][c]:.0%}" if c in st.get("screening", {}) else "not screened")
            + " |"
            for c in st.get("candidates", [st["feature"]])
        ],  # fmt: skip
        "",
        "| coefficient | reports mentioning pleural effusion |",
        "|---|---|",
        *[f"| {c:g} | {r:.0%} |" for c, r in st["rates"]],
        "",
        f"![steering]({_rel(st['plot'], out)})",
        "",
    ]
    for coef, reports in st["examples"].items():
        lines.append(f"- coefficient {coef:g}: " + " / ".join(f"“{r[:300]}”" for r in reports[:2]))
    lines.append("")
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    (out / "summary.json").write_text(
        json.dumps({"timings": run.timings, **f}, indent=1, default=str)
    )
    return path
