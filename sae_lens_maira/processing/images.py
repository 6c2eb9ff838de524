"""Chest X-ray preprocessing exactly as MAIRA-2 does it, with clear errors for bad files.

MAIRA-2 converts every image to greyscale, stretches it to the full 0-255 range (per image), then
runs RAD-DINO's ``BitImageProcessor``: shortest edge to 518 (bicubic), centre crop 518, rescale
1/255, normalise with the checkpoint's mean and std on three channels.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from transformers import BitImageProcessorPil

from sae_lens_maira.data.study import ImageRef

PREPROCESSOR_CONFIG = "preprocessor_config.json"


#: Largest image accepted from a file, in pixels (width x height), checked on the header before
#: decoding: a 30000 x 30000 "decompression bomb" PNG is a few kB on disk but 900 MP in memory.
#: Chest X-rays are at most about 4300 x 4300 (18 MP).
MAX_IMAGE_PIXELS = 50_000_000
#: Smallest side accepted from a file: a 1 x 1 (or 8 x 8) file is a placeholder or a broken
#: export, and stretched to 518 px it would be cached as a blank image.
MIN_IMAGE_SIDE = 32

#: ``ImageLoadError.reason`` values (the keys of skip reports).
REASONS = ("missing_image", "unreadable_image", "image_too_large", "image_too_small")


class ImageLoadError(ValueError):
    """An image could not be read or is not a usable greyscale/RGB picture.

    ``reason`` is one of :data:`REASONS`; ``path`` is the file, when it came from one.
    """

    def __init__(
        self, message: str, reason: str = "unreadable_image", path: str | Path | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.path = None if path is None else str(path)


def load_image(ref: ImageRef) -> Image.Image:
    """Open ``ref`` (path, PIL image or array) as an 8-bit greyscale image.

    Arrays may be (H, W) or (H, W, C) of any numeric dtype; they are min-max stretched later, so
    16-bit DICOM-derived arrays keep their full dynamic range. Files are checked against
    :data:`MAX_IMAGE_PIXELS` and :data:`MIN_IMAGE_SIDE` on their header, before decoding; images
    and arrays built in memory are the caller's and only need two pixels a side.
    """
    if isinstance(ref, Image.Image):
        image = ref
    elif isinstance(ref, np.ndarray):
        return _array_to_image(ref, "array")
    elif isinstance(ref, (str, Path)):
        image = _open_file(Path(ref))
    else:
        raise ImageLoadError(
            f"unsupported image type {type(ref).__name__}; pass a file path, a PIL image or a numpy array"
        )
    if image.mode in ("I", "I;16", "I;16B", "F"):
        return _array_to_image(np.asarray(image), "image")
    return image.convert("L")


def _open_file(path: Path) -> Image.Image:
    """Decode a file after checking the size its header claims (PIL reads only the header first)."""
    if not path.is_file():
        raise ImageLoadError(
            f"image file not found: {path}; fix the path in the study source or remove the study",
            "missing_image",
            path,
        )
    try:
        with warnings.catch_warnings():
            # PIL warns above its own limit and raises at twice it; both mean "bomb" here
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:
                _check_size(path, *opened.size)
                opened.load()
                return opened.copy()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageLoadError(
            f"{path} is too large to decode safely ({err}); the limit is {MAX_IMAGE_PIXELS:,} "
            "pixels (MAX_IMAGE_PIXELS): downscale the image",
            "image_too_large",
            path,
        ) from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        if isinstance(err, ImageLoadError):
            raise
        raise ImageLoadError(
            f"{path} is not a readable image ({err.__class__.__name__}: {err}); "
            "expected a JPEG/PNG chest X-ray",
            "unreadable_image",
            path,
        ) from err


def _check_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageLoadError(
            f"{path} claims {width} x {height} pixels ({width * height / 1e6:.0f} MP), more than "
            f"the {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit (MAX_IMAGE_PIXELS); it was not decoded. "
            "A chest X-ray needs no more than about 20 MP: downscale it, or remove the study",
            "image_too_large",
            path,
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageLoadError(
            f"{path} is {width} x {height} pixels, smaller than {MIN_IMAGE_SIDE} px on a side "
            "(MIN_IMAGE_SIDE); it is a placeholder or a broken export, not a chest X-ray: replace "
            "it with the real image, or remove the study",
            "image_too_small",
            path,
        )


def _array_to_image(array: np.ndarray, what: str) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        array = array[..., :3].mean(axis=-1) if array.shape[-1] >= 3 else array[..., 0]
    if array.ndim != 2 or min(array.shape) < 2:
        raise ImageLoadError(
            f"{what} of shape {tuple(array.shape)} is not a 2-D greyscale or RGB image"
        )
    if not np.isfinite(array).all():
        raise ImageLoadError(f"{what} contains NaN or infinite pixel values")
    return Image.fromarray(_stretch(array.astype(np.float64)))


def _stretch(array: np.ndarray) -> np.ndarray:
    lo, hi = float(array.min()), float(array.max())
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - lo) / (hi - lo) * 255.0).astype(np.uint8)


def minmax_greyscale(image: Image.Image) -> Image.Image:
    """Per-image min-max stretch of a greyscale image to [0, 255] (MAIRA-2's first step)."""
    return Image.fromarray(_stretch(np.asarray(image.convert("L"), dtype=np.float64)))


@dataclass
class ImagePreprocessor:
    """Greyscale + min-max + RAD-DINO's BitImageProcessor; values read from the checkpoint."""

    size: int = 518  # shortest edge after resize
    crop_size: int = 518
    image_mean: tuple[float, ...] = (0.5307, 0.5307, 0.5307)
    image_std: tuple[float, ...] = (0.2583, 0.2583, 0.2583)
    resample: int = int(Image.Resampling.BICUBIC)
    _processor: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._processor = BitImageProcessorPil(
            do_resize=True,
            size={"shortest_edge": self.size},
            resample=self.resample,
            do_center_crop=True,
            crop_size={"height": self.crop_size, "width": self.crop_size},
            do_rescale=True,
            rescale_factor=1 / 255,
            do_normalize=True,
            image_mean=list(self.image_mean),
            image_std=list(self.image_std),
            do_convert_rgb=True,
        )

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> ImagePreprocessor:
        """Read ``preprocessor_config.json`` from a checkpoint folder (defaults when absent)."""
        path = Path(folder) / PREPROCESSOR_CONFIG
        if not path.is_file():
            return cls()
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ImagePreprocessor:
        size = cfg.get("size", 518)
        if isinstance(size, dict):
            size = size.get("shortest_edge") or size.get("height")
        crop = cfg.get("crop_size", size)
        if isinstance(crop, dict):
            crop = crop.get("height") or crop.get("shortest_edge")
        if not isinstance(size, int | float) or not isinstance(crop, int | float):
            raise ValueError(
                f"{PREPROCESSOR_CONFIG}: size {cfg.get('size')!r} / crop_size "
                f"{cfg.get('crop_size')!r} name no pixel size; give a number or "
                '{"shortest_edge": N} / {"height": N, "width": N}'
            )
        mean = cfg.get("image_mean", cls.image_mean)
        std = cfg.get("image_std", cls.image_std)
        return cls(
            size=int(size),
            crop_size=int(crop),
            image_mean=tuple(
                float(m) for m in (mean if isinstance(mean, (list, tuple)) else [mean] * 3)
            ),
            image_std=tuple(
                float(s) for s in (std if isinstance(std, (list, tuple)) else [std] * 3)
            ),
            resample=int(cfg.get("resample", int(Image.Resampling.BICUBIC))),
        )

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` a checkpoint folder carries."""
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        return {
            "image_processor_type": "BitImageProcessor",
            "do_resize": True,
            "size": {"shortest_edge": d["size"]},
            "resample": d["resample"],
            "do_center_crop": True,
            "crop_size": {"height": d["crop_size"], "width": d["crop_size"]},
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": list(d["image_mean"]),
            "image_std": list(d["image_std"]),
            "do_convert_rgb": True,
        }

    def save_pretrained(self, folder: str | Path) -> None:
        Path(folder, PREPROCESSOR_CONFIG).write_text(json.dumps(self.to_dict(), indent=2))

    def prepare(self, ref: ImageRef) -> Image.Image:
        """Load and min-max stretch one image (the greyscale picture the model sees)."""
        return minmax_greyscale(load_image(ref))

    def __call__(self, images: list[ImageRef] | ImageRef) -> torch.Tensor:
        """Preprocess images into ``pixel_values`` of shape [n, 3, crop_size, crop_size]."""
        if not isinstance(images, list):
            images = [images]
        if not images:
            return torch.empty(0, 3, self.crop_size, self.crop_size)
        prepared = [self.prepare(im) for im in images]
        out = self._processor(prepared, return_tensors="pt")
        return out["pixel_values"]

    def crop_box(self, width: int, height: int) -> tuple[float, float, float]:
        """(left, top, side) of the centre-cropped square in original pixel coordinates."""
        scale = self.size / min(width, height)
        side = self.crop_size / scale
        return (width - side) / 2.0, (height - side) / 2.0, side
