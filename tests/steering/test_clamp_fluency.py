"""Clamping a feature where the finding is read, and telling fluent reports from stuffed ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.images import ImagePreprocessor
from sae_lens_maira.processing.processor import Maira2Processor
from sae_lens_maira.processing.roles import Role
from sae_lens_maira.steering.clamp import FeatureClamp
from sae_lens_maira.steering.fluency import (
    fluency_summary,
    has_repeated_phrase,
    is_fluent,
    mean_log_likelihood,
    mention_count,
)
from sae_lens_maira.steering.sweep import generate_reports


class ReluSAE(torch.nn.Module):
    """A plain ReLU SAE: enough of SAELens's interface (cfg.d_sae, encode, W_dec)."""

    def __init__(self, d_model: int, d_sae: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W_enc = torch.nn.Parameter(torch.randn(d_model, d_sae, generator=g) / d_model**0.5)
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.W_dec = torch.nn.Parameter(torch.randn(d_sae, d_model, generator=g))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_model))
        self.cfg = type("Cfg", (), {"d_sae": d_sae})()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = HookedMaira2.from_config("small", tokenizer=tokenizer, seed=0, device="cpu")
    processor = Maira2Processor(tokenizer, ImagePreprocessor(size=224, crop_size=224),
                                patch_size=14, max_length=model.cfg.n_ctx)  # fmt: skip
    rng = np.random.default_rng(0)
    studies = [Study(f"s{i}", frontal=rng.integers(0, 255, (240, 224)).astype(np.uint8),
                     indication="Cough.") for i in range(2)]  # fmt: skip
    return model, processor, studies, ReluSAE(model.cfg.d_model, 32)


def test_clamp_sets_the_feature_at_image_positions_only(setup):
    model, processor, studies, sae = setup
    batch = processor(studies, padding_side="left")
    resid = torch.randn(*batch.input_ids.shape, model.cfg.d_model)
    clamp = FeatureClamp(sae, 5, 3.0, prompt_positions="image", generated=0)
    clamp.prepare(batch)
    out = clamp(resid)
    image = torch.isin(batch.roles, torch.tensor([int(Role.IMAGE_FIRST), int(Role.IMAGE_MIDDLE),
                                                  int(Role.IMAGE_LAST)]))  # fmt: skip
    assert image.any() and (~image).any()
    # independent reference: resid + (value - a) W_dec[f] where the role is an image token
    with torch.no_grad():
        a = torch.relu(resid @ sae.W_enc[:, 5])
        expected = resid + image[..., None] * (3.0 - a)[..., None] * sae.W_dec[5]
    assert torch.allclose(out, expected, atol=1e-5)
    assert torch.equal(out[~image], resid[~image])


def test_clamp_on_generated_positions_and_the_kv_cache(setup):
    model, processor, studies, sae = setup
    batch = processor(studies[:1], padding_side="left")
    T = batch.input_ids.shape[1]
    clamp = FeatureClamp(sae, 2, 0.0, prompt_positions="none", generated=2)
    clamp.prepare(batch)
    prompt = torch.randn(1, T, model.cfg.d_model)
    assert torch.equal(clamp(prompt), prompt)  # no prompt position is clamped
    for i in range(3):  # then one new position per call
        x = torch.randn(1, 1, model.cfg.d_model) + 2 * sae.W_enc[:, 2].detach()
        y = clamp(x)
        if i < 2:
            a = torch.relu(x @ sae.W_enc[:, 2]).detach()
            assert torch.allclose(y, x - a[..., None] * sae.W_dec[2].detach(), atol=1e-5)
            assert not torch.equal(x, y)
        else:
            assert torch.equal(x, y)
    with pytest.raises(ValueError, match="acts on no prompt"):
        FeatureClamp(sae, 2, 1.0, prompt_positions="none", generated=0)
    with pytest.raises(ValueError, match="outside the SAE"):
        FeatureClamp(sae, 99, 1.0)
    with pytest.raises(ValueError, match="prompt_positions must be"):
        FeatureClamp(sae, 1, 1.0, prompt_positions="pixels")


def test_where_names_the_positions():
    from sae_lens_maira.steering.clamp import parse_where

    assert parse_where("image") == ("image", 0, 0)
    assert parse_where("image+generated") == ("image", -1, 0)
    assert parse_where("image_ends+first4") == ("image_ends", 4, 0)
    assert parse_where("generated") == ("none", -1, 0)
    assert parse_where("boundary1") == ("none", 0, 1)
    assert parse_where("image+boundary2") == ("image", 0, 2)
    for bad in ("pixels", "image+image", "none", "boundary0", "boundary1+boundary2", "boundaryx"):
        with pytest.raises(ValueError, match="clamp"):
            parse_where(bad)


