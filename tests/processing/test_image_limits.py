"""Image files are checked on their header before decoding: bombs, tiny files, truncated and
missing files give ``ImageLoadError`` with a ``reason`` and the path, never a decoded image."""

import numpy as np
import pytest
from PIL import Image

from sae_lens_maira.processing.images import (
    MAX_IMAGE_PIXELS,
    MIN_IMAGE_SIDE,
    ImageLoadError,
    ImagePreprocessor,
    load_image,
)
from tests.processing.png_files import png_claiming


def _load_error(path) -> ImageLoadError:
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    assert err.value.path == str(path)
    return err.value


def test_png_claiming_30000_squared_is_refused_without_decoding(tmp_path, monkeypatch):
    bomb = png_claiming(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 200  # a few bytes on disk, 900 MP once decoded
    with pytest.raises(Image.DecompressionBombError):  # what used to abort `cache`
        Image.open(bomb)
    with monkeypatch.context() as m:  # without PIL's guard: a real PNG header of that size
        m.setattr(Image, "MAX_IMAGE_PIXELS", None)
        with Image.open(bomb) as im:
            assert im.format == "PNG" and im.size == (30000, 30000)
        assert _load_error(bomb).reason == "image_too_large"  # our own header check
    err = _load_error(bomb)
    assert err.reason == "image_too_large" and "bomb.png" in str(err)


def test_png_over_our_limit_but_under_pils_is_refused_too(tmp_path):
    side = int((MAX_IMAGE_PIXELS * 1.2) ** 0.5)  # 60 MP: PIL itself would neither warn nor stop
    assert side * side < Image.MAX_IMAGE_PIXELS
    err = _load_error(png_claiming(tmp_path / "big.png", side, side))
    assert err.reason == "image_too_large"
    assert f"claims {side} x {side} pixels" in str(err) and "MAX_IMAGE_PIXELS" in str(err)


def test_pil_bomb_warning_becomes_image_too_large(tmp_path, monkeypatch):
    """Between PIL's limit and twice it PIL only warns; that warning is a refusal here."""
    import sae_lens_maira.processing.images as images

    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 10**12)  # our own check out of the way
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100)
    path = tmp_path / "warn.png"
    Image.fromarray(np.zeros((150, 150), dtype=np.uint8)).save(path)  # 2.25x PIL's limit -> error
    assert _load_error(path).reason == "image_too_large"
    Image.fromarray(np.zeros((120, 120), dtype=np.uint8)).save(path)  # 1.44x -> PIL warns
    assert _load_error(path).reason == "image_too_large"


@pytest.mark.parametrize("size", [(1, 1), (MIN_IMAGE_SIDE - 1, 200)])
def test_tiny_files_are_refused_not_cached_blank(tmp_path, size):
    path = tmp_path / "tiny.png"
    Image.new("L", size, 200).save(path)
    err = _load_error(path)
    assert err.reason == "image_too_small" and "MIN_IMAGE_SIDE" in str(err)
    with pytest.raises(ImageLoadError):
        ImagePreprocessor(size=56, crop_size=56)([path])


def test_smallest_accepted_file_decodes(tmp_path):
    path = tmp_path / "ok.png"
    a = np.arange(MIN_IMAGE_SIDE * MIN_IMAGE_SIDE, dtype=np.uint16).reshape(MIN_IMAGE_SIDE, -1)
    Image.fromarray((a % 256).astype(np.uint8)).save(path)
    assert np.array_equal(np.asarray(load_image(path)), (a % 256).astype(np.uint8))


def test_truncated_and_missing_files(tmp_path):
    path = tmp_path / "trunc.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    err = _load_error(path)
    assert err.reason == "unreadable_image" and "not a readable image" in str(err)
    err = _load_error(tmp_path / "gone.png")
    assert err.reason == "missing_image" and "not found" in str(err)
    (tmp_path / "text.png").write_text("not an image")
    assert _load_error(tmp_path / "text.png").reason == "unreadable_image"
