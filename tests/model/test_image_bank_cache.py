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
