"""Image preprocessing against a plain numpy/PIL re-statement of MAIRA-2's steps, and bad files."""

import numpy as np
import pytest
from PIL import Image

from sae_lens_maira.processing.images import ImageLoadError, ImagePreprocessor, load_image


def _reference(array: np.ndarray, size: int, mean: float, std: float) -> np.ndarray:
    a = array.astype(np.float64)
    a = np.round((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)
    im = Image.fromarray(a)
    w, h = im.size
    scale = size / min(w, h)
    im = im.resize(
        (round(w * scale) if w > h else size, round(h * scale) if h > w else size), Image.BICUBIC
    )
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, dtype=np.float64) / 255.0
    x = (x - mean) / std
    return np.stack([x, x, x])


@pytest.mark.parametrize("shape", [(300, 200), (200, 300), (518, 518)])
def test_matches_independent_reference(shape):
    rng = np.random.default_rng(0)
    array = rng.normal(1000, 300, shape).clip(0, 4095).astype(np.uint16)  # 12-bit DICOM-like values
    out = ImagePreprocessor(size=112, crop_size=112)(array).numpy()[0]
    ref = _reference(array, 112, 0.5307, 0.2583)
    assert out.shape == (3, 112, 112)
    assert np.abs(out - ref).max() < 2 / 255 / 0.2583  # at most one grey level of rounding


def test_reads_values_from_checkpoint(tmp_path):
    cfg = ImagePreprocessor(size=224, crop_size=224, image_mean=(0.4,) * 3, image_std=(0.3,) * 3)
    cfg.save_pretrained(tmp_path)
    again = ImagePreprocessor.from_pretrained(tmp_path)
    assert again.size == 224 and again.image_mean == (0.4,) * 3 and again.image_std == (0.3,) * 3
    assert ImagePreprocessor.from_pretrained(tmp_path / "missing").size == 518


def test_files_rgb_and_errors(tmp_path):
    rgb = np.zeros((40, 50, 3), dtype=np.uint8)
    rgb[..., 0] = 200
    Image.fromarray(rgb).save(tmp_path / "x.png")
    assert load_image(tmp_path / "x.png").mode == "L"
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ImageLoadError, match="bad.jpg is not a readable image"):
        load_image(tmp_path / "bad.jpg")
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageLoadError, match="2-D greyscale"):
        load_image(np.zeros((3, 4, 5, 6)))
    with pytest.raises(ImageLoadError, match="NaN"):
        load_image(np.full((10, 10), np.nan))
    truncated = tmp_path / "trunc.jpg"
    Image.fromarray(rgb).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(ImageLoadError, match="trunc.jpg"):
        ImagePreprocessor(size=56, crop_size=56)([truncated])


def test_a_preprocessor_config_without_a_pixel_size_is_a_clear_error():
    with pytest.raises(ValueError, match="name no pixel size"):
        ImagePreprocessor.from_dict({"size": {"width": 518}})
    assert ImagePreprocessor.from_dict({"size": {"shortest_edge": 224}}).crop_size == 224
