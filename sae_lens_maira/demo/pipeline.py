"""`make demo`: the study end to end on the embedded default, through the project's own commands.

1. data: Open-I reports (real, from the torchxrayvision wheel) + synthetic radiographs -> two
   manifests (train / held-out, split by a hash of the study id);
2. model: the small MAIRA-2-shaped model trained on the training manifest (cached);
3. ``cache``: layer activations with the study's token selection, for both splits;
4. ``train``: a Matryoshka BatchTopK SAE through SAELens's runner, from the training cache;
5. features that detect each finding: thresholds chosen on training studies, balanced accuracy on
   held-out studies;
6. ``dashboards collect|export|viewer`` and ``autointerp`` (offline backend unless an endpoint is
   configured) on held-out studies;
7. ``steer``: the effusion feature's direction on held-out studies without effusion;
8. a summary report (markdown + plots) in the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from sae_lens_maira.demo.small_model import DemoModelConfig

logger = logging.getLogger(__name__)

FINDINGS = ("cardiomegaly", "pleural_effusion", "devices")


@dataclass
class DemoRun:
    """Where everything went, and what each step measured (the summary is written from this)."""

    out: Path
    timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    def step(self, name: str) -> _Step:
        return _Step(self, name)


class _Step:
    def __init__(self, run: DemoRun, name: str) -> None:
        self.run, self.name = run, name

    def __enter__(self) -> _Step:
        print(f"\n== {self.name} ==", flush=True)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        self.run.timings[self.name] = elapsed
        print(f"   ({elapsed:.0f} s)", flush=True)


def default_config() -> dict[str, Any]:
    return yaml.safe_load(
        resources.files("sae_lens_maira.configs").joinpath("small_default.yaml").read_text()
    )


def default_cache_dir() -> Path:
    """The project's cache root (wheel, renders, models): the parent of the Open-I wheel's folder."""
    from sae_lens_maira.data.openi import default_cache_dir as openi_dir

    return openi_dir().parent


def write_manifest(studies, path: Path) -> Path:
    """Studies as a JSONL manifest (image paths + sections + labels): the route users take."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for s in studies:
        rec = {
            "study_id": s.study_id,
            "frontal": str(s.frontal),
            "lateral": str(s.lateral) if s.lateral is not None else None,
            "indication": s.indication,
            "comparison": s.comparison,
            "findings": s.findings,
            "labels": s.labels,
        }
        lines.append(json.dumps(rec))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_demo(
    out_dir: str | Path = "outputs/demo",
    *,
    config: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    wheel: str | Path | None = None,
    max_studies: int | None = None,
    model_config: DemoModelConfig | None = None,
    model_budget_s: float | None = 900.0,
) -> Path:
    """Run the demo; returns the summary's path.

    ``max_studies`` (training studies; a third as many held out) and ``model_config`` (e.g.
    ``DemoModelConfig.tiny()``) shrink it for tests; ``model_budget_s`` bounds model training.
    """
    cfg = config or default_config()
    demo = cfg.get("demo", {})
    findings = tuple(demo.get("findings", FINDINGS))
    out = Path(out_dir).resolve()
    for stale in ("activations", "checkpoints", "sae", "dashboards", "steering", "wandb", "model"):
        shutil.rmtree(
            out / stale, ignore_errors=True
        )  # a rerun starts clean (the model stays cached)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    from sae_lens_maira.demo.small_model import reproducible_torch

    threads = demo.get("threads", 2)
    with reproducible_torch(int(threads) if threads else None):
        return _run_steps(out, cfg, demo, findings, cache, wheel, max_studies, model_config,
                          model_budget_s)  # fmt: skip


