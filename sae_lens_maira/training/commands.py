"""Train an SAE on MAIRA-2 with SAELens's own ``LanguageModelSAETrainingRunner``.

The runner gets HookedMaira2 as ``override_model`` and the studies as a pretokenized dataset of
virtual image tokens (:mod:`sae_lens_maira.activations.saelens_bridge`) as ``override_dataset``.
Training reads the activation cache (the study's token selection) with
``use_cached_activations``; without a cache it streams the same selection live (``cache.selection``,
through :class:`SelectionActivationsStore`). Evals (CE loss recovered, KL, explained variance, L0,
dead latents), during training and at the end, run SAELens's ``run_evals`` on the multimodal
prompts with the SAE spliced into MAIRA-2 and measure at the training positions only; the report
(``eval_metrics.json``'s ``positions``) names the selection and counts the positions. Checkpoints
and wandb are SAELens's (wandb off unless ``train.wandb``, offline without a login: :mod:`wandb_setup`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from sae_lens import (
    LanguageModelSAERunnerConfig,
    LanguageModelSAETrainingRunner,
    LoggingConfig,
)
from sae_lens.registry import get_sae_training_class

from sae_lens_maira.activations.cache import INFO_FILE, CacheConfig
from sae_lens_maira.activations.sae_fit import check_sae_fits
from sae_lens_maira.activations.saelens_bridge import studies_to_token_dataset
from sae_lens_maira.activations.selection_store import (
    SelectionActivationsStore,
    SelectionEvaluator,
    flat_metrics,
    run_selection_evals,
)
from sae_lens_maira.compat.sae_lens import (
    evaluator_store,
    expected_messages_silenced,
    replace_activations_store,
    replace_evaluator,
    runner_interruptions_as_keyboard_interrupt,
)
from sae_lens_maira.data.skips import SKIPS_FILE, SkipCollector, SkippedStudy, announce
from sae_lens_maira.experiment import Experiment
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.model.image_bank import ImageBank
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.training.checkpoints import (
    describe_incomplete,
    latest_checkpoint,
    mark_checkpoints_complete,
)
from sae_lens_maira.training.nonfinite import NonFiniteGuard
from sae_lens_maira.training.wandb_setup import WandbStatus, resolve_wandb, wandb_environment

logger = logging.getLogger(__name__)

#: Keys of the ``train`` section passed straight to LanguageModelSAERunnerConfig.
RUNNER_KEYS = (
    "training_tokens", "train_batch_size_tokens", "lr", "lr_scheduler_name", "lr_warm_up_steps",
    "lr_decay_steps", "lr_end", "adam_beta1", "adam_beta2", "store_batch_size_prompts", "n_batches_in_buffer",
    "n_checkpoints", "n_eval_batches", "eval_batch_size_prompts", "seed", "dead_feature_window",
    "feature_sampling_window", "autocast", "autocast_lm", "compile_sae", "activations_mixing_fraction",
)  # fmt: skip


def _runner_default(name: str) -> Any:
    """SAELens's own default for a runner field (one default per key: SAELens's)."""
    import dataclasses

    for f in dataclasses.fields(LanguageModelSAERunnerConfig):
        if f.name == name:
            return f.default
    raise KeyError(name)


@dataclass
class TrainResult:
    sae: Any
    output_path: Path
    checkpoint_path: Path | None
    metrics: dict[str, float]
    wandb: WandbStatus | None = None
    positions: dict[str, Any] | None = None  # the selection the evals measured on, and counts
    skipped_studies: list[SkippedStudy] = field(default_factory=list)


def training_sae_config(sae_spec: dict[str, Any], d_in: int, hook_name: str):
    """The SAELens training config for ``sae.architecture`` (any registered architecture)."""
    spec = dict(sae_spec)
    arch = spec.pop("architecture", "matryoshka")
    try:
        _, cfg_cls = get_sae_training_class(arch)
    except KeyError as err:
        raise ValueError(
            f"unknown SAE architecture {arch!r}; registered: see sae_lens.registry"
        ) from err
    spec.setdefault("d_in", d_in)  # an explicit d_in is kept, so a mismatch is reported, not hidden
    if "d_sae" not in spec:
        spec["d_sae"] = int(spec.pop("expansion_factor", 4)) * int(spec["d_in"])
    spec.pop("expansion_factor", None)
    from sae_lens.saes.sae import SAEMetadata

    return cfg_cls(**spec, metadata=SAEMetadata(hook_name=hook_name))


@expected_messages_silenced()  # SAELens's words on our deliberate choices, not per batch
def train_sae(
    exp: Experiment,
    *,
    model: HookedMaira2 | None = None,
    processor: Maira2Processor | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train, or with ``resume`` continue from the newest complete checkpoint. A finished SAE in
    ``train.output_dir`` is never replaced silently: that takes ``overwrite``."""
    exp.section("train")  # required
    train = exp.typed("train")
    refuse_to_replace(exp.path(train.output_dir), resume=resume, overwrite=overwrite)
    cache_spec = exp.section("cache", required=False)
    hook = str(train.hook_name or cache_spec.get("hook_name") or "")
    if not hook:
        raise ValueError("set train.hook_name (or cache.hook_name), e.g. blocks.15.hook_resid_post")
    model = model or exp.load_model()
    processor = processor or exp.load_processor()
    skips = SkipCollector()  # the source's missing files, then images that cannot be read
    studies = exp.load_studies(skips)
    n_listed = len(studies) + len(skips)
    sae_cfg = training_sae_config(exp.section("sae"), model.cfg.d_model, hook)
    check_sae_fits(sae_cfg, model, hook)

    use_cache = bool(train.use_cached_activations)
    cache_dir = exp.path(cache_spec.get("output_dir")) if use_cache else None
    if use_cache:
        if cache_dir is None or not (cache_dir / INFO_FILE).is_file():
            raise FileNotFoundError(
                f"no finished activation cache at {cache_dir}; run `sae-lens-maira cache --config ...` first "
                "or set train.use_cached_activations: false"
            )
        info = json.loads((cache_dir / INFO_FILE).read_text())
        if info["hook_name"] != hook or info["d_in"] != model.cfg.d_model:
            raise ValueError(
                f"the cache at {cache_dir} holds {info['hook_name']} (d_in {info['d_in']}), "
                f"but training reads {hook} (d_in {model.cfg.d_model}); rebuild the cache"
            )
        # SAELens reads store_batch_size_prompts rows at a time and fails deep inside with
        # a shape error when the cache holds fewer
        rows_per_read = int(
            train.store_batch_size_prompts or _runner_default("store_batch_size_prompts")
        )
        n_rows = int(info.get("n_rows", rows_per_read))
        if n_rows < rows_per_read:
            raise ValueError(
                f"the cache at {cache_dir} holds {n_rows} row(s) of {info['context_size']} "
                f"positions, fewer than train.store_batch_size_prompts ({rows_per_read}) rows "
                f"that each read takes; set train.store_batch_size_prompts: {max(n_rows, 1)}, "
                "or cache more studies or a smaller cache.context_size"
            )
    # one definition of the SAE's positions: what the cache holds, else cache.selection
    selection = (
        info["selection"] if use_cache else cache_spec.get("selection", _cache_default("selection"))
    )
    with_report = bool(cache_spec.get("with_report", _cache_default("with_report")))
    # evals always see whole prompts; the cache's rows are only a packing unit for training
    prompt_context = int(train.context_size or max_prompt_length(processor, studies, with_report))
    context_size = int(info["context_size"]) if use_cache else prompt_context

    runner_kwargs = {k: getattr(train, k) for k in RUNNER_KEYS if getattr(train, k) is not None}
    n_buffer = runner_kwargs.get("n_batches_in_buffer", _runner_default("n_batches_in_buffer"))
    batch_tokens = runner_kwargs.get(
        "train_batch_size_tokens", _runner_default("train_batch_size_tokens")
    )
    buffer = int(n_buffer) * context_size
    if buffer < int(batch_tokens):
        raise ValueError(
            f"train.n_batches_in_buffer x context_size = {buffer} positions cannot fill a training batch of "
            f"{batch_tokens}; raise n_batches_in_buffer or cache.context_size"
        )
    bank = ImageBank(preprocessor=processor.image_processor)
    dataset = studies_to_token_dataset(
        studies,
        processor,
        bank,
        d_vocab=model.cfg.d_vocab,
        context_size=prompt_context,
        skipped=skips,
        with_report=with_report,
        selection=selection,
    )
    skips.check_some_left(n_listed, "train")
    model.attach_image_bank(bank)

    out = exp.path(train.output_dir)
    checkpoints = exp.path(train.checkpoint_dir)
    resume_from = latest_checkpoint(checkpoints) if resume else None
    if resume and resume_from is None:
        torn = describe_incomplete(checkpoints) if checkpoints.is_dir() else []
        raise FileNotFoundError(
            f"--resume: no complete checkpoint under {checkpoints}"
            + (f" (incomplete: {'; '.join(torn[:3])})" if torn else "")
            + "; run `train` without --resume to start over"
        )
    wandb = resolve_wandb(bool(train.wandb), exp.path(train.wandb_dir))
    runner_kwargs.setdefault("lr_end", runner_kwargs.get("lr", _runner_default("lr")) / 10)
    device = exp.device()
    cfg = LanguageModelSAERunnerConfig(
        sae=sae_cfg,
        model_name=str(exp.typed("model").checkpoint),
        model_class_name="HookedMaira2",
        hook_name=hook,
        dataset_path="",
        is_dataset_tokenized=True,
        streaming=False,
        context_size=context_size,
        use_cached_activations=use_cache,
        cached_activations_path=str(cache_dir) if cache_dir else None,
        prepend_bos=False,
        exclude_special_tokens=[processor.pad_token_id],
        device=device,
        act_store_device=device,
        output_path=str(out),
        checkpoint_path=str(checkpoints),
        resume_from_checkpoint=str(resume_from) if resume_from else None,
        logger=LoggingConfig(
            log_to_wandb=wandb.enabled,
            wandb_project=str(train.wandb_project),
            run_name=train.run_name,
            wandb_log_frequency=int(train.wandb_log_frequency),
            eval_every_n_wandb_logs=int(train.eval_every_n_wandb_logs),
        ),
        **runner_kwargs,
    )
    if cfg.logger.log_to_wandb and resume_from is not None:
        cfg.logger.wandb_id = _wandb_id(resume_from)
    torch.manual_seed(cfg.seed)  # SAELens does not seed: `seed` makes init and shuffling repeat
    logger.info("%s", wandb.describe())
    with wandb_environment(wandb):
        runner = LanguageModelSAETrainingRunner(
            cfg, override_dataset=dataset, override_model=model
        )
    if not use_cache:  # train on the selection's positions, as the cache would hold them
        store = SelectionActivationsStore.from_config(model, cfg, override_dataset=dataset)
        assert isinstance(store, SelectionActivationsStore)  # cls(...), typed as the base class
        store.selection = selection
        replace_activations_store(runner, store)
    mark_checkpoints_complete(runner)
    guard = NonFiniteGuard(
        f"the activation cache at {cache_dir}"
        if use_cache
        else f"live {hook} activations of the studies",
        check_every=1
        if str(device).startswith("cpu")
        else int(train.nonfinite_check_every),
        skip_bad_batches=bool(train.skip_bad_batches),
    )
    guard.install(runner)
    constrain_trainer_optimizer(runner)
    evaluator = SelectionEvaluator(  # its own store: evals never advance training's rows
        model=model,
        activations_store=prompt_store(
            model, dataset, hook, prompt_context, processor.pad_token_id, cfg, selection
        ),
        eval_batch_size_prompts=cfg.eval_batch_size_prompts,
        n_eval_batches=cfg.n_eval_batches,
        model_kwargs={},
    )
    replace_evaluator(runner, evaluator)
    logger.info(
        "training %s on %s (%s tokens, context %d)",
        sae_cfg.architecture(),
        hook,
        cfg.training_tokens,
        context_size,
    )
    if overwrite:  # the old SAE stops counting as finished before the new one is trained
        (out / FINISHED_FILE).unlink(missing_ok=True)
    try:
        with wandb_environment(wandb), runner_interruptions_as_keyboard_interrupt():
            sae = runner.run()
    except KeyboardInterrupt:  # SAELens saved a checkpoint first (Ctrl-C, SIGTERM)
        raise KeyboardInterrupt(
            f"a checkpoint is under {checkpoints}; `train --resume` continues from it"
        ) from None
    logger.info("%s", wandb.describe())
    # the final evals measure the SAE as saved (inference form: per-position encoding, e.g. a
    # BatchTopK SAE's global threshold), so the figures hold for what users load
    from sae_lens import SAE

    saved = SAE.load_from_disk(str(out), device=str(device), dtype=str(cfg.dtype))
    metrics, positions = evaluate_on_store(runner, saved)
    logger.info("final evals on %s", positions)
    if guard.skip_bad_batches:
        metrics["training/skipped_nonfinite_batches"] = float(guard.skipped_batches)
    (out / FINISHED_FILE).write_text(json.dumps({**metrics, "positions": positions}, indent=1))
    report = skips.write(out / SKIPS_FILE, n_listed)
    if len(skips):
        announce(skips.summary(n_listed, report))
    return TrainResult(sae, out, checkpoints, metrics, wandb, positions, skips.items)


