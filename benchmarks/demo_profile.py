"""Where `make demo`'s CPU time goes: CPU seconds per unit of every stage, at the demo's shapes.

A full fresh demo takes too long to profile repeatedly on a shared machine, so this measures the
*CPU time* (user + sys of this process, which a busy machine inflates far less than wall time)
of a few units of each stage at the shipped settings' shapes and multiplies by the configured
counts: image-tower steps, report-text steps, findings-generation steps and validation evals
(model training), greedy reports (held-out evaluation, steering), forward passes of the
activation cache, SAE training steps. The model is the full-size small default, trained only
for the measured steps: its reports' lengths (recorded) are not the trained model's.

    python benchmarks/demo_profile.py --cache /tmp/demo-cache --out benchmarks/results/demo_profile.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def cpu() -> float:
    return time.process_time()


def per_unit(fn: Callable[[], Any], units: int) -> float:
    """CPU seconds per unit of ``fn`` (which does ``units`` units)."""
    t = cpu()
    fn()
    return (cpu() - t) / units


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", required=True, help="the demo cache (wheel, renders) to read studies from")
    ap.add_argument("--out", default="benchmarks/results/demo_profile.json")
    ap.add_argument("--steps", type=int, default=4, help="units measured per stage")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads (default: the demo's). Under contention 2 threads spin-wait "
                         "for each other and inflate CPU time; 1 thread measures the work itself")  # fmt: skip
    args = ap.parse_args()

    from sae_lens_maira.demo import lm_training as lm
    from sae_lens_maira.demo import vision_pretraining as vp
    from sae_lens_maira.demo.evaluation import evaluate_generation, evaluation_subset
    from sae_lens_maira.demo.pipeline import default_config, model_config_for
    from sae_lens_maira.demo.small_model import build_demo_model
    from sae_lens_maira.demo.studies import demo_studies
    from sae_lens_maira.demo.training_data import DemoTrainingSet, ReportStream
    from sae_lens_maira.demo_settings import DemoSettings
    from sae_lens_maira.model.generation import generate_findings
    from sae_lens_maira.training.determinism import reproducible_torch

    yaml_cfg = default_config()
    settings = DemoSettings.from_section(yaml_cfg["demo"])
    config = model_config_for(settings)
    if args.threads is not None:
        config = dataclasses.replace(config, threads=args.threads)
    n = args.steps
    res: dict[str, Any] = {"threads": config.threads, "units_measured": n,
                           "load_average_at_start": os.getloadavg()}  # fmt: skip
    with reproducible_torch(config.threads):
        t = cpu()
        studies = demo_studies(Path(args.cache), progress=False, image_size=settings.image_size,
                               held_out_fraction=settings.held_out_fraction)  # fmt: skip
        res["data_cpu_s (renders cached)"] = cpu() - t
        train, held = studies.train, studies.held_out
        model, processor = build_demo_model(config, train, seed=settings.model_seed)
        t = cpu()
        data = DemoTrainingSet(
            train, processor, findings=config.findings, positive_share=config.positive_share,
            max_extra_renders=config.max_extra_renders, max_copies_per_text=config.max_copies_per_text,
            mention_weight=config.mention_weight, seed=1, progress=False,
        )  # fmt: skip
        res["prepare_cpu_s"] = cpu() - t
        vp.init_vision_tower(model, seed=1)
        vp.pretrain_vision_tower(model, data.store, steps=1, batch_size=config.vision_batch_size,
                                 progress=False)  # fmt: skip
        res["vision_step_cpu_s"] = per_unit(
            lambda: vp.pretrain_vision_tower(model, data.store, steps=n,
                                             batch_size=config.vision_batch_size, progress=False), n)  # fmt: skip
        stream = ReportStream([s.findings or "" for s in train], processor.tokenizer,
                              seq_len=config.text_seq_len, max_copies_per_text=config.max_copies_per_text)  # fmt: skip
        res["text_step_cpu_s"] = per_unit(
            lambda: lm.pretrain_on_reports(model, stream, steps=n, batch_size=config.text_batch_size,
                                           warmup_steps=1, progress=False), n)  # fmt: skip
        sample = data.store.pixels(range(min(64, len(data.store))))
        lm.init_projector(model, sample, seed=1)
        res["lm_step_cpu_s"] = per_unit(
            lambda: lm.train_findings_generation(
                model, data, steps=n, batch_size=config.batch_size, warmup_steps=1,
                grounding_steps=1, normalized_mix=config.normalized_mix, ema_decay=config.ema_decay,
                reference_pixels=sample, eval_every=10**9, progress=False), n)  # fmt: skip
        val = evaluation_subset(held, config.findings, per_finding=config.eval_per_finding,
                                negatives=config.eval_negatives)  # fmt: skip
        res["validation_eval_cpu_s"] = per_unit(
            lambda: evaluate_generation(model, processor, val, config.findings,
                                        max_new_tokens=config.eval_max_new_tokens), 1)  # fmt: skip
        res["validation_eval_studies"] = len(val)
        batch = held[:16]
        for tokens in (48, 96):
            texts: list[str] = []
            res[f"report_cpu_s_{tokens}_tokens (batch 16)"] = per_unit(
                lambda tokens=tokens, texts=texts: texts.extend(generate_findings(
                    model, processor, batch, max_new_tokens=tokens, batch_size=16)), len(batch))  # fmt: skip
            res[f"report_mean_tokens_{tokens}"] = sum(
                len(processor.tokenizer(t)["input_ids"]) for t in texts) / len(texts)  # fmt: skip

        def forward() -> None:
            with torch.no_grad():
                b = processor(list(batch), padding_side="right", with_report=True)
                model(b.input_ids, pixel_values=b.pixel_values, attention_mask=b.attention_mask,
                      stop_at_layer=2)  # fmt: skip

        res["cache_forward_cpu_s_per_study"] = per_unit(forward, len(batch))

        from sae_lens.saes.sae import TrainStepInput

        from sae_lens_maira.saes import MatryoshkaTrainingSAE
        from sae_lens_maira.training.commands import training_sae_config

        sae_cfg = training_sae_config(yaml_cfg["sae"], model.cfg.d_model, yaml_cfg["cache"]["hook_name"])
        sae = MatryoshkaTrainingSAE(sae_cfg)
        opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
        sae.constrain_optimizer(opt)
        x = torch.randn(int(yaml_cfg["train"]["train_batch_size_tokens"]), model.cfg.d_model)

        def sae_steps() -> None:
            for _ in range(4 * n):
                out = sae.training_forward_pass(TrainStepInput(x, {}, None, 0, False))
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
                opt.step()
                opt.zero_grad()

        res["sae_step_cpu_s"] = per_unit(sae_steps, 4 * n)

    steer = yaml_cfg["steer"]
    counts = {
        "vision": (config.vision_steps, res["vision_step_cpu_s"]),
        "text": (config.text_steps, res["text_step_cpu_s"]),
        "findings generation": (config.lm_steps, res["lm_step_cpu_s"]),
        "validation evals": (config.lm_steps // config.eval_every, res["validation_eval_cpu_s"]),
        "held-out reports (<=96 tokens)": (
            sum(1 for s in held if any(s.labels.get(f) for f in config.findings)) + settings.held_out_negatives,
            res["report_cpu_s_96_tokens (batch 16)"],
        ),
        "cache forward": (len(train) + len(held), res["cache_forward_cpu_s_per_study"]),
        "SAE steps": (
            int(yaml_cfg["train"]["training_tokens"]) // int(yaml_cfg["train"]["train_batch_size_tokens"]),
            res["sae_step_cpu_s"],
        ),
        "steering reports (<=48 tokens, every candidate)": (_steering_reports(steer, settings),
                                                         res["report_cpu_s_48_tokens (batch 16)"]),
    }  # fmt: skip
    res["estimate_cpu_s"] = {k: {"units": u, "cpu_s_per_unit": c, "cpu_s": u * c} for k, (u, c) in counts.items()}
    res["estimate_cpu_s_total"] = sum(v["cpu_s"] for v in res["estimate_cpu_s"].values())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    for k, v in res["estimate_cpu_s"].items():
        print(f"{k:>44}: {v['units']:>6} x {v['cpu_s_per_unit']:.3f} s = {v['cpu_s'] / 60:6.1f} CPU min")
    print(f"{'total':>44}: {res['estimate_cpu_s_total'] / 60:.1f} CPU min (+ prepare {res['prepare_cpu_s']:.0f} s)")


def _steering_reports(steer: dict, settings: Any) -> int:
    """Reports the steering study generates at most (every candidate screened, every placement)."""
    coefs, where = len(steer["coefficients"]), len(steer["where"])
    candidates = 5 + settings.steer_report_candidates + settings.steer_writer_candidates
    screen = candidates * (where * coefs * settings.steer_screen_studies + 2 * settings.steer_screen_studies)
    screen += 2 * settings.steer_screen_studies  # the unsteered screening reports
    held = steer["n_studies"] * (2 + coefs) + steer["n_studies"]
    return screen + held


if __name__ == "__main__":
    main()