def _run_steps(
    out: Path,
    cfg: dict[str, Any],
    demo: dict[str, Any],
    findings: tuple[str, ...],
    cache: Path,
    wheel: str | Path | None,
    max_studies: int | None,
    model_config: DemoModelConfig | None,
    model_budget_s: float | None,
) -> Path:
    from sae_lens_maira.experiment import Experiment

    run = DemoRun(out)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", str(out))
    os.environ.setdefault("WANDB_SILENT", "true")

    with run.step("1/8 data: Open-I reports + synthetic radiographs"):
        from sae_lens_maira.demo.studies import demo_studies

        studies = demo_studies(
            cache, wheel=wheel, image_size=int(demo.get("image_size", 112)),
            held_out_fraction=float(demo.get("held_out_fraction", 0.2)),
            workers=min(2, os.cpu_count() or 1), progress=True,
        )  # fmt: skip
        if max_studies:  # a reduced run: the first studies of each split, findings kept in
            studies.train = _subset(studies.train, max_studies, findings)
            studies.held_out = _subset(studies.held_out, max(8, max_studies // 3), findings)
        train, held_out = studies.train, studies.held_out
        train_manifest = write_manifest(train, out / "data" / "openi_train.jsonl")
        held_manifest = write_manifest(held_out, out / "data" / "openi_held_out.jsonl")
        counts = studies.counts()
        run.facts["data"] = {
            "studies": len(train) + len(held_out),
            "train": len(train),
            "held_out": len(held_out),
            "labels": {f: sum(counts[k][f] for k in counts) for f in findings},
            "counts": counts,
            "wheel": Path(studies.source).name,
        }
        print(f"   {len(train) + len(held_out)} studies with findings ({len(train)} train, "
              f"{len(held_out)} held out); "
              + ", ".join(f"{f}: {n}" for f, n in run.facts["data"]["labels"].items()))  # fmt: skip

    with run.step("2/8 model: small MAIRA-2 trained on the training reports (cached)"):
        from sae_lens_maira.demo.held_out import evaluate_held_out
        from sae_lens_maira.demo.model_cache import ensure_demo_model

        checkpoint = ensure_demo_model(
            cache, studies=studies, config=model_config, budget_s=model_budget_s,
            seed=int(demo.get("model_seed", 0)), progress=True,
        )  # fmt: skip
        report = evaluate_held_out(
            checkpoint, studies, findings=findings, hooks=(cfg["cache"]["hook_name"],),
            n_negatives=int(demo.get("held_out_negatives", 200)), progress=True,
        )  # fmt: skip
        model_dir = out / "model"  # the model's own plots, copied so the summary stays portable
        model_dir.mkdir(exist_ok=True)
        for png in Path(checkpoint).glob("*.png"):
            shutil.copy2(png, model_dir / png.name)
        run.facts["model"] = {
            "checkpoint": str(checkpoint),
            "plots": [str(p) for p in sorted(model_dir.glob("*.png"))],
            "generated": report["generated"],
            "reference": report["reference"],
            "probes": report["probes"],
            "distinct_generations": report["distinct_generations"],
            "n_generated": report["n_generated"],
            "samples": report["samples"][:3],
        }

    cfg = json.loads(json.dumps(cfg))  # our own copy
    cfg["model"]["checkpoint"] = str(checkpoint)
    cfg["data"]["path"] = str(train_manifest)
    (out / "experiment.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    exp = Experiment.from_yaml(out / "experiment.yaml")
    held_exp = Experiment.from_yaml(
        out / "experiment.yaml",
        {"data.path": str(held_manifest), "cache.output_dir": "activations/held_out"},
    )

    with run.step("3/8 cache: layer activations with the study's token selection"):
        from sae_lens_maira.activations.commands import cache_from_experiment

        for e in (exp, held_exp):
            result = cache_from_experiment(e)
            print(
                f"   {result.path.name}: {result.n_positions:,} positions from {result.n_studies} studies"
            )
        run.facts["cache"] = {
            "hook": cfg["cache"]["hook_name"],
            "train": json.loads((exp.path("activations/train") / "cache_info.json").read_text())[
                "n_positions"
            ],
            "held_out": json.loads(
                (exp.path("activations/held_out") / "cache_info.json").read_text()
            )["n_positions"],
        }

    with run.step("4/8 train: Matryoshka BatchTopK SAE through SAELens's runner"):
        from sae_lens_maira.training.runner import train_sae

        result = train_sae(exp)
        from sae_lens import SAE

        # what users load: the inference SAE (global threshold), not the training object
        sae = SAE.load_from_disk(str(result.output_path))
        run.facts["sae"] = {"path": str(result.output_path), "metrics": result.metrics}
        run.facts["sae_curve"] = checkpoint_curve(exp, result.checkpoint_path)

    with run.step("5/8 features that detect each finding (held-out studies)"):
        run.facts["detectors"] = detect_findings(
            exp, held_exp, sae, findings, int(demo.get("top_features_per_finding", 3))
        )

    with run.step("6/8 dashboards, viewer and automated interpretability"):
        run.facts["dashboards"] = dashboards_and_autointerp(
            held_exp, run, int(demo.get("autointerp_top_features", 64))
        )

    with run.step("7/8 steer: the effusion feature's direction on studies without effusion"):
        run.facts["steering"] = steer_effusion(held_exp, run, held_out, exp, train, sae)

    with run.step("8/8 summary"):
        from sae_lens_maira.demo.summary import write_summary

        summary = write_summary(run)
        print(f"   {summary}")
    return summary


def _subset(studies: list, n: int, findings: tuple[str, ...]) -> list:
    """``n`` studies with every finding's positives represented (first come, deterministic)."""
    chosen: list = []
    for f in findings:
        chosen += [s for s in studies if s.labels.get(f) and s not in chosen][: max(2, n // 8)]
    chosen += [s for s in studies if s not in chosen][: max(0, n - len(chosen))]
    return chosen[:n] if len(chosen) > n else chosen


def checkpoint_curve(exp, checkpoints: Path | None) -> list[dict[str, float]]:
    """Explained variance and L0 of every saved checkpoint on held-in cached activations."""
    import datasets
    import torch
    from sae_lens import SAE

    if checkpoints is None:
        return []
    hook = exp.section("cache")["hook_name"]
    ds = datasets.load_from_disk(str(exp.path("activations/train"))).with_format(
        "torch", columns=[hook]
    )
    x = ds[: min(len(ds), 64)][hook].reshape(-1, ds[0][hook].shape[-1]).float()
    curve = []
    for ck in sorted(
        (p for p in checkpoints.glob("*/*") if p.name.isdigit()), key=lambda p: int(p.name)
    ):
        sae = SAE.load_from_disk(str(ck))
        with torch.no_grad():
            feats = sae.encode(x)
            recon = sae.decode(feats)
        ev = 1 - (x - recon).pow(2).sum() / (x - x.mean(0)).pow(2).sum()
        curve.append(
            {
                "tokens": int(ck.name),
                "explained_variance": float(ev),
                "l0": float((feats > 0).sum(-1).float().mean()),
            }
        )
    return curve


def detect_findings(exp, held_exp, sae, findings, top: int) -> dict[str, Any]:
    import datasets

    from sae_lens_maira.analysis.finding_features import (
        finding_detectors,
        labels_of,
        study_maxima_from_cache,
    )

    hook = exp.section("cache")["hook_name"]
    train_studies, held_studies = exp.load_studies(), held_exp.load_studies()
    train_max = study_maxima_from_cache(
        datasets.load_from_disk(str(exp.path("activations/train"))), sae, hook, len(train_studies)
    )
    held_max = study_maxima_from_cache(
        datasets.load_from_disk(str(exp.path("activations/held_out"))), sae, hook, len(held_studies)
    )
    detectors = finding_detectors(
        train_max,
        labels_of(train_studies, findings),
        held_max,
        labels_of(held_studies, findings),
        top=top,
    )
    for f, rows in detectors.items():
        best = rows[0]
        print(f"   {f}: feature {best.feature} (threshold {best.threshold:.3g}) balanced accuracy "
              f"{best.train_balanced_accuracy:.2f} train / {best.held_out_balanced_accuracy:.2f} held out")  # fmt: skip
    return {f: [d.to_dict() for d in rows] for f, rows in detectors.items()}


def dashboards_and_autointerp(held_exp, run: DemoRun, n_explain: int) -> dict[str, Any]:
    from sae_lens_maira.autointerp.commands import autointerp
    from sae_lens_maira.dashboards.commands import collect, export, viewer

    stats_dir = collect(held_exp, run.out / "dashboards" / "stats")
    finding_feats = sorted({r["feature"] for rows in run.facts["detectors"].values() for r in rows})
    from sae_lens_maira.dashboards.stats_store import FeatureStats

    stats = FeatureStats.load(stats_dir)
    density = stats.tensors["nonzero"].float()
    busiest = [
        int(i) for i in density.argsort(descending=True)[:n_explain].tolist() if density[i] > 0
    ]
    chosen = sorted(set(finding_feats) | set(busiest))
    spec = ",".join(map(str, chosen))
    backend = "openai" if os.environ.get("SAE_LENS_MAIRA_LLM_MODEL") else "offline"
    explanations = run.out / "dashboards" / "explanations.jsonl"
    exps = autointerp(
        stats_dir, explanations, backend=backend, model=os.environ.get("SAE_LENS_MAIRA_LLM_MODEL"),
        base_url=os.environ.get("SAE_LENS_MAIRA_LLM_BASE_URL", "https://api.openai.com/v1"), features=spec,
    )  # fmt: skip
    model_cfg = json.loads((Path(held_exp.checkpoint()) / "config.json").read_text())["text_config"]
    exported = export(stats_dir, run.out / "dashboards", explanations=explanations, features=spec,
                      n_layers=int(model_cfg["num_hidden_layers"]), d_model=int(model_cfg["hidden_size"]))  # fmt: skip
    page = viewer(
        stats_dir, run.out / "dashboards" / "viewer", explanations=explanations, features=spec
    )
    scores = {int(f): e.score for f, e in exps.items()}
    return {
        "stats": str(stats_dir),
        "viewer": str(page),
        "exports": [str(p) for p in exported],
        "explanations": {int(f): e.text for f, e in exps.items()},
        "detection_scores": scores,
        "backend": backend,
        "n_features": len(chosen),
    }


def steer_effusion(
    held_exp, run: DemoRun, held_out, train_exp=None, train=None, sae=None
) -> dict[str, Any]:
    """Sweep the effusion feature's direction on held-out studies without effusion.

    Which feature: candidates are the effusion detectors on image/prompt positions and on report
    positions (features that read effusion) and the features whose decoder direction raises the
    effusion words' logits (features that write it: a reader need not be a writer); a short
    sweep on training studies without effusion picks the one with the highest mean mention rate.
    """
    from sae_lens_maira.experiment import Experiment
    from sae_lens_maira.steering.candidates import finding_token_ids, writer_features
    from sae_lens_maira.steering.commands import steer

    candidates = [d["feature"] for d in run.facts["detectors"]["pleural_effusion"]]
    screening: dict[int, float] = {}
    kinds = dict.fromkeys(candidates, "image/prompt detector")
    if train_exp is not None and train and sae is not None:
        spec = train_exp.section("demo", required=False)
        model, processor = train_exp.load_model(), train_exp.load_processor()
        report = report_detectors(train_exp, sae, "pleural_effusion",
                                  top=int(spec.get("steer_report_candidates", 8)))  # fmt: skip
        try:
            words = finding_token_ids(processor.tokenizer, "pleural_effusion")
        except ValueError as err:  # a tiny vocabulary may not spell the finding in one token
            print(f"   no writer candidates: {err}")
            words = []
        writers = (
            writer_features(
                sae.W_dec, model.W_U, words, top=int(spec.get("steer_writer_candidates", 5))
            )  # fmt: skip
            if words
            else []
        )
        for kind, feats in (("report detector", report), ("writes effusion", writers)):
            for f in feats:
                kinds.setdefault(f, kind)
        candidates = list(kinds)
        negatives = [s for s in train if not s.labels.get("pleural_effusion")]
        screening = screen_steering(train_exp, model, processor, sae, candidates, negatives)
    best = max(candidates, key=lambda f: screening.get(f, 0.0)) if screening else candidates[0]
    negatives = [s for s in held_out if not s.labels.get("pleural_effusion")]
    n = int(held_exp.section("steer").get("n_studies", 48))
    path = write_manifest(negatives[:n], run.out / "data" / "steer.jsonl")
    steer_exp = Experiment.from_yaml(run.out / "experiment.yaml", {"data.path": str(path)})
    result, folder = steer(steer_exp, [best], "pleural_effusion")
    rates = result.mention_rate()
    for coef, rate in rates:
        print(f"   coefficient {coef:g}: {rate:.0%} of reports mention pleural effusion")
    return {"feature": best, "kind": kinds[best], "rates": rates,
            "plot": str(folder / "steering.png"), "folder": str(folder),
            "candidates": candidates, "kinds": kinds, "screening": screening,
            "examples": {p.coefficient: _examples(p.reports, "pleural_effusion") for p in result.points}}  # fmt: skip


def report_detectors(exp, sae, finding: str, top: int = 3) -> list[int]:
    """Features whose maximum over the *report* positions of training studies detects ``finding``."""
    import datasets

    from sae_lens_maira.analysis.finding_features import (
        finding_detectors,
        labels_of,
        study_maxima_from_cache,
    )
    from sae_lens_maira.processing.roles import Role

    hook = exp.section("cache")["hook_name"]
    studies = exp.load_studies()
    scores = study_maxima_from_cache(
        datasets.load_from_disk(str(exp.path("activations/train"))), sae, hook, len(studies),
        roles=(Role.REPORT,),
    )  # fmt: skip
    rows = finding_detectors(scores, labels_of(studies, [finding]), top=top)[finding]
    return [r.feature for r in rows]


def screen_steering(
    exp, model, processor, sae, features: list[int], studies, n_studies: int = 12
) -> dict[int, float]:
    """Each feature's mean effusion-mention rate over the sweep's non-zero coefficients on a few
    training studies (the mean favours features that work before the text degrades); the
    held-out sweep is then run with the winner only."""
    from sae_lens_maira.steering.hooks import feature_directions
    from sae_lens_maira.steering.sweep import steering_sweep

    spec = exp.section("steer")
    coefficients = [c for c in spec.get("coefficients", [10, 20, 30]) if c]
    out = {}
    for f in features:
        result = steering_sweep(
            model, processor, studies[:n_studies], direction=feature_directions(sae.W_dec, f),
            hook_name=spec.get("hook_name") or exp.section("cache")["hook_name"],
            coefficients=coefficients, finding="pleural_effusion", features=[f],
            positions=spec.get("positions", "generated"), batch_size=int(spec.get("batch_size", 4)),
            max_new_tokens=int(spec.get("max_new_tokens", 48)),
        )  # fmt: skip
        rates = [rate for _, rate in result.mention_rate()]
        out[f] = sum(rates) / len(rates)
        print(f"   screening feature {f} on training studies: effusion mentioned in "
              f"{' / '.join(f'{r:.0%}' for r in rates)} of reports")  # fmt: skip
    return out


def _examples(reports: list[str], finding: str, n: int = 2) -> list[str]:
    """Up to ``n`` reports, those that mention ``finding`` (positively) first."""
    from sae_lens_maira.data.labeller import Status, label_report

    positive = [r for r in reports if label_report(r, [finding])[finding] is Status.POSITIVE]
    return (positive + [r for r in reports if r not in positive])[:n]
