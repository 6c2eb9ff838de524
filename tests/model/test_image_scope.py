"""A forward's images belong to that forward: nothing leaks into the next forward, into another
model in the same process, or out of a forward that failed; no lookup consumes them."""

import pytest
import torch

from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.validation import ModelInputError
from tests.model.test_equivalence import _prompt


@pytest.fixture(scope="module")
def models(hub_checkpoint):
    return (
        HookedMaira2.from_pretrained(hub_checkpoint, device="cpu"),
        HookedMaira2.from_pretrained(hub_checkpoint, device="cpu"),
    )


def _pixels(seed: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_two_forwards_in_a_row_use_their_own_images(models, tokenizer):
    a, _ = models
    ids = torch.tensor([_prompt(tokenizer, 1, 0)])
    first = a(ids, pixel_values=_pixels(1))
    other = a(ids, pixel_values=_pixels(2))
    assert not torch.allclose(first, other)  # the images matter
    assert torch.equal(a(ids, pixel_values=_pixels(1)), first)
    assert a.embed.scoped_images is None
    with pytest.raises(ModelInputError, match="no pixel_values"):
        a(ids)  # the last forward's images are gone, not reused
    text = torch.tensor([[tokenizer.bos_token_id, 5, 6, 7]])
    after_images = a(text)
    assert torch.equal(after_images, a(text))


@torch.no_grad()
def test_two_models_in_one_process_never_see_each_others_images(models, tokenizer):
    a, b = models  # same weights: equal images give equal logits
    ids = torch.tensor([_prompt(tokenizer, 1, 0)])
    a_alone = a(ids, pixel_values=_pixels(1))
    b_alone = b(ids, pixel_values=_pixels(2))
    inside: dict[str, torch.Tensor] = {}

    def run_b_inside_a(act, hook):  # b's forward nested inside a's, after a's embedding
        assert b.embed.scoped_images is None
        inside["b"] = b(ids, pixel_values=_pixels(2))
        return act

    a_nested = a.run_with_hooks(
        ids, pixel_values=_pixels(1), fwd_hooks=[("hook_embed", run_b_inside_a)]
    )
    assert torch.equal(a_nested, a_alone) and torch.equal(inside["b"], b_alone)
    assert torch.equal(b_alone, a(ids, pixel_values=_pixels(2)))
    assert a.embed.scoped_images is None and b.embed.scoped_images is None


@torch.no_grad()
def test_a_failed_forward_leaves_no_images_behind(models, tokenizer):
    a, _ = models
    ids = torch.tensor([_prompt(tokenizer, 1, 0)])

    def fail(act, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        a.run_with_hooks(ids, pixel_values=_pixels(1), fwd_hooks=[("blocks.0.hook_resid_pre", fail)])
    assert a.embed.scoped_images is None


@torch.no_grad()
def test_a_lookup_consumes_nothing_and_takes_images_explicitly(models, tokenizer):
    a, _ = models
    ids = torch.tensor([_prompt(tokenizer, 1, 0)])
    feats = a.encode_images(_pixels(1))
    explicit = a.embed(ids, feats)
    with a.embed.images(feats):
        assert torch.equal(a.embed(ids), explicit)
        assert torch.equal(a.embed(ids), explicit)  # the second lookup splices them too
        with a.embed.images(None):
            plain = a.embed(ids)
        assert torch.equal(a.embed(ids), explicit)  # the enclosing block's images come back
    image = ids == a.image_token_id
    assert torch.equal(plain[image], a.embed.W_E[ids[image]])  # no images: plain lookups
    assert not torch.equal(explicit[image], plain[image])
    assert torch.equal(explicit[~image], plain[~image])
