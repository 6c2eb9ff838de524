"""The virtual-image cache never evicts an image the current pass still needs."""

import torch

from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.model.image_bank import ImageBank, virtual_image_ids


def test_one_pass_with_more_images_than_the_cache_holds(hub_checkpoint):
    model = HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")
    g = torch.Generator().manual_seed(0)
    bank = ImageBank()
    bank.extend(list(torch.randn(12, 3, 56, 56, generator=g)))
    model.attach_image_bank(bank)
    assert model.image_cache_size == 8
    base, n = model.cfg.d_vocab, model.n_patches

    def ids(images):
        return torch.cat([virtual_image_ids(base, i, n) for i in images])[None]

    with torch.no_grad():
        model.embed(ids(range(4)))  # images 0-3 cached
        got = model.embed(ids(range(9)))  # 9 distinct images in one pass: 0-3 cached, 4-8 new
        want = model.encode_images(bank.pixel_values(list(range(9)))).reshape(1, 9 * n, -1)
        assert torch.allclose(got, want, atol=1e-6)
        assert len(model._image_cache) == 8
        # the cache kept the most recently used images and still gives the same embeddings
        again = model.embed(ids([8, 1, 11]))
        want = model.encode_images(bank.pixel_values([8, 1, 11])).reshape(1, 3 * n, -1)
        assert torch.allclose(again, want, atol=1e-6)
    model.attach_image_bank(None)


def test_the_cache_never_answers_for_other_weights_or_skips_a_hook(hub_checkpoint, monkeypatch):
    """The cache is the model's own and holds only what a fresh encoding would give now: an
    in-place weight edit, a replaced parameter or a hook on the image path bypasses it."""
    model = HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")
    g = torch.Generator().manual_seed(0)
    bank = ImageBank()
    bank.extend(list(torch.randn(2, 3, 56, 56, generator=g)))
    model.attach_image_bank(bank)
    ids = torch.cat([virtual_image_ids(model.cfg.d_vocab, i, model.n_patches) for i in (0, 1)])[None]
    encoded: list[int] = []
    encode = model.encode_images
    monkeypatch.setattr(model, "encode_images", lambda px: encoded.append(len(px)) or encode(px))

    def fresh():
        return encode(bank.pixel_values([0, 1])).reshape(1, 2 * model.n_patches, -1)

    with torch.no_grad():
        first = model.embed(ids)
        assert torch.equal(model.embed(ids), first) and encoded == [2]  # second pass: cached
        seen = []
        model.hook_projector_out.add_hook(lambda act, hook: seen.append(1) or act * 2)
        hooked = model.embed(ids)
        model.reset_hooks()
        assert seen == [1] and torch.allclose(hooked, 2 * first)  # the hook ran, not the cache
        assert torch.equal(model.embed(ids), first)  # unhooked again: the cache, unchanged
        model.multi_modal_projector.layers[-1].bias.add_(1.0)  # an in-place edit
        edited = model.embed(ids)
        assert not torch.allclose(edited, first) and torch.allclose(edited, fresh(), atol=1e-6)
        layer = model.multi_modal_projector.layers[-1]
        layer.bias = torch.nn.Parameter(layer.bias - 1.0)  # a replaced parameter
        assert torch.allclose(model.embed(ids), first, atol=1e-6)
    assert encoded == [2, 2, 2, 2]
    model.attach_image_bank(None)
