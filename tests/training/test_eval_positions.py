"""Evals measure the SAE at the positions it is trained on: the token selection (issue 16 item 5).

The reference is computed by hand: each study through ``run_with_cache`` with its real pixels
(not the virtual image tokens SAELens drives the model with), the hook's activations taken at
exactly the selection's positions, the saved SAE applied, and EV / L0 / dead fraction / clean CE
worked out from their definitions. The same figures over every non-pad position differ.
"""

import pytest
import torch
from sae_lens import SAE
from sae_lens.training.activation_scaler import ActivationScaler

from sae_lens_maira.activations.saelens_bridge import studies_to_token_dataset
from sae_lens_maira.activations.selection import selection_mask
from sae_lens_maira.activations.selection_store import SelectionActivationsStore, SelectionEvaluator
from sae_lens_maira.model.image_bank import ImageBank
from sae_lens_maira.model.position_marks import (
    OUTSIDE_SELECTION,
    is_marked,
    mark_outside,
    strip_marks,
)
from sae_lens_maira.processing.images import ImageLoadError
from sae_lens_maira.processing.roles import Role
from sae_lens_maira.training.commands import max_prompt_length, prompt_store, train_sae
from tests.training.test_runner import HOOK, _exp

N_ROWS = 8  # evaluate_on_store: 4 batches x 2 prompts = the 8 readable studies, once


def _readable(exp, processor):
    out = []
    for s in exp.load_studies():
        try:
            processor.image_processor(list(processor.encode_study(s, with_report=True).images))
        except ImageLoadError:
            continue
        out.append(s)
    return out


@torch.no_grad()
def _reference(model, processor, studies, sae, keep_fn, context=None):
    """EV, L0, dead fraction, n positions and clean CE over the positions ``keep_fn`` picks.

    With ``context``, each prompt is right-padded to it as the eval rows are, so the last real
    token's loss (predicting a pad id, as SAELens counts it) is part of the CE too.
    """
    xs, losses = [], []
    for s in studies:
        batch = processor([s], with_report=True, padding_side="right")
        ids, roles = batch.input_ids, batch.roles
        if context is not None:
            n_pad = context - ids.shape[1]
            ids = torch.nn.functional.pad(ids, (0, n_pad), value=processor.pad_token_id)
            roles = torch.nn.functional.pad(roles, (0, n_pad), value=int(Role.PAD))
        loss, cache = model.run_with_cache(
            ids, pixel_values=batch.pixel_values, names_filter=[HOOK],
            return_type="loss", loss_per_token=True,
        )  # fmt: skip
        keep = keep_fn(roles[0])
        xs.append(cache[HOOK][0][keep])
        losses.append(loss[0][keep[:-1]])
    x = torch.cat(xs).double()
    feats = sae.encode(x.float()).double()
    recon = sae.decode(feats.float()).double()
    total_var = x.pow(2).sum(-1).mean() - x.mean(0).pow(2).sum()
    return {
        "ev": float(1 - (x - recon).pow(2).sum(-1).mean() / total_var),
        "l0": float((feats != 0).sum(-1).double().mean()),
        "dead": float(((feats != 0).sum(0) == 0).double().mean()),
        "n": len(x),
        "ce": float(torch.cat(losses).mean()),
    }


def _study_keep(roles):
    return selection_mask(roles, "study")


def _all_keep(roles):
    return roles != int(Role.PAD)


@pytest.fixture(scope="module", params=["cached", "uncached"])
def trained(request, tmp_path_factory, hub_checkpoint, manifest):
    tmp = tmp_path_factory.mktemp(request.param)
    cached = request.param == "cached"
    exp = _exp(tmp, hub_checkpoint, manifest, training_tokens=3_000, wandb=False,
               use_cached_activations=cached)  # fmt: skip
    exp.raw["sae"]["threshold_start_step"] = 2  # the saved SAE gets a real global threshold
    model, processor = exp.load_model(), exp.load_processor()
    if cached:
        from sae_lens_maira.activations.cache import CacheConfig, cache_activations

        spec = dict(exp.section("cache"), output_dir=str(exp.path("acts")))
        cache_activations(
            model, processor, exp.load_studies(), CacheConfig(**spec), show_progress=False
        )
    result = train_sae(exp, model=model, processor=processor)
    model.attach_image_bank(None)  # the reference runs on real pixels, not virtual ids
    saved = SAE.load_from_disk(str(result.output_path), device="cpu")
    return exp, model, processor, result, saved


def test_final_evals_measure_the_selection_positions(trained):
    exp, model, processor, result, saved = trained
    studies = _readable(exp, processor)
    assert len(studies) == N_ROWS
    context = max_prompt_length(processor, exp.load_studies())  # the eval rows' length
    ref = _reference(model, processor, studies, saved, _study_keep, context)
    m = result.metrics
    assert result.positions["selection"] == "study"
    assert (
        "image_middle" not in result.positions["roles"]
        and "image_first" in result.positions["roles"]
    )
    assert result.positions["sparsity_variance_positions"] == ref["n"]
    assert m["reconstruction_quality/explained_variance"] == pytest.approx(ref["ev"], abs=1e-4)
    assert m["sparsity/l0"] == pytest.approx(ref["l0"], abs=1e-4)
    assert m["sparsity/dead_latents_fraction"] == pytest.approx(ref["dead"], abs=1e-9)
    assert m["model_performance_preservation/ce_loss_without_sae"] == pytest.approx(
        ref["ce"], rel=1e-4
    )
    # over every non-pad position (SAELens's default) the figures are different ones
    everywhere = _reference(model, processor, studies, saved, _all_keep, context)
    assert everywhere["n"] > ref["n"]
    assert abs(everywhere["ev"] - ref["ev"]) > 1e-3 or abs(everywhere["l0"] - ref["l0"]) > 1e-2
    assert abs(everywhere["ce"] - ref["ce"]) > 1e-3
    import json

    report = json.loads((result.output_path / "eval_metrics.json").read_text())
    assert report["positions"] == result.positions


