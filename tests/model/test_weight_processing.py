"""TransformerLens's weight-processing options on HookedMaira2 (issue 16 item 3).

Each exact transform is checked against the unprocessed model on a batch with images: the
residual stream and logits (or, for ``center_unembed``, log-probs) agree. The checkpoint's
norm weights and attention biases are randomised first, so every fold has something to fold.
"""

import numpy as np
import pytest
import torch

from sae_lens_maira.data.study import Study
from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.processor import Maira2Processor

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A small checkpoint with non-trivial RMSNorm weights and value/output biases."""
    torch.manual_seed(0)
    model = HookedMaira2.from_config("small", seed=0, device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".ln1.w", ".ln2.w", "ln_final.w")):
                p.copy_(1 + 0.5 * torch.randn_like(p))
            elif name.endswith(("attn.b_V", "attn.b_O", "attn.b_Q", "attn.b_K")):
                p.copy_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("processing_ckpt")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def batch(checkpoint):
    rng = np.random.default_rng(1)
    studies = [
        Study("a", frontal=rng.integers(0, 255, (240, 230)).astype(np.uint8), indication="Cough."),
        Study(
            "b",
            frontal=rng.integers(0, 255, (250, 250)).astype(np.uint8),
            lateral=rng.integers(0, 255, (260, 240)).astype(np.uint8),
            indication="Chest pain for two days.",
        ),
    ]
    return Maira2Processor.from_pretrained(checkpoint)(studies)  # left-padded, two prompts


def _run(model, batch):
    with torch.no_grad():
        logits, cache = model.run_with_cache(**batch.model_inputs(), names_filter=[HOOK])
    real = batch.attention_mask.bool()
    return logits.double()[real], cache[HOOK].double()[real]


@pytest.fixture(scope="module")
def plain(checkpoint, batch):
    model = HookedMaira2.from_pretrained(checkpoint, device="cpu", dtype=torch.float64)
    return _run(model, batch)


@pytest.mark.parametrize(
    "option", ["fold_ln", "center_writing_weights", "fold_value_biases", "center_unembed", "all"]
)
def test_exact_transforms_keep_the_model_s_outputs(checkpoint, batch, plain, option):
    flags = ["fold_ln", "center_writing_weights", "fold_value_biases", "center_unembed"]
    kwargs = {f: True for f in flags} if option == "all" else {option: True}
    model = HookedMaira2.from_pretrained(checkpoint, device="cpu", dtype=torch.float64, **kwargs)
    logits, resid = _run(model, batch)
    ref_logits, ref_resid = plain
    # TransformerLens processes in float32: the tolerance is float32's, far below any real change
    assert torch.allclose(resid, ref_resid, rtol=1e-5, atol=1e-5)
    if kwargs.get("center_unembed"):
        assert not torch.allclose(logits, ref_logits, atol=1e-3)  # logits shift, log-probs do not
        logits, ref_logits = logits.log_softmax(-1), ref_logits.log_softmax(-1)
    assert torch.allclose(logits, ref_logits, rtol=1e-5, atol=1e-5)


def test_processing_does_what_transformer_lens_says(checkpoint):
    plain = HookedMaira2.from_pretrained(checkpoint, device="cpu")
    model = HookedMaira2.from_pretrained(
        checkpoint, device="cpu", fold_ln=True, fold_value_biases=True, center_unembed=True
    )
    # RMSNorm folded: norms become RMSNormPre, their weights live in the next matrices
    assert model.cfg.normalization_type == "RMSPre" and not hasattr(model.blocks[0].ln1, "w")
    assert torch.allclose(
        model.blocks[0].attn.W_Q, plain.blocks[0].attn.W_Q * plain.blocks[0].ln1.w[None, :, None]
    )
    # value biases folded into the output bias
    assert torch.count_nonzero(model.blocks[0].attn.b_V) == 0
    assert torch.allclose(model.unembed.W_U.mean(-1), torch.zeros(1), atol=1e-6)
    # the vision tower and projector are untouched (bit for bit)
    for name, p in plain.named_parameters():
        if name.startswith(("vision_tower.", "multi_modal_projector.")):
            assert torch.equal(p, dict(model.named_parameters())[name]), name


def test_processed_model_saves_and_reloads_to_the_same_outputs(checkpoint, batch, tmp_path):
    model = HookedMaira2.from_pretrained(
        checkpoint, device="cpu", fold_ln=True, fold_value_biases=True
    )
    model.save_pretrained(tmp_path / "folded")
    again = HookedMaira2.from_pretrained(tmp_path / "folded", device="cpu")
    a, ra = _run(model, batch)
    b, rb = _run(again, batch)
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(ra, rb, atol=1e-5)


def test_center_writing_weights_says_it_does_nothing_under_rmsnorm(checkpoint):
    plain = HookedMaira2.from_pretrained(checkpoint, device="cpu")
    with pytest.warns(UserWarning, match="center_writing_weights has no effect"):
        model = HookedMaira2.from_pretrained(checkpoint, device="cpu", center_writing_weights=True)
    assert torch.equal(model.embed.W_E, plain.embed.W_E)
    assert torch.equal(model.blocks[0].mlp.W_out, plain.blocks[0].mlp.W_out)


def test_from_pretrained_no_processing_works(checkpoint, batch, plain):
    model = HookedMaira2.from_pretrained_no_processing(checkpoint, device="cpu", dtype="float64")
    assert model.cfg.normalization_type == "RMS" and model.cfg.dtype == torch.float64
    logits, resid = _run(model, batch)
    assert torch.equal(logits, plain[0]) and torch.equal(resid, plain[1])


def test_unsupported_options_are_clear_errors(checkpoint):
    with pytest.raises(ValueError, match="rotary"):
        HookedMaira2.from_pretrained(checkpoint, device="cpu", refactor_factored_attn_matrices=True)
    with pytest.raises(
        ValueError, match=r"does not support the TransformerLens option\(s\) \['n_devices'\]"
    ):
        HookedMaira2.from_pretrained(checkpoint, device="cpu", n_devices=2)
    with pytest.raises(ValueError, match="not a torch floating-point dtype"):
        HookedMaira2.from_pretrained(checkpoint, device="cpu", dtype="int8")
    model = HookedMaira2.from_pretrained(
        checkpoint,
        device="cpu",
        move_to_device=True,
        default_prepend_bos=False,
        default_padding_side="left",
    )
    assert model.cfg.default_prepend_bos is False and model.tokenizer.padding_side == "left"
