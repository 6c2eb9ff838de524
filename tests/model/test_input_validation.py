"""HookedMaira2's forward, generate and encode_images refuse inputs that would run but give
meaningless outputs (``ModelInputError``), and give the same outputs as before for good ones."""

import pytest
import torch

from sae_lens_maira.model.hooked_maira2 import HookedMaira2
from sae_lens_maira.processing.validation import MAX_ABS_PIXEL, ModelInputError


@pytest.fixture(scope="module")
def model(hub_checkpoint):
    return HookedMaira2.from_pretrained(hub_checkpoint, device="cpu")


def _ids(model, n_images=1):
    img = model.image_token_id
    row = [1]
    for _ in range(n_images):
        row += [img] * model.n_patches + [5]
    return torch.tensor([row])


def _pixels(n=1, seed=0):
    return torch.randn(n, 3, 56, 56, generator=torch.Generator().manual_seed(seed))


def test_good_inputs_match_a_forward_built_from_embeddings(model, reference):
    ids, px = _ids(model, 2), _pixels(2)
    with torch.no_grad():
        logits = model(ids, pixel_values=px)
        # the same pass with the image features handed over directly (no pixel checks on that path)
        again = model(ids, image_embeds=model.encode_images(px))
    assert torch.equal(logits, again) and torch.isfinite(logits).all()
    # and the independent transformers reference agrees
    with torch.no_grad():
        ref = reference(input_ids=ids, pixel_values=px).logits
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int32, torch.bool])
def test_integer_and_bool_pixels_are_refused(model, dtype):
    px = (_pixels().abs() * 80).to(dtype)
    with pytest.raises(ModelInputError, match=f"dtype {dtype}.*normalised float pixels"):
        model(_ids(model), pixel_values=px)
    with pytest.raises(ModelInputError, match=f"dtype {dtype}"):
        model.encode_images(px)
    with pytest.raises(ModelInputError, match=f"dtype {dtype}"):
        model.generate(_ids(model), max_new_tokens=1, pixel_values=px)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels_are_refused(model, bad):
    px = _pixels(2)
    px[1, 0, 3, 3] = bad
    with pytest.raises(ModelInputError, match=r"NaN or inf in image\(s\) \[1\] of 2"):
        model(_ids(model, 2), pixel_values=px)


def test_unnormalised_pixels_are_refused(model):
    px = torch.rand(1, 3, 56, 56) * 255
    with pytest.raises(ModelInputError, match=f"beyond {MAX_ABS_PIXEL:g}"):
        model(_ids(model), pixel_values=px)
    # just inside the limit still runs
    ok = torch.full((1, 3, 56, 56), MAX_ABS_PIXEL)
    with torch.no_grad():
        assert torch.isfinite(model(_ids(model), pixel_values=ok)).all()


def test_wrong_pixel_shape_names_expected_and_got(model):
    with pytest.raises(ModelInputError, match=r"\[n_images, 3, 56, 56\], got \(3, 56, 56\)"):
        model(_ids(model), pixel_values=torch.zeros(3, 56, 56))


def test_image_runs_that_are_not_whole_images_name_the_row(model):
    img, n = model.image_token_id, model.n_patches
    # 2 images' worth of image tokens in the batch, but split 1.5 / 0.5 over the rows
    rows = torch.tensor([[1] + [img] * (n + n // 2) + [5], [1] + [img] * (n // 2) + [5] * (n + 1)])
    with pytest.raises(
        ModelInputError,
        match=f"row 0 of input_ids has a run of {n + n // 2} image tokens at position 1",
    ):
        model(rows, pixel_values=_pixels(2))
    rows = torch.tensor([[1] + [img] * n + [5], [1] + [img] * (n - 1) + [5, 5]])
    with pytest.raises(ModelInputError, match=f"row 1 of input_ids has a run of {n - 1}"):
        model(rows, pixel_values=_pixels(2))


def test_empty_inputs_are_refused(model):
    with pytest.raises(ModelInputError, match=r"empty \(shape \(1, 0\)\)"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ModelInputError, match=r"empty \(shape \(0, 4\)\)"):
        model(torch.zeros(0, 4, dtype=torch.long))
