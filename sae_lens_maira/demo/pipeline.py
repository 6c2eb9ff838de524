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
7. steering with the ``steer.finding`` feature in both directions: clamped on held-out studies
   without the finding (does the report now state it, fluently?) and suppressed on studies whose
   report states it (does the mention go?);
8. a summary report (markdown + plots) opening with the report card: every target with its
   value, threshold and PASS / FAIL (:mod:`.targets`); ``sae-lens-maira demo`` exits non-zero
   when one fails.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from sae_lens_maira.demo.small_model import DemoModelConfig

logger = logging.getLogger(__name__)


@dataclass
class DemoRun:
    """Where everything went, and what each step measured (the summary is written from this)."""

    out: Path
    timings: dict[str, float] = field(default_factory=dict)
    #: CPU seconds per step (user + sys of this process and its finished children)
    cpu_timings: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    #: steps whose results were reused from the results cache (same inputs, code and libraries)
    reused: list[str] = field(default_factory=list)
    current: str = ""  # the step running now

    def step(self, name: str) -> _Step:
        return _Step(self, name)


class _Step:
    def __init__(self, run: DemoRun, name: str) -> None:
        self.run, self.name = run, name

    def __enter__(self) -> _Step:
        print(f"\n== {self.name} ==", flush=True)
        self.run.current = self.name
        self.start, self.cpu_start = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        elapsed = time.perf_counter() - self.start
        cpu = _cpu_seconds() - self.cpu_start
        self.run.timings[self.name] = elapsed
        self.run.cpu_timings[self.name] = cpu
        reused = " (reused)" if self.name in self.run.reused else ""
        print(f"   ({elapsed:.0f} s wall, {cpu:.0f} s CPU{reused})", flush=True)


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its waited-for children (renderers)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def default_config() -> dict[str, Any]:
    return yaml.safe_load(
        resources.files("sae_lens_maira.configs").joinpath("small_default.yaml").read_text()
    )


def top_folder(relative: str) -> str:
    """The first folder of a path the config gives relative to the output folder."""
    return PurePosixPath(relative).parts[0]


def step_folders(cfg: dict[str, Any]) -> dict[str, list[str]]:
    """The output folder's subfolders each step writes, from the config's paths (defaults
    filled in): what the results cache keeps per step."""
    from sae_lens_maira.experiment import Experiment

    exp = Experiment(cfg)
    train, steer = exp.typed("train"), exp.typed("steer")
    return {
        "cache": [top_folder(cfg["cache"]["output_dir"])],
        "sae": [top_folder(train.output_dir), top_folder(train.checkpoint_dir)],
        "dashboards": [top_folder(exp.typed("dashboards").out)],
        "steering": [top_folder(steer.out)],
    }


def output_folders(cfg: dict[str, Any]) -> list[str]:
    """What a rerun clears first: every step's folders plus the demo's own ``model`` (plots)
    and ``wandb`` (offline logs)."""
    folders = [f for step in step_folders(cfg).values() for f in step]
    return list(dict.fromkeys(folders + ["wandb", "model"]))


def held_out_cache_dir(cfg: dict[str, Any]) -> str:
    """The held-out split's activation cache: ``held_out`` beside ``cache.output_dir``."""
    return str(PurePosixPath(cfg["cache"]["output_dir"]).with_name("held_out"))


def cache_path(exp: Any) -> Path:
    """The activation cache an experiment's ``cache:`` section writes (and SAELens reads)."""
    return exp.path(exp.section("cache")["output_dir"])


def steer_finding_of(cfg: dict[str, Any]) -> str:
    """``steer.finding``, or the steering settings' default when it is left out or null."""
    from sae_lens_maira.steering.settings import SteerSettings

    return SteerSettings.from_section(cfg.get("steer")).finding or SteerSettings.finding


def model_config_for(settings: Any, base: DemoModelConfig | None = None) -> DemoModelConfig:
    """The small model's training settings (``base``, default :class:`DemoModelConfig`) with the
    findings and image size of the demo's settings: ``demo.findings`` and ``demo.image_size`` are
    the one source of both, so a run on other findings trains (and keys) its model on them."""
    from sae_lens_maira.demo.small_model import DemoModelConfig

    return dataclasses.replace(
        base or DemoModelConfig(), findings=tuple(settings.findings), image_size=settings.image_size
    )


