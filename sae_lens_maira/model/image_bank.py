"""Images addressable by token ids beyond the vocabulary ("virtual image tokens").

SAELens's ActivationsStore and evals hand the model nothing but token ids. To run multimodal
studies through them unchanged, each image patch gets its own id ``d_vocab + image * n_patches +
patch``; ``HookedMaira2``'s embedding recognises such ids, fetches the image from the attached
bank, runs the vision tower and projector and writes the patch's embedding at that position.
Ids are self-describing, so any slicing, shuffling or batching of token sequences stays correct.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from sae_lens_maira.data.study import ImageRef
from sae_lens_maira.processing.images import ImagePreprocessor


class ImageBank:
    """An append-only list of images, preprocessed on demand, picklable for worker processes."""

    def __init__(
        self, images: Sequence[ImageRef] = (), preprocessor: ImagePreprocessor | None = None
    ) -> None:
        self.preprocessor = preprocessor or ImagePreprocessor()
        self._images: list[ImageRef | torch.Tensor] = list(images)

    def __len__(self) -> int:
        return len(self._images)

    def add(self, image: ImageRef | torch.Tensor) -> int:
        """Store an image (path, PIL, array, or an already preprocessed [3, H, W] tensor)."""
        self._images.append(image)
        return len(self._images) - 1

    def extend(self, images: Sequence[ImageRef | torch.Tensor]) -> list[int]:
        return [self.add(im) for im in images]

    def pixel_values(self, indices: Sequence[int]) -> torch.Tensor:
        """Preprocessed pixels [len(indices), 3, H, W] for the given image indices."""
        out = []
        for i in indices:
            if not 0 <= i < len(self._images):
                raise IndexError(
                    f"virtual image token refers to image {i}, but the attached ImageBank holds "
                    f"{len(self._images)} images; attach the bank the tokens were made with"
                )
            image = self._images[i]
            out.append(image if isinstance(image, torch.Tensor) else self.preprocessor(image)[0])
        return torch.stack(out)


def virtual_image_ids(base: int, image_index: int, n_patches: int) -> torch.Tensor:
    """The ``n_patches`` ids standing for image ``image_index`` (``base`` = the model's d_vocab)."""
    start = base + image_index * n_patches
    return torch.arange(start, start + n_patches, dtype=torch.long)


def split_virtual_ids(
    ids: torch.Tensor, base: int, n_patches: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, patch index) of virtual ids."""
    offset = ids - base
    return offset // n_patches, offset % n_patches