#: written last by :func:`train_sae`: its presence means the SAE in that folder is finished
FINISHED_FILE = "eval_metrics.json"


def refuse_to_replace(out: Path | None, *, resume: bool, overwrite: bool) -> None:
    """Rerunning ``train`` with the same config would train over a finished SAE (hours on
    MAIRA-2): stop before loading anything and say how to go on."""
    if out is None or resume or overwrite or not (out / FINISHED_FILE).is_file():
        return
    raise FileExistsError(
        f"an SAE is already trained in {out} ({FINISHED_FILE} is there); pass --overwrite to "
        "train it again and replace it, or set train.output_dir to a new folder"
    )


def constrain_trainer_optimizer(runner: LanguageModelSAETrainingRunner) -> None:
    """Attach the decoder renormalisation to the Adam that SAETrainer builds inside ``run()``:
    the runner hands its trainer to ``run_trainer_with_interruption_handling`` (a hook on that
    optimiser only, no process-wide optimiser hook)."""
    from sae_lens_maira.compat.sae_lens import wrap_runner_method
    from sae_lens_maira.saes.decoder_constraint import constrain_optimizer, wants_unit_norm_decoder

    def wrap(run_trainer: Any) -> Any:
        def constrained(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            if wants_unit_norm_decoder(trainer.sae):
                constrain_optimizer(trainer.optimizer, trainer.sae)
            return run_trainer(trainer, *args, **kwargs)

        return constrained

    wrap_runner_method(runner, "run_trainer_with_interruption_handling", wrap)


def evaluate_on_store(
    runner: LanguageModelSAETrainingRunner, sae: Any, n_batches: int = 4
) -> tuple[dict[str, float], dict[str, Any]]:
    """SAELens's evals on the multimodal prompts at the training positions: CE loss recovered,
    KL, explained variance, L0, dead latents; and which positions they were taken over."""
    from sae_lens.evals import EvalConfig

    cfg = EvalConfig(
        batch_size_prompts=runner.cfg.eval_batch_size_prompts or 2,
        n_eval_reconstruction_batches=n_batches,
        n_eval_sparsity_variance_batches=n_batches,
        compute_ce_loss=True,
        compute_kl=True,
        compute_l2_norms=True,
        compute_sparsity_metrics=True,
        compute_variance_metrics=True,
        compute_featurewise_density_statistics=True,
    )
    store = evaluator_store(runner)
    if not isinstance(store, SelectionActivationsStore):
        raise TypeError("the runner's evaluator must read a SelectionActivationsStore (see prompt_store)")
    metrics, feature_metrics, positions = run_selection_evals(sae, store, runner.model, cfg)
    flat = flat_metrics(metrics, groups=[g for g in metrics if g != "token_stats"])
    density = feature_metrics.get("feature_density")
    if density is not None:
        flat["sparsity/dead_latents_fraction"] = float(
            (torch.as_tensor(density) == 0).float().mean()
        )
    return flat, positions


def prompt_store(
    model: HookedMaira2,
    dataset: Any,
    hook: str,
    context: int,
    pad_id: int,
    cfg: LanguageModelSAERunnerConfig,
    selection: str | list[str] | None = None,
) -> SelectionActivationsStore:
    """A store over whole prompts (virtual image tokens, marked outside ``selection``), for evals."""
    return SelectionActivationsStore(
        selection=selection,
        model=model,
        dataset=dataset,
        streaming=False,
        hook_name=hook,
        hook_head_index=None,
        context_size=context,
        d_in=model.cfg.d_model,
        n_batches_in_buffer=2,
        total_training_tokens=cfg.training_tokens,
        store_batch_size_prompts=cfg.store_batch_size_prompts,
        train_batch_size_tokens=cfg.train_batch_size_tokens,
        prepend_bos=False,
        normalize_activations="none",
        device=torch.device(cfg.act_store_device or "cpu"),
        dtype=cfg.dtype,
        exclude_special_tokens=torch.tensor([pad_id]),
    )


def max_prompt_length(processor: Maira2Processor, studies: list, with_report: bool = True) -> int:
    return max(len(processor.encode_study(s, with_report=with_report)) for s in studies)


def _cache_default(name: str) -> Any:
    """CacheConfig's default for a cache key (the cache and uncached training share it)."""
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(CacheConfig)}[name]


def _wandb_id(checkpoint: Path) -> str | None:
    return checkpoint.parent.name or None
