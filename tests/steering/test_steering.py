"""Steering on the small default: the direction's logit effects show up in the generated tokens."""

import numpy as np
import pytest
import torch

from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.images import ImagePreprocessor
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.steering.hooks import SteeringHook, feature_directions, steering
from sae_lens_maira.steering.sweep import generate_reports, steering_sweep


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = HookedMaira2.from_config("small", tokenizer=tokenizer, seed=0, device="cpu")
    processor = Maira2Processor(
        tokenizer,
        ImagePreprocessor(size=224, crop_size=224),
        patch_size=14,
        max_length=model.cfg.n_ctx,
    )
    rng = np.random.default_rng(0)
    studies = [
        Study(
            f"s{i}", frontal=rng.integers(0, 255, (240, 224)).astype(np.uint8), indication="Cough."
        )
        for i in range(2)
    ]
    torch.manual_seed(1)
    W_dec = torch.randn(16, model.cfg.d_model)
    return model, processor, studies, W_dec


def _generate(model, batch, hook=None, hook_name=None, n=6):
    kwargs = dict(
        max_new_tokens=n,
        pixel_values=batch.pixel_values,
        attention_mask=batch.attention_mask,
        stop_at_eos=False,
    )
    if hook is None:
        return model.generate(batch.input_ids, **kwargs)[:, batch.input_ids.shape[1] :]
    hook.prompt_len = batch.input_ids.shape[1]
    with steering(model, hook_name, hook):
        return model.generate(batch.input_ids, **kwargs)[:, batch.input_ids.shape[1] :]


def test_steering_moves_generation_along_the_features_logit_effects(setup):
    model, processor, studies, W_dec = setup
    hook_name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    direction = feature_directions(W_dec, 3)
    effect = (direction * model.ln_final.w.detach()) @ model.W_U.detach()  # direct logit effect
    batch = processor(studies, padding_side="left")
    base = _generate(model, batch)
    zero = _generate(model, batch, SteeringHook(direction, 0.0, 0), hook_name)
    assert torch.equal(base, zero)  # coefficient 0 reproduces the unsteered output
    scores = []
    for coef in (2.0, 8.0, 64.0):
        steered = _generate(model, batch, SteeringHook(direction, coef, 0), hook_name)
        scores.append(effect[steered].mean().item())
    assert effect[base].mean().item() < scores[0] <= scores[1] <= scores[2]
    strong = _generate(model, batch, SteeringHook(direction, 64.0, 0), hook_name)
    # the first new token comes from the (unsteered) last prompt position; from then on the top
    # logit-effect token takes over
    assert (strong[:, 1:] == effect.argmax()).all()


def test_prompt_only_steering_leaves_generated_positions_alone(setup):
    model, processor, studies, W_dec = setup
    hook_name = "blocks.1.hook_resid_post"
    batch = processor(studies[:1], padding_side="left")
    direction = feature_directions(W_dec, [1, 2])
    seen = []

    def spy(resid, hook):
        seen.append(resid.detach().clone())

    steer = SteeringHook(direction, 5.0, batch.input_ids.shape[1], positions="prompt")
    with model.hooks(fwd_hooks=[(hook_name, steer), (hook_name, spy)]):
        model.generate(
            batch.input_ids, max_new_tokens=3, pixel_values=batch.pixel_values, stop_at_eos=False
        )
    clean = []
    with model.hooks(fwd_hooks=[(hook_name, lambda r, hook: clean.append(r.detach().clone()))]):
        model(batch.input_ids, pixel_values=batch.pixel_values)
    assert torch.allclose(seen[0] - clean[0], 5.0 * direction.expand_as(clean[0]), atol=1e-4)


def test_sweep_reports_rates_and_plot(setup, tmp_path):
    model, processor, studies, W_dec = setup
    hook_name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    result = steering_sweep(
        model,
        processor,
        studies,
        direction=feature_directions(W_dec, 3),
        hook_name=hook_name,
        coefficients=[0, 64],
        finding="pleural_effusion",
        features=[3],
        max_new_tokens=5,
    )
    assert [p.coefficient for p in result.points] == [0.0, 64.0]
    assert result.points[0].reports == generate_reports(model, processor, studies, max_new_tokens=5)
    assert result.points[0].reports != result.points[1].reports
    for p in result.points:
        assert abs(sum(p.rates.values()) - 1) < 1e-9
    out = result.save(tmp_path / "steer")
    assert (out / "steering.png").stat().st_size > 1000 and (out / "steering.json").is_file()
    with pytest.raises(ValueError, match="outside the SAE's 16 latents"):
        feature_directions(W_dec, 99)
    with pytest.raises(ValueError, match="positions must be"):
        SteeringHook(W_dec[0], 1.0, 0, positions="everywhere")


def test_writer_features_find_the_features_that_raise_a_findings_words(tokenizer):
    """Plant two features that push effusion tokens up through W_U; they come out on top."""
    from sae_lens_maira.steering.candidates import finding_token_ids, writer_features

    ids = finding_token_ids(tokenizer, "pleural_effusion")
    names = [tokenizer.convert_tokens_to_string([t]).strip().lower()
             for t in tokenizer.convert_ids_to_tokens(ids)]  # fmt: skip
    assert names and all("effusion" in n or "fluid" in n or "hydrothorax" in n for n in names)
    d_model, vocab = 16, len(tokenizer)
    g = torch.Generator().manual_seed(0)
    W_U = torch.randn(d_model, vocab, generator=g)
    W_dec = torch.randn(32, d_model, generator=g)
    target = W_U[:, ids[0]] / W_U[:, ids[0]].norm()
    W_dec[7] = 5 * target + 0.1 * W_dec[7]
    W_dec[21] = 3 * target + 0.5 * W_dec[21]
    assert writer_features(W_dec, W_U, ids, top=2) == [7, 21]
    with pytest.raises(ValueError, match="W_U must be"):
        writer_features(W_dec, W_U.T, ids)
    from sae_lens_maira.data.labeller import FindingRule

    with pytest.raises(ValueError, match="spells a mention"):
        finding_token_ids(tokenizer, FindingRule("rare", mentions=(r"\bxyzzyq\b",)))
