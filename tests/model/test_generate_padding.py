"""generate and forward agree on padding; TransformerLens's generate arguments are accepted."""

import pytest
import torch

from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from tests.model.test_equivalence import _prompt


@pytest.fixture(scope="module")
def model(hub_checkpoint):
    return HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")


def test_padded_generate_without_a_mask_equals_per_row_generate(model, tokenizer):
    pad = model.tokenizer.pad_token_id
    assert pad is not None
    counts = (1, 2)
    prompts = [_prompt(tokenizer, n, 10 + i) for i, n in enumerate(counts)]
    T = max(map(len, prompts))
    ids = torch.full((2, T), pad)
    for b, p in enumerate(prompts):
        ids[b, T - len(p) :] = torch.tensor(p)
    assert len(prompts[0]) != len(prompts[1])  # one row really is padded
    pixels = torch.randn(sum(counts), 3, 56, 56, generator=torch.Generator().manual_seed(2))
    batched = model.generate(ids, max_new_tokens=6, pixel_values=pixels, stop_at_eos=False)
    start = 0
    for b, (p, n) in enumerate(zip(prompts, counts)):
        single = model.generate(torch.tensor([p]), max_new_tokens=6,
                                pixel_values=pixels[start : start + n], stop_at_eos=False)  # fmt: skip
        assert torch.equal(single[0, len(p) :], batched[b, T:]), b
        start += n
    # forward infers the same mask when the tokenizer pads on the left, as TransformerLens does
    side = model.tokenizer.padding_side
    model.tokenizer.padding_side = "left"
    try:
        with torch.no_grad():
            inferred = model(ids, pixel_values=pixels)
            explicit = model(ids, pixel_values=pixels, attention_mask=(ids != pad).long())
    finally:
        model.tokenizer.padding_side = side
    real = ids != pad
    assert torch.allclose(inferred[real], explicit[real], atol=1e-5)


def test_transformerlens_arguments_are_accepted(model):
    text = "The heart size is normal."
    with_bos = model.generate(text, max_new_tokens=3, prepend_bos=True, padding_side="left",
                              return_type="tokens", stop_at_eos=False, verbose=False)  # fmt: skip
    without = model.generate(text, max_new_tokens=3, prepend_bos=False, return_type="tokens",
                             stop_at_eos=False)  # fmt: skip
    assert with_bos[0, 0] == model.tokenizer.bos_token_id
    assert with_bos.shape[1] == without.shape[1] + 1 and without[0, 0] != model.tokenizer.bos_token_id
    out = model.generate([text, "No effusion."], max_new_tokens=3, padding_side="right",
                         stop_at_eos=False)  # fmt: skip
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(t, str) for t in out)
    with pytest.raises(ValueError, match="padding_side"):
        model.generate(text, max_new_tokens=1, padding_side="middle")
    with pytest.raises(TypeError, match="freq_penalty"):
        model.generate(text, max_new_tokens=1, freq_penalty=1.0)


def test_image_placeholder_in_a_string_prompt_points_at_the_processor(model):
    with pytest.raises(ValueError, match="Maira2Processor"):
        model.to_tokens("Given the current frontal image<image> describe it")
    with pytest.raises(ValueError, match="16 patch tokens"):
        model.generate(["ok", "an <image> here"], max_new_tokens=1)
    with pytest.raises(ValueError, match="Maira2Processor"):
        model("Given the current frontal image<image>", pixel_values=torch.zeros(1, 3, 56, 56))
