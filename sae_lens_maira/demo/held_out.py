"""The small model's report card on held-out studies: generated mentions and linear probes.

Two questions the demo's acceptance depends on: does the model *write* the findings its images
show (mention rates of greedy generations on held-out positives vs. negatives, next to the
reference reports' rates), and does the residual stream the SAE reads *carry* them (probe
balanced accuracy per position group)? Results are stored next to the model
(``held_out_eval.json``) and reused while the model and the requested evaluation are unchanged.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from sae_lens_maira.analysis.probes import probe_findings
from sae_lens_maira.data.study import Study
from sae_lens_maira.demo.evaluation import mention_summary, sample_records
from sae_lens_maira.demo.pipeline import default_config
from sae_lens_maira.demo.studies import DEMO_FINDINGS, DemoStudies
from sae_lens_maira.model.checkpoint import SAFE_SINGLE
from sae_lens_maira.model.generation import generate_findings
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.processor import Maira2Processor

EVAL_NAME = "held_out_eval.json"
#: The hook the demo's SAEs read: the shipped config's ``cache.hook_name`` (the residual stream
#: after the second of four blocks); a run reads its own config's.
DEMO_HOOK: str = default_config()["cache"]["hook_name"]


def _sample(studies: Sequence[Study], findings: Sequence[str], n_negatives: int, seed: int):
    """Every study positive for a finding, plus ``n_negatives`` random others (fixed seed)."""
    pos = [s for s in studies if any(s.labels.get(f) for f in findings)]
    neg = [s for s in studies if not any(s.labels.get(f) for f in findings)]
    neg = random.Random(seed).sample(neg, min(n_negatives, len(neg)))
    return pos + neg


def evaluate_held_out(
    model_dir: str | Path,
    studies: DemoStudies,
    *,
    findings: Sequence[str] = DEMO_FINDINGS,
    hooks: Sequence[str] = (DEMO_HOOK, "blocks.2.hook_resid_post"),
    n_negatives: int = 200,
    probe_train_negatives: int = 600,
    max_new_tokens: int = 96,
    batch_size: int = 16,
    seed: int = 0,
    threads: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Mention rates (generated vs reference) and probe accuracies on ``studies.held_out``.

    Generation covers every held-out positive and ``n_negatives`` negatives; probes train on
    every training positive and ``probe_train_negatives`` training negatives and are scored on
    all held-out studies.
    """
    model_dir = Path(model_dir)
    request = {
        "findings": list(findings), "hooks": list(hooks), "n_negatives": n_negatives,
        "probe_train_negatives": probe_train_negatives, "max_new_tokens": max_new_tokens,
        "seed": seed, "held_out": [s.study_id for s in studies.held_out],
        "model": (model_dir / SAFE_SINGLE).stat().st_mtime_ns
        if (model_dir / SAFE_SINGLE).exists() else None,
    }  # fmt: skip
    path = model_dir / EVAL_NAME
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
            if cached.get("request") == request:
                return cached
        except (OSError, json.JSONDecodeError):
            pass
    from sae_lens_maira.training.determinism import reproducible_torch

    with reproducible_torch(threads):
        model = HookedMaira2.from_pretrained(model_dir, device="cpu")
        processor = Maira2Processor.from_pretrained(model_dir)
        t = time.perf_counter()
        gen_set = _sample(studies.held_out, findings, n_negatives, seed)
        texts = generate_findings(
            model, processor, gen_set, max_new_tokens=max_new_tokens, batch_size=batch_size,
            progress=progress,
        )  # fmt: skip
        generated = mention_summary(texts, gen_set, findings)
        reference = mention_summary([s.findings or "" for s in gen_set], gen_set, findings)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        probe_train = _sample(studies.train, findings, probe_train_negatives, seed)
        probes = probe_findings(
            model, processor, probe_train, studies.held_out, hooks, findings,
            batch_size=batch_size,
        )  # fmt: skip
        probe_s = time.perf_counter() - t
    result = {
        "request": request,
        "generated": generated,
        "reference": reference,
        "distinct_generations": len(set(texts)),
        "n_generated": len(texts),
        "probes": probes,
        "timings": {"generation_s": gen_s, "probes_s": probe_s},
        "samples": sample_records(gen_set, texts, findings),
    }
    path.write_text(json.dumps(result, indent=2))
    if log:
        for f in findings:
            g, r = generated[f], reference[f]
            log(
                f"held out, {f}: generated reports mention it for {g['positives']:.0%} of "
                f"{g['n_positives']} positives and {g['negatives']:.0%} of negatives "
                f"(reference reports: {r['positives']:.0%} / {r['negatives']:.0%})"
            )
    return result