def test_boundary_clamp_acts_on_the_token_that_ends_the_nth_sentence(setup):
    model, processor, studies, sae = setup
    batch = processor(studies[:1], padding_side="left")
    T, d = batch.input_ids.shape[1], model.cfg.d_model
    END = 7
    clamp = FeatureClamp(sae, 2, 0.0, prompt_positions="none", boundary=2, end_ids=[END])
    clamp.prepare(batch)
    clamp.watch_tokens(batch.input_ids)  # the prompt: nothing generated yet
    prompt = torch.randn(1, T, d)
    assert torch.equal(clamp(prompt), prompt)
    generated = [3, END, 4, END, 5]  # the second sentence ends at generated position 3
    w = 2 * sae.W_enc[:, 2].detach()
    xs = [torch.randn(1, 1, d) + w for _ in generated]
    for i, (tok, x) in enumerate(zip(generated, xs, strict=True)):  # KV cache: one id per call
        clamp.watch_tokens(torch.tensor([[tok]]))
        y = clamp(x)
        if i == 3:
            a = torch.relu(x @ sae.W_enc[:, 2]).detach()
            assert torch.allclose(y, x - a[..., None] * sae.W_dec[2].detach(), atol=1e-5)
        else:
            assert torch.equal(y, x), i
    # without the cache every call re-reads the whole sequence; the same position is clamped
    clamp.prepare(batch)
    clamp.watch_tokens(batch.input_ids)
    for k in range(1, len(generated) + 1):
        clamp.watch_tokens(torch.tensor([generated[:k]]))
    seq = torch.cat([prompt, *xs], dim=1)
    out = clamp(seq)
    changed = (out != seq).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == [T + 3]
    with pytest.raises(ValueError, match="end_ids"):
        FeatureClamp(sae, 2, 1.0, prompt_positions="none", boundary=1)
    with pytest.raises(ValueError, match="tokenizer"):
        FeatureClamp.at(sae, 2, 1.0, "boundary1")


def test_sentence_end_ids_and_a_boundary_clamp_in_generation(setup):
    from sae_lens_maira.steering.clamp import sentence_end_ids
    from sae_lens_maira.steering.hooks import steering

    model, processor, studies, sae = setup
    tok = processor.tokenizer
    ends = sentence_end_ids(tok)
    assert ends and all(tok.convert_tokens_to_string([tok.convert_ids_to_tokens(i)]).strip().endswith(".")
                        for i in ends)  # fmt: skip
    hook = "blocks.1.hook_resid_post"
    # every id ends a sentence: the first boundary is the first generated token, as first1
    everything = list(range(model.cfg.d_vocab))
    at_boundary = generate_reports(model, processor, studies, max_new_tokens=5, hook_name=hook,
                                   hook=FeatureClamp(sae, 3, 500.0, prompt_positions="none",
                                                     boundary=1, end_ids=everything))  # fmt: skip
    first = generate_reports(model, processor, studies, max_new_tokens=5, hook_name=hook,
                             hook=FeatureClamp(sae, 3, 500.0, prompt_positions="none", generated=1))  # fmt: skip
    base = generate_reports(model, processor, studies, max_new_tokens=5)
    assert at_boundary == first and first != base
    # no id ends a sentence: the clamp never acts
    never = generate_reports(model, processor, studies, max_new_tokens=5, hook_name=hook,
                             hook=FeatureClamp(sae, 3, 500.0, prompt_positions="none",
                                               boundary=1, end_ids=[-1]))  # fmt: skip
    assert never == base
    with steering(model, hook, FeatureClamp(sae, 3, 1.0, prompt_positions="none", boundary=1,
                                            end_ids=[1])):  # fmt: skip
        assert len(model.embed._forward_pre_hooks) == 1
    assert len(model.embed._forward_pre_hooks) == 0  # the token watch is removed afterwards


def test_clamp_in_generation(setup):
    model, processor, studies, sae = setup
    base = generate_reports(model, processor, studies, max_new_tokens=5)
    same = generate_reports(model, processor, studies, max_new_tokens=5, hook_name="blocks.1.hook_resid_post",
                            hook=FeatureClamp(sae, 3, None))  # fmt: skip
    assert same == base  # value None: the unsteered baseline through the same code path
    moved = generate_reports(model, processor, studies, max_new_tokens=5, hook_name="blocks.1.hook_resid_post",
                             hook=FeatureClamp(sae, 3, 500.0, generated=-1))  # fmt: skip
    assert moved != base


def test_fluency_checks():
    stuffed = "pleural effusion. effusion. No acute effusion. No acute effusion, or effusion."
    loop = "effusion, effusion, effusion, effusion, effusion"
    fluent = "There is a small right pleural effusion. The heart is normal in size. No pneumothorax."
    assert mention_count(stuffed, "pleural_effusion") == 5 and not is_fluent(stuffed, "pleural_effusion")
    assert has_repeated_phrase(loop) and not is_fluent(loop, "pleural_effusion")
    assert has_repeated_phrase("No acute cardiopulmonary disease. No acute cardiopulmonary disease.")
    assert not has_repeated_phrase("No acute disease. No acute disease.")  # 3 words: normal prose
    assert not has_repeated_phrase(fluent) and is_fluent(fluent, "pleural_effusion")
    s = fluency_summary([stuffed, loop, fluent, "XXXX XXXX XXXX XXXX XXXX"], "pleural_effusion")
    assert s == {"repeated_phrase": 0.75, "stuffed": 0.5, "disfluent": 0.75, "n": 4}


def test_mean_log_likelihood_prefers_what_the_model_writes(setup):
    model, processor, studies, _ = setup
    own = generate_reports(model, processor, studies, max_new_tokens=8)
    ll_own = mean_log_likelihood(model, processor, studies, own)
    ll_other = mean_log_likelihood(model, processor, studies, ["zebra " * 8] * len(studies))
    assert ll_own < 0 and ll_other < ll_own
    with pytest.raises(ValueError, match="2 studies but 1 texts"):
        mean_log_likelihood(model, processor, studies, own[:1])