def _score(value: float | None) -> str:
    """A balanced accuracy for the log; None (one class in the studies) is no score."""
    return "not scored" if value is None else f"{value:.2f}"


def run_demo(
    out_dir: str | Path = "outputs/demo",
    *,
    config: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    wheel: str | Path | None = None,
    max_studies: int | None = None,
    model_config: DemoModelConfig | None = None,
) -> Path:
    """Run the demo; returns the summary's path (its verdict: :func:`demo_verdict`).

    Settings come from ``config`` (default: the shipped ``small_default.yaml``); its ``demo:``
    section is read by :class:`~sae_lens_maira.demo_settings.DemoSettings`. ``max_studies``
    (training studies; a third as many held out) and ``model_config`` (e.g.
    ``DemoModelConfig.tiny()``) shrink it for tests. Nothing depends on elapsed time: every
    training runs a fixed number of steps.
    """
    from sae_lens_maira.demo_settings import DemoSettings

    cfg = config or default_config()
    settings = DemoSettings.from_section(cfg.get("demo"))
    out = Path(out_dir).resolve()
    for stale in output_folders(cfg):  # a rerun starts clean (the model stays cached)
        shutil.rmtree(out / stale, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    from sae_lens_maira.cache_dirs import default_cache_dir

    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    from sae_lens_maira.training.determinism import reproducible_torch

    with reproducible_torch(settings.threads):
        return _run_steps(out, cfg, settings, cache, wheel, max_studies, model_config)


def demo_verdict(summary: str | Path) -> tuple[bool, str]:
    """(passed, one-line reason) from a summary written by :func:`run_demo`."""
    from sae_lens_maira.demo.summary import FACTS_NAME

    card = json.loads((Path(summary).parent / FACTS_NAME).read_text())["report_card"]
    return card["verdict"] == "PASS", card["reason"]


def _run_steps(
    out: Path,
    cfg: dict[str, Any],
    settings: Any,
    cache: Path,
    wheel: str | Path | None,
    max_studies: int | None,
    model_config: DemoModelConfig | None,
) -> Path:
    from sae_lens_maira.experiment import Experiment

    findings = tuple(settings.findings)
    run = DemoRun(out)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_DIR", str(out))
    os.environ.setdefault("WANDB_SILENT", "true")

    with run.step("1/8 data: Open-I reports + synthetic radiographs"):
        from sae_lens_maira.data.manifest import write_manifest
        from sae_lens_maira.demo.studies import demo_studies

        studies = demo_studies(
            cache, wheel=wheel, image_size=settings.image_size,
            held_out_fraction=settings.held_out_fraction,
            workers=min(2, os.cpu_count() or 1), progress=True,
        )  # fmt: skip
        if max_studies:  # a reduced run: the first studies of each split, findings kept in
            studies.train = _subset(studies.train, max_studies, findings)
            studies.held_out = _subset(studies.held_out, max(8, max_studies // 3), findings)
        train, held_out = studies.train, studies.held_out
        train_manifest = write_manifest(train, out / "data" / "openi_train.jsonl")
        held_manifest = write_manifest(held_out, out / "data" / "openi_held_out.jsonl")
        counts = studies.counts(findings)
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
        from sae_lens_maira.demo.model_cache import ensure_demo_model, model_status

        checkpoint = ensure_demo_model(
            cache, studies=studies, config=model_config_for(settings, model_config),
            seed=settings.model_seed,
            progress=True,
        )  # fmt: skip
        report = evaluate_held_out(
            checkpoint, studies, findings=findings, hooks=(cfg["cache"]["hook_name"],),
            n_negatives=settings.held_out_negatives, progress=True,
        )  # fmt: skip
        model_dir = out / "model"  # the model's own plots, copied so the summary stays portable
        model_dir.mkdir(exist_ok=True)
        for png in Path(checkpoint).glob("*.png"):
            shutil.copy2(png, model_dir / png.name)
        run.facts["model"] = {
            "checkpoint": str(checkpoint),
            "status": model_status(checkpoint),
            "plots": [str(p) for p in sorted(model_dir.glob("*.png"))],
            "generated": report["generated"],
            "reference": report["reference"],
            "probes": report["probes"],
            "distinct_generations": report["distinct_generations"],
            "n_generated": report["n_generated"],
            "samples": report["samples"][:3],
        }
        _record_model_verdict(checkpoint, report["generated"], findings)

    cfg = json.loads(json.dumps(cfg))  # our own copy
    cfg["model"]["checkpoint"] = str(checkpoint)
    cfg["data"]["path"] = str(train_manifest)
    (out / "experiment.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    exp = Experiment.from_yaml(out / "experiment.yaml")
    held_exp = Experiment.from_yaml(
        out / "experiment.yaml",
        {"data.path": str(held_manifest), "cache.output_dir": held_out_cache_dir(cfg)},
    )

    results = StepResults(run, cache, _results_base(checkpoint, cfg, settings, train_manifest, held_manifest))
    folders = step_folders(cfg)

    with run.step("3/8 cache: layer activations with the study's token selection"):
        if not results.reuse("cache", {"cache": cfg["cache"]}):
            from sae_lens_maira.activations.cache import INFO_FILE
            from sae_lens_maira.activations.commands import cache_from_experiment

            for e in (exp, held_exp):
                result = cache_from_experiment(e)
                assert result is not None  # one process: rank 0 returns the merged result
                print(
                    f"   {result.path.name}: {result.n_positions:,} positions from {result.n_studies} studies"
                )
            info = {
                split: json.loads((cache_path(e) / INFO_FILE).read_text())
                for split, e in (("train", exp), ("held_out", held_exp))
            }
            run.facts["cache"] = {"hook": cfg["cache"]["hook_name"],
                                  **{k: v["n_positions"] for k, v in info.items()}}  # fmt: skip
            results.keep(folders["cache"], ["cache"])

    with run.step("4/8 train: Matryoshka BatchTopK SAE through SAELens's runner"):
        from sae_lens import SAE

        if not results.reuse("sae", {"sae": cfg["sae"], "train": cfg["train"],
                                     "health_positions": settings.health_positions}):  # fmt: skip
            import datasets

            from sae_lens_maira.training.cached_evals import checkpoint_curve, sae_health
            from sae_lens_maira.training.commands import train_sae

            result = train_sae(exp, overwrite=True)  # the results cache decided to retrain
            # what users load: the inference SAE (global threshold), not the training object
            sae = SAE.load_from_disk(str(result.output_path))
            hook = cfg["cache"]["hook_name"]
            train_cache = datasets.Dataset.load_from_disk(str(cache_path(exp)))
            run.facts["sae"] = {"path": str(result.output_path), "metrics": result.metrics,
                                "k": int(cfg["sae"]["k"]),
                                "health": sae_health(train_cache, sae, hook, settings.health_positions)}  # fmt: skip
            run.facts["sae_curve"] = checkpoint_curve(train_cache, hook, result.checkpoint_path)
            results.keep(folders["sae"], ["sae", "sae_curve"])
        sae = SAE.load_from_disk(run.facts["sae"]["path"])
        h = run.facts["sae"]["health"]
        print(f"   on its training positions: explained variance {h['explained_variance']:.3f}, "
              f"L0 {h['l0']:.1f} (k {cfg['sae']['k']}), dead latents {h['dead_fraction']:.1%}")  # fmt: skip

    with run.step("5/8 features that detect each finding (held-out studies)"):
        if not results.reuse("detectors", {"findings": list(findings),
                                           "top": settings.top_features_per_finding}):  # fmt: skip
            run.facts["detectors"] = detect_findings(
                exp, held_exp, sae, findings, settings.top_features_per_finding
            )
            results.keep([], ["detectors"])

    with run.step("6/8 dashboards, viewer and automated interpretability"):
        llm = os.environ.get("SAE_LENS_MAIRA_LLM_MODEL")  # an LLM's answers are not reproducible
        if llm or not results.reuse("dashboards", {"dashboards": cfg["dashboards"],
                                                   "n_explain": settings.autointerp_top_features}):  # fmt: skip
            run.facts["dashboards"] = dashboards_and_autointerp(
                held_exp, run, settings.autointerp_top_features
            )
            if not llm:
                results.keep(folders["dashboards"], ["dashboards"])

    finding = steer_finding_of(cfg)
    with run.step(f"7/8 steer: the {finding} feature, both directions, on held-out studies"):
        if not results.reuse("steering", {"steer": cfg.get("steer"), "demo": dataclasses.asdict(settings)}):
            from sae_lens_maira.demo.steering_study import steer_finding

            run.facts["steering"] = steer_finding(
                exp, held_exp, run, sae, train, held_out, finding, settings
            )
            results.keep(folders["steering"], ["steering"])

    with run.step("8/8 summary"):
        from sae_lens_maira.demo.summary import write_summary

        run.facts["report_card"] = report_card(run.facts, findings).to_dict()
        summary = write_summary(run)
        card = run.facts["report_card"]
        print(f"   {summary}\n   verdict: {card['verdict']}" + (f" ({card['reason']})" if card["reason"] else ""))  # fmt: skip
    return summary


def _results_base(checkpoint: Path, cfg: dict[str, Any], settings: Any, *manifests: Path) -> dict[str, Any]:
    """What every later step's results depend on besides its own settings: the model's weights
    and files, the manifests' contents, the model/data settings, the package source, the
    libraries and the thread count (:mod:`sae_lens_maira.results_cache`)."""
    from sae_lens_maira.results_cache import digests, environment, package_fingerprint

    model_files = [p for p in sorted(Path(checkpoint).iterdir())
                   if p.is_file() and p.suffix != ".png" and p.name not in model_notes()]  # fmt: skip
    return {
        "model": digests(model_files),
        "manifests": digests(manifests),
        "model_settings": {k: v for k, v in cfg["model"].items() if k != "checkpoint"},
        "data_settings": {k: v for k, v in cfg["data"].items() if k != "path"},
        "code": package_fingerprint(),
        "environment": environment(),
        "threads": settings.threads,
    }


def model_notes() -> tuple[str, ...]:
    """Files the demo writes beside the model's own (training notes with timings, the cache
    marker, the held-out evaluation): not part of what defines the model."""
    from sae_lens_maira.demo.held_out import EVAL_NAME
    from sae_lens_maira.demo.model_cache import KEY_FILE
    from sae_lens_maira.demo.small_model import SUMMARY_NAME

    return (SUMMARY_NAME, KEY_FILE, EVAL_NAME)


class StepResults:
    """The demo's steps 3-7 through :class:`~sae_lens_maira.results_cache.ResultsCache`: each
    step's key chains the previous step's, so a change anywhere upstream reruns what follows."""

    def __init__(self, run: DemoRun, cache: Path, base: dict[str, Any]) -> None:
        from sae_lens_maira.results_cache import ResultsCache

        self.run, self.store = run, ResultsCache(Path(cache) / "results")
        self.chain = base
        self.step: tuple[str, str] | None = None

    def reuse(self, name: str, settings: dict[str, Any]) -> bool:
        """Restore step ``name``'s stored results for these settings; False: run it, then keep()."""
        from sae_lens_maira.results_cache import results_key

        key = results_key({"step": name, "settings": settings, "after": self.chain})
        self.chain, self.step = {"previous": key}, (name, key)
        facts = self.store.restore(name, key, self.run.out)
        if facts is None:
            return False
        self.run.facts.update(facts)
        self.run.reused.append(self.run.current)
        print(f"   reused: same inputs, settings, code and libraries as a finished run ({key[:12]})")
        return True

    def keep(self, folders: Sequence[str], facts: Sequence[str]) -> None:
        """Store the step just run (its output folders and facts) under its key."""
        assert self.step is not None
        name, key = self.step
        kept = {k: json.loads(json.dumps(self.run.facts[k], default=str)) for k in facts}
        self.run.facts.update(kept)  # a fresh run sees the facts as a reused one will (JSON)
        self.store.store(name, key, self.run.out, folders, kept)


def report_card(facts: dict[str, Any], findings: Sequence[str]):
    """Every target of the study with its value, threshold and verdict (:mod:`.targets`)."""
    from sae_lens_maira.demo import targets

    card = targets.ReportCard()
    targets.model_targets(card, facts["model"]["generated"], findings)
    targets.detector_targets(card, facts["detectors"])
    targets.sae_targets(card, facts["sae"]["health"], facts["sae"]["k"])
    targets.steering_targets(card, facts["steering"])
    return card


def _record_model_verdict(checkpoint: Path, generated: dict, findings: Sequence[str]) -> None:
    """A model that misses its held-out mention targets is marked failed in the cache."""
    from sae_lens_maira.demo import targets
    from sae_lens_maira.demo.model_cache import mark_failed, model_status

    card = targets.ReportCard()
    targets.model_targets(card, generated, findings)
    if not card.passed and model_status(checkpoint)["passed"]:
        mark_failed(checkpoint, "missed a mention target on held-out studies: " + card.reason())


def _subset(studies: list, n: int, findings: tuple[str, ...]) -> list:
    """``n`` studies with every finding's positives represented (first come, deterministic)."""
    chosen: list = []
    for f in findings:
        chosen += [s for s in studies if s.labels.get(f) and s not in chosen][: max(2, n // 8)]
    chosen += [s for s in studies if s not in chosen][: max(0, n - len(chosen))]
    return chosen[:n] if len(chosen) > n else chosen


def detect_findings(exp, held_exp, sae, findings, top: int) -> dict[str, Any]:
    """Step 5: each finding's best detectors on the two splits' caches, logged and as facts."""
    import datasets

    from sae_lens_maira.analysis.finding_features import detectors_from_caches

    detectors = detectors_from_caches(
        datasets.Dataset.load_from_disk(str(cache_path(exp))),
        datasets.Dataset.load_from_disk(str(cache_path(held_exp))),
        sae, exp.section("cache")["hook_name"], exp.load_studies(), held_exp.load_studies(),
        findings, top=top,
    )  # fmt: skip
    for f, rows in detectors.items():
        best = rows[0]
        print(f"   {f}: feature {best.feature} (threshold {best.threshold:.3g}) balanced accuracy "
              f"{best.train_balanced_accuracy:.2f} train / {_score(best.held_out_balanced_accuracy)} held out")  # fmt: skip
    return {f: [d.to_dict() for d in rows] for f, rows in detectors.items()}


def dashboards_and_autointerp(held_exp, run: DemoRun, n_explain: int) -> dict[str, Any]:
    from sae_lens_maira.autointerp.commands import autointerp
    from sae_lens_maira.dashboards.commands import collect, export, viewer

    stats_dir = collect(held_exp, held_exp.path(held_exp.section("dashboards")["out"]))
    dashboards = stats_dir.parent  # exports, explanations and the viewer go beside the statistics
    finding_feats = sorted({r["feature"] for rows in run.facts["detectors"].values() for r in rows})
    from sae_lens_maira.dashboards.feature_stats import FeatureStats

    stats = FeatureStats.load(stats_dir)
    density = stats.tensors["nonzero"].float()
    busiest = [
        int(i) for i in density.argsort(descending=True)[:n_explain].tolist() if density[i] > 0
    ]
    chosen = sorted(set(finding_feats) | set(busiest))
    spec = ",".join(map(str, chosen))
    backend = "openai" if os.environ.get("SAE_LENS_MAIRA_LLM_MODEL") else "offline"
    explanations = dashboards / "explanations.jsonl"
    exps = autointerp(
        stats_dir, explanations, backend=backend, model=os.environ.get("SAE_LENS_MAIRA_LLM_MODEL"),
        base_url=os.environ.get("SAE_LENS_MAIRA_LLM_BASE_URL", "https://api.openai.com/v1"), features=spec,
    )  # fmt: skip
    from sae_lens_maira.checkpoint_config import CONFIG_NAME

    model_cfg = json.loads((Path(held_exp.checkpoint()) / CONFIG_NAME).read_text())["text_config"]
    from sae_lens_maira.dashboards.neuronpedia_rules import EXPLANATION_MODELS

    # Neuronpedia shows explanations only from models it has registered: the offline backend's
    # stay in the viewer, an LLM's go into the export when Neuronpedia knows that model
    llm = os.environ.get("SAE_LENS_MAIRA_LLM_MODEL")
    np_explanations = explanations if llm in EXPLANATION_MODELS else None
    exported = export(stats_dir, dashboards, explanations=np_explanations, features=spec,
                      explanation_model=llm if np_explanations else None,
                      n_layers=int(model_cfg["num_hidden_layers"]), d_model=int(model_cfg["hidden_size"]))  # fmt: skip
    page = viewer(
        stats_dir, dashboards / "viewer", explanations=explanations, features=spec
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
