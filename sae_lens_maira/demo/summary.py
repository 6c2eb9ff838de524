"""The demo's summary: one markdown page with tables and plots, next to everything it links."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

#: The summary's machine-readable facts beside ``summary.md`` (:func:`.pipeline.demo_verdict` reads
#: its report card).
FACTS_NAME = "summary.json"


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


def report_card_lines(card: dict | None) -> list[str]:
    """The verdict first (failures named), then every target with value, threshold, verdict."""
    if not card:
        return []
    lines = []
    if card["verdict"] == "PASS":
        lines += [f"**Verdict: PASS** — all {len(card['targets'])} targets met.", ""]
    else:
        lines += [f"**Verdict: FAIL** — {card['reason']}", "",
                  "The figures below are what this run measured; where a target failed, the study "
                  "did not work on this run and its results should not be read as findings.", ""]  # fmt: skip
    lines += ["## Report card", "", "| target | value | threshold | verdict |", "|---|---|---|---|"]
    for t in card["targets"].values():
        v = t["value"]
        value = "not measured" if v is None else f"{v:.3g}"
        th = t["threshold"]
        bound = f"{th[0]:.3g} to {th[1]:.3g}" if t["op"] == "between" else f"{t['op']} {th:.3g}"
        lines.append(f"| {t['description']} | {value} | {bound} | **{t['verdict']}** |")
    return lines + [""]


def steering_lines(st: dict) -> list[str]:
    finding = st["finding"].replace("_", " ")
    add, rem = st["add"], st["remove"]
    where, supp = st.get("where", "image"), st.get("suppress_where", "image+generated")
    lines = [
        "## Steering",
        "",
        f"Feature {st['feature']} ({st['kind']}) clamped at `{st['hook']}`: its activation set to a multiple "
        f"of its mean activation on training studies with {finding} ({st['scale']:.3g}) at `{where}` "
        f"positions; and, the other way, clamped to zero at `{supp}` positions on studies whose report "
        "states it. "
        + ("(`boundaryN`: the one generated token that ends the N-th sentence, where the model picks "
           "what the next sentence states.) " if "boundary" in where else "")
        + "Reports labelled by the rule-based labeller. "
        f"A report is fluent when no four words repeat and {finding} is not named three times or more. "
        "Candidates: features that read the finding (detectors on image/prompt and on report positions) and "
        "features whose direction raises its words' logits (writers), screened on training studies by their "
        "effect on the labelled outcome in both directions.",
        "",
        "| candidate | kind | fluent mention rate when clamped on (best multiple, placement) | removed when clamped to 0 |",
        "|---|---|---|---|",
    ]
    for c in st.get("candidates", []):
        sc = st["screening"].get(c) or st["screening"].get(str(c)) or {}
        rem_rate = sc.get("remove")
        lines.append(f"| {c} | {st['kinds'].get(c, st['kinds'].get(str(c), ''))} | {sc.get('add', 0):.0%} "
                     f"(x{sc.get('add_coefficient', 0):g}, `{sc.get('where', '')}`) | "
                     + ("n/a" if rem_rate is None else f"{rem_rate:.0%}") + " |")  # fmt: skip
    lines += [
        "",
        f"Held-out studies without {finding} ({add['n']}): unsteered, {add['unsteered_mention_rate']:.0%} "
        f"state it; disfluent reports {add['unsteered_disfluent']:.0%}; mean log-likelihood per token under "
        f"the unsteered model {add['unsteered_log_likelihood']:.2f}.",
        "",
        "| multiple | clamped value | state it | state it, fluent | repeated phrase | word stuffed in |",
        "|---|---|---|---|---|---|",
        *[f"| x{p['coefficient']:g} | {p['value']:.3g} | {p['mention_rate']:.0%} | {p['fluent_mention_rate']:.0%} "
          f"| {p['share_repeated_phrase']:.0%} | {p['share_stuffed']:.0%} |" for p in add["points"]],
        "",
        f"At x{add['best_coefficient']:g} the steered reports' mean log-likelihood per token under the unsteered "
        f"model is {add['best_log_likelihood']:.2f} (unsteered reports: {add['unsteered_log_likelihood']:.2f}).",
        "",
    ]  # fmt: skip
    if rem.get("removed_rate") is not None:
        lines += [f"Held-out studies with {finding} whose unsteered report states it ({rem['n']}): clamping the "
                  f"feature to zero removes the mention from {rem['removed_rate']:.0%} (disfluent reports "
                  f"{rem.get('share_disfluent', 0):.0%}).", ""]  # fmt: skip
    else:
        lines += [f"No held-out study with {finding} had a report stating it, so suppression was not measured.", ""]
    lines.append("- unsteered: " + " / ".join(f"“{r[:300]}”" for r in add.get("unsteered_examples", [])))
    for coef, reports in add["examples"].items():
        lines.append(f"- x{float(coef):g}: " + " / ".join(f"“{r[:300]}”" for r in reports[:2]))
    for before, after in rem.get("examples", []):
        lines.append(f"- suppressed: “{before[:200]}” → “{after[:200]}”")
    return lines + [""]


def write_summary(run: Any) -> Path:
    out: Path = run.out
    f = run.facts
    lines = ["# sae-lens-maira demo: the study end to end on the small default", ""]
    lines += report_card_lines(f.get("report_card"))
    total = sum(run.timings.values())
    cpu = getattr(run, "cpu_timings", {})
    reused = set(getattr(run, "reused", ()))
    lines += [
        "Real Open-I chest X-ray reports (Indiana University collection, CC BY-NC-ND 4.0, read from the "
        "`torchxrayvision` wheel) paired with synthetic radiographs whose findings follow each report's "
        "MeSH labels; a small MAIRA-2-shaped model trained here; a Matryoshka BatchTopK SAE trained with "
        "SAELens's runner on its layer activations; features, dashboards, explanations and steering.",
        "",
        f"Total time {total / 60:.1f} min wall, {sum(cpu.values()) / 60:.1f} min CPU: "
        + ", ".join(
            f"{k.split(' ', 1)[1].split(':')[0]} {v:.0f} s"
            + (f" ({cpu[k]:.0f} s CPU)" if k in cpu else "")
            + (" reused" if k in reused else "")
            for k, v in run.timings.items()
        )
        + (" (reused: results of a finished run with the same inputs, settings, code and "
           "libraries, from the cache)" if reused else ""),  # fmt: skip
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
    health = f["sae"].get("health", {})
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
        "On its training positions (the study's selection, the distribution it was fit to; "
        f"{health.get('n_positions', 0):,} positions): explained variance "
        f"{health.get('explained_variance', float('nan')):.3f}, L0 {health.get('l0', float('nan')):.1f} "
        f"(k = {f['sae'].get('k')}), dead latents {health.get('dead_fraction', float('nan')):.1%}.",
        "",
        "| SAELens eval | explained variance | L0 | CE loss score | KL score | dead latents |",
        "|---|---|---|---|---|---|",
        f"| whole prompts | {metric('explained_variance')} | {metric('/l0')} | {metric('ce_loss_score')} | {metric('kl_div_score')} "
        f"| {metric('dead_latents_fraction')} |",
        "",
        "(SAELens's evals splice the SAE into the model on whole multimodal prompts, mostly intermediate "
        "image tokens and boilerplate the SAE never trained on, so they are not its health figures. Its CE "
        "loss averages over every position, most of which predict image or prompt tokens the model was never "
        "trained to predict, so the KL score is the informative one there.)",
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
            # feature keys are ints in a fresh run's facts, strings once read back from JSON
            exp = dash["explanations"].get(feat, dash["explanations"].get(str(feat), ""))
            score = dash["detection_scores"].get(feat, dash["detection_scores"].get(str(feat)))
            page = viewer_dir / "features" / f"{feat}.html"
            link = f"[{feat}]({_rel(page, out)})" if page.is_file() else str(feat)
            held = d["held_out_balanced_accuracy"]  # None: the held-out studies lack a class
            held_text = "not scored" if held is None else f"{held:.2f}"
            lines.append(f"| {finding} | {link} | {d['train_balanced_accuracy']:.2f} | "
                         f"{held_text} | {exp.replace('|', '/')} | "
                         f"{'' if score is None else f'{score:.2f}'} |")  # fmt: skip
    lines += ["", f"Dashboards: [offline viewer]({_rel(dash['viewer'], out)}) (feature pages draw the feature over "
              "the X-ray); Neuronpedia export and SAE-Dashboard batches in "
              + ", ".join(f"`{_rel(p, out)}`" for p in dash["exports"]) + ".", ""]  # fmt: skip

    lines += steering_lines(f["steering"])
    path = out / "summary.md"
    path.write_text("\n".join(lines))
    card = f.get("report_card")
    (out / FACTS_NAME).write_text(
        json.dumps({"report_card": card, "timings": run.timings,
                    "cpu_timings": cpu, "reused_steps": sorted(reused),
                    **{k: v for k, v in f.items() if k != "report_card"}}, indent=1, default=str)
    )  # fmt: skip
    return path
