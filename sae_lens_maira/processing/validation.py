"""The one check of model inputs where they enter: ``Maira2Processor.collate``, ``HookedMaira2``'s
forward/generate and ``encode_images`` all call these functions.

Bad pixels do not fail on their own: uint8 0-255 pixels, NaN or inf run through the vision tower
and give wrong logits (and empty dashboards) without any error, and an image-token run that is not
a whole number of images is spliced across image boundaries. So each is refused here with a
:class:`ModelInputError` that names the problem and the fix.
"""

from __future__ import annotations

import math

import torch

#: Largest |pixel| accepted. RAD-DINO's normalisation maps [0, 1] to about [-2.1, 1.8]; anything
#: beyond 10 is an unnormalised (0-255 or 0-1 rescaled twice) or corrupted image.
MAX_ABS_PIXEL = 10.0

_FIX = "preprocess images with Maira2Processor / ImagePreprocessor (greyscale, 0-1, normalised)"


class ModelInputError(ValueError):
    """Model inputs (token ids, pixel values) that cannot give a meaningful forward pass."""


def check_pixel_values(
    pixel_values: torch.Tensor,
    *,
    image_size: int | None = None,
    n_channels: int = 3,
    what: str = "pixel_values",
) -> None:
    """dtype (float), shape ``[n, 3, S, S]``, finiteness and range of preprocessed images."""
    if not isinstance(pixel_values, torch.Tensor):
        raise ModelInputError(
            f"{what} must be a torch tensor, got {type(pixel_values).__name__}; {_FIX}"
        )
    if not pixel_values.is_floating_point():
        raise ModelInputError(
            f"{what} has dtype {pixel_values.dtype}, but the model takes normalised float pixels "
            f"(raw {pixel_values.dtype} images would give wrong logits); {_FIX}"
        )
    size = "S, S" if image_size is None else f"{image_size}, {image_size}"
    if (
        pixel_values.ndim != 4
        or pixel_values.shape[1] != n_channels
        or (image_size is not None and tuple(pixel_values.shape[-2:]) != (image_size, image_size))
    ):
        raise ModelInputError(
            f"{what} must have shape [n_images, {n_channels}, {size}], got "
            f"{tuple(pixel_values.shape)}; {_FIX}"
        )
    if pixel_values.numel() == 0:
        return
    # one reduction (one host sync) serves both checks
    peak = float(pixel_values.detach().abs().amax())
    if not math.isfinite(peak):
        bad = (~torch.isfinite(pixel_values)).flatten(1).any(1).nonzero().flatten().tolist()
        raise ModelInputError(
            f"{what} contain NaN or inf in image(s) {bad[:10]} of {pixel_values.shape[0]}; the image "
            f"files or the preprocessing are broken: {_FIX}"
        )
    if peak > MAX_ABS_PIXEL:
        per_image = pixel_values.detach().abs().flatten(1).amax(1)
        bad = (per_image > MAX_ABS_PIXEL).nonzero().flatten().tolist()
        raise ModelInputError(
            f"{what} reach |x| = {peak:.4g} in image(s) {bad[:10]}, beyond {MAX_ABS_PIXEL:g} "
            "(normalised pixels lie within about -2.1..1.8); these look unnormalised (0-255?): "
            f"{_FIX}"
        )


def check_token_ids(input_ids: torch.Tensor, *, what: str = "input_ids") -> None:
    """Integer ids of shape [batch, pos], neither empty nor negative."""
    if input_ids.dtype not in (torch.int64, torch.int32):
        raise ModelInputError(f"{what} must be integer token ids, got dtype {input_ids.dtype}")
    if input_ids.ndim != 2:
        raise ModelInputError(f"{what} must have shape [batch, pos], got {tuple(input_ids.shape)}")
    if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
        raise ModelInputError(
            f"{what} are empty (shape {tuple(input_ids.shape)}); give at least one prompt of at least "
            "one token (Maira2Processor builds them from studies)"
        )
    if bool((input_ids < 0).any()):
        raise ModelInputError(f"{what} contain negative token ids")


def check_image_runs(
    input_ids: torch.Tensor, image_token_id: int, n_patches: int, *, what: str = "input_ids"
) -> None:
    """Every run of image tokens in every row is a whole number of images (``n_patches`` each).

    A run of 1.5 images would take the second half of its image from the next row's features.
    """
    is_image = (input_ids == image_token_id).to(torch.int8)
    if not bool(is_image.any()):
        return
    edges = torch.nn.functional.pad(is_image, (1, 1)).diff(dim=1)
    starts = (edges == 1).nonzero()  # (row, first position), row-major like ends
    ends = (edges == -1).nonzero()
    lengths = ends[:, 1] - starts[:, 1]
    bad = (lengths % n_patches != 0).nonzero().flatten().tolist()
    if bad:
        i = bad[0]
        row, start, length = int(starts[i, 0]), int(starts[i, 1]), int(lengths[i])
        raise ModelInputError(
            f"row {row} of {what} has a run of {length} image tokens at position {start}, which is "
            f"not a whole number of images of {n_patches} patches ({length / n_patches:.3g}); "
            f"each image needs exactly {n_patches} consecutive image tokens: build prompts with "
            "Maira2Processor and do not cut them inside an image"
        )


def check_image_count(
    input_ids: torch.Tensor, image_token_id: int, n_patches: int, n_images: int
) -> None:
    """The image tokens of the batch account for exactly ``n_images`` images."""
    n_tokens = int((input_ids == image_token_id).sum())
    if n_tokens != n_images * n_patches:
        raise ModelInputError(
            f"input_ids hold {n_tokens} image tokens ({n_tokens / n_patches:g} images "
            f"of {n_patches} patches) but {n_images} images were given; each image needs exactly "
            f"{n_patches} image tokens, in order of appearance"
        )


def check_model_batch(
    input_ids: torch.Tensor,
    pixel_values: torch.Tensor | None,
    *,
    image_token_id: int,
    n_patches: int,
    image_size: int | None = None,
) -> None:
    """All checks of one batch: ids, image runs per row, pixels, and images matching their tokens."""
    check_token_ids(input_ids)
    check_image_runs(input_ids, image_token_id, n_patches)
    if pixel_values is not None:
        check_pixel_values(pixel_values, image_size=image_size)
        check_image_count(input_ids, image_token_id, n_patches, int(pixel_values.shape[0]))
