"""``Maira2Processor.collate``, where prompts and pixels enter: bad ones get ``ModelInputError``
naming the problem, good ones give exactly the batch they gave before the checks."""

import numpy as np
import pytest
import torch

from sae_lens_maira.data.study import Study
from sae_lens_maira.processing.images import ImagePreprocessor
from sae_lens_maira.processing.processor import EncodedPrompt, Maira2Processor
from sae_lens_maira.processing.validation import MAX_ABS_PIXEL, ModelInputError


@pytest.fixture(scope="module")
def processor(tokenizer):
    return Maira2Processor(tokenizer, ImagePreprocessor(size=56, crop_size=56), patch_size=14)


def _study(i: int, lateral: bool = False) -> Study:
    rng = np.random.default_rng(i)
    img = lambda: rng.integers(0, 4096, (80, 64)).astype(np.uint16)  # noqa: E731
    return Study(f"s{i}", frontal=img(), lateral=img() if lateral else None, findings="Clear.")


def _encoded(processor, i=0, lateral=False) -> EncodedPrompt:
    enc = processor.encode_study(_study(i, lateral), with_report=True)
    enc.pixel_values = processor.image_processor(enc.images)
    return enc


def test_good_batch_is_unchanged_by_the_checks(processor):
    encoded = [_encoded(processor, 0), _encoded(processor, 1, lateral=True)]
    batch = processor.collate(encoded, padding_side="right")
    # built independently: pad each prompt on the right, stack the images in order
    T = max(len(e) for e in encoded)
    for b, e in enumerate(encoded):
        assert batch.input_ids[b, : len(e)].tolist() == e.input_ids
        assert (batch.input_ids[b, len(e) :] == processor.pad_token_id).all()
        assert batch.attention_mask[b].sum() == len(e) and batch.input_ids.shape[1] == T
    expected = torch.cat([e.pixel_values for e in encoded])
    assert torch.equal(batch.pixel_values, expected) and batch.n_images == [1, 2]
    # the same studies through __call__ (images preprocessed during collation) give the same batch
    again = processor([_study(0), _study(1, lateral=True)], with_report=True, padding_side="right")
    assert torch.equal(again.input_ids, batch.input_ids)
    assert torch.equal(again.pixel_values, batch.pixel_values)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64, torch.bool])
def test_non_float_pixels_are_refused(processor, dtype):
    enc = _encoded(processor)
    enc.pixel_values = (enc.pixel_values.abs() * 50).to(dtype)
    with pytest.raises(ModelInputError, match=f"pixel_values of prompt 0 has dtype {dtype}.*float"):
        processor.collate([enc])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_pixels_are_refused(processor, bad):
    good, enc = _encoded(processor, 0), _encoded(processor, 1)
    enc.pixel_values[0, 1, 5, 7] = bad
    with pytest.raises(ModelInputError, match=r"prompt 1 contain NaN or inf in image\(s\) \[0\]"):
        processor.collate([good, enc])


def test_unnormalised_pixels_are_refused(processor):
    enc = _encoded(processor)
    enc.pixel_values = torch.rand_like(enc.pixel_values) * 255.0  # raw 0-255 float pixels
    with pytest.raises(ModelInputError, match=f"beyond {MAX_ABS_PIXEL:g}.*unnormalised"):
        processor.collate([enc])


def test_wrong_pixel_shape_names_expected_and_got(processor):
    enc = _encoded(processor)
    enc.pixel_values = torch.zeros(1, 3, 64, 64)
    with pytest.raises(
        ModelInputError, match=r"shape \[n_images, 3, 56, 56\], got \(1, 3, 64, 64\)"
    ):
        processor.collate([enc])
    enc.pixel_values = torch.zeros(2, 3, 56, 56)  # one image in the prompt, two attached
    with pytest.raises(ModelInputError, match="prompt 0 has 1 images but 2 preprocessed"):
        processor.collate([enc])


def test_partial_image_run_names_the_row(processor):
    good, enc = _encoded(processor, 0), _encoded(processor, 1)
    first = enc.input_ids.index(processor.image_token_id)
    del enc.input_ids[first], enc.roles[first], enc.image_slot[first], enc.patch_index[first]
    n = processor.n_patches
    with pytest.raises(
        ModelInputError,
        match=f"row 1 of input_ids has a run of {n - 1} image tokens at position {first}",
    ):
        processor.collate([good, enc], padding_side="right")


def test_empty_inputs_are_refused(processor):
    with pytest.raises(ModelInputError, match="empty batch"):
        processor.collate([])
    empty = EncodedPrompt([], [], [], [], [])
    with pytest.raises(ModelInputError, match="prompt 1 of the batch is empty"):
        processor.collate([_encoded(processor), empty])