def test_training_time_evaluator_measures_the_selection_positions(trained):
    """SAELens's training-time evaluator, swapped for SelectionEvaluator, reads the same positions."""
    exp, model, processor, result, saved = trained
    studies = _readable(exp, processor)[:4]  # 2 batches x 2 prompts
    bank = ImageBank(preprocessor=processor.image_processor)
    context = max_prompt_length(processor, studies)
    ds = studies_to_token_dataset(studies, processor, bank, d_vocab=model.cfg.d_vocab,
                                  context_size=context, show_progress=False, selection="study")  # fmt: skip
    model.attach_image_bank(bank)
    try:
        cfg = type("Cfg", (), dict(training_tokens=1000, store_batch_size_prompts=2, train_batch_size_tokens=32,
                                   act_store_device="cpu", dtype="float32"))()  # fmt: skip
        store = prompt_store(model, ds, HOOK, context, processor.pad_token_id, cfg, "study")
        evaluator = SelectionEvaluator(model=model, activations_store=store, eval_batch_size_prompts=2,
                                       n_eval_batches=2, model_kwargs={})  # fmt: skip
        metrics = evaluator(saved, None, ActivationScaler())
        again = evaluator(saved, None, ActivationScaler())  # every eval reads the same rows
    finally:
        model.attach_image_bank(None)
    ref = _reference(model, processor, studies, saved, _study_keep)
    assert metrics["positions"]["sparsity_variance_positions"] == ref["n"]
    assert metrics["sparsity"]["l0"] == pytest.approx(ref["l0"], abs=1e-4)
    assert metrics["reconstruction_quality"]["explained_variance"] == pytest.approx(
        ref["ev"], abs=1e-4
    )
    assert again["sparsity"]["l0"] == metrics["sparsity"]["l0"]


def test_uncached_training_batches_hold_only_selected_positions(hub_checkpoint, manifest, tmp_path):
    """The uncached training store serves exactly the activations of the selected positions."""
    exp = _exp(tmp_path, hub_checkpoint, manifest)
    model, processor = exp.load_model(), exp.load_processor()
    studies = _readable(exp, processor)[:2]
    bank = ImageBank(preprocessor=processor.image_processor)
    context = max_prompt_length(processor, studies)
    ds = studies_to_token_dataset(studies, processor, bank, d_vocab=model.cfg.d_vocab,
                                  context_size=context, show_progress=False, selection="study")  # fmt: skip
    model.attach_image_bank(bank)
    cfg = type("Cfg", (), dict(training_tokens=1000, store_batch_size_prompts=2, train_batch_size_tokens=32,
                               act_store_device="cpu", dtype="float32"))()  # fmt: skip
    store = prompt_store(model, ds, HOOK, context, processor.pad_token_id, cfg, "study")
    served = store.get_filtered_llm_batch()
    model.attach_image_bank(None)
    with torch.no_grad():
        want = []
        for s in studies:
            batch = processor([s], with_report=True, padding_side="right")
            _, cache = model.run_with_cache(
                batch.input_ids, pixel_values=batch.pixel_values, names_filter=[HOOK]
            )
            want.append(cache[HOOK][0][_study_keep(batch.roles[0])])
    want = torch.cat(want)
    assert served.shape == want.shape and torch.allclose(served, want, atol=1e-5)


def test_marks_round_trip_and_match_saelens_ignore_lists():
    tokens = torch.tensor([[1, 5, 32300, 7]])
    keep = torch.tensor([[True, False, False, True]])
    marked = mark_outside(tokens, keep)
    assert torch.equal(is_marked(marked), ~keep) and torch.equal(strip_marks(marked), tokens)
    assert strip_marks(tokens) is tokens
    # SAELens's evals build their mask as `batch_tokens == token` for every ignored token
    ignore = [0, OUTSIDE_SELECTION]
    mask = ~torch.any(torch.stack([marked == t for t in ignore]), dim=0)
    assert torch.equal(mask, keep)
    with pytest.raises(ValueError, match="does not match"):
        mark_outside(tokens, keep[:, :2])


def test_selection_store_needs_no_marks_to_run_plain_rows(hub_checkpoint, manifest, tmp_path):
    """Rows without marks (selection=None) behave as SAELens's store does: every non-pad position."""
    exp = _exp(tmp_path, hub_checkpoint, manifest)
    model, processor = exp.load_model(), exp.load_processor()
    studies = _readable(exp, processor)[:2]
    bank = ImageBank(preprocessor=processor.image_processor)
    context = max_prompt_length(processor, studies)
    ds = studies_to_token_dataset(studies, processor, bank, d_vocab=model.cfg.d_vocab,
                                  context_size=context, show_progress=False)  # fmt: skip
    model.attach_image_bank(bank)
    cfg = type("Cfg", (), dict(training_tokens=1000, store_batch_size_prompts=2, train_batch_size_tokens=32,
                               act_store_device="cpu", dtype="float32"))()  # fmt: skip
    store: SelectionActivationsStore = prompt_store(
        model, ds, HOOK, context, processor.pad_token_id, cfg
    )
    served = store.get_filtered_llm_batch()
    model.attach_image_bank(None)
    n_real = sum(len(processor.encode_study(s, with_report=True)) for s in studies)
    assert served.shape[0] == n_real and store.describe_selection()["selection"] is None
