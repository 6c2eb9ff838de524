"""The input contract of the statistics pass: batches of prompts already run through MAIRA-2 + an SAE.

The model side (HookedMaira2 -> ``run_with_cache(stop_at_layer=L+1)`` -> ``sae.encode``) produces
:class:`SequenceBatch` objects; everything in ``dashboards/`` and ``autointerp/`` is built against
this contract only, so it can be tested on synthetic batches whose truth is known.

Token positions are summarised as *display ids* (int32) wherever examples are stored:
``>= 0`` a text token id, ``-1`` no token (outside the sequence or padding), ``<= -2`` an image
patch ``-2 - (image * n_patches + patch)``, named as a pseudo-token like ``<img0:r12c07>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from sae_lens_maira.processing.roles import IMAGE_SLOTS, Role

NO_TOKEN = -1


def image_display_id(image: torch.Tensor | int, patch: torch.Tensor | int, n_patches: int):
    """Display id of an image patch (works on ints and tensors alike)."""
    return -2 - (image * n_patches + patch)


def topk_feature_acts(indices: torch.Tensor, values: torch.Tensor, d_sae: int) -> torch.Tensor:
    """Sparse COO ``[B, T, d_sae]`` feature activations from a top-k SAE's ``indices`` and ``values``
    ``[B, T, k]`` (as ``torch.topk`` gives them), for :class:`SequenceBatch` without a dense copy."""
    if indices.shape != values.shape or indices.ndim != 3:
        raise ValueError(
            f"indices and values must both be [batch, tokens, k], got {tuple(indices.shape)} "
            f"and {tuple(values.shape)}"
        )
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= d_sae):
        raise ValueError(f"indices must lie in [0, d_sae={d_sae})")
    b, t, k = indices.shape
    dev = indices.device
    bi = torch.arange(b, device=dev).view(b, 1, 1).expand(b, t, k)
    ti = torch.arange(t, device=dev).view(1, t, 1).expand(b, t, k)
    coords = torch.stack([bi.reshape(-1), ti.reshape(-1), indices.reshape(-1).long()])
    coo = torch.sparse_coo_tensor(coords, values.reshape(-1), (b, t, d_sae), check_invariants=False)
    return coo.coalesce()  # indices were checked above


@dataclass
class SequenceBatch:
    """One batch of prompts with their SAE feature activations (shapes in the field comments)."""

    study_ids: list[str]  # [B]
    token_ids: torch.Tensor  # [B, T] long; image patch positions hold the image token id
    # [B, T, d_sae] any float dtype (bf16 on GPU is fine), dense or sparse COO (a top-k SAE's codes,
    # see :func:`topk_feature_acts`; the statistics pass then skips its one dense scan)
    feature_acts: torch.Tensor
    mask: torch.Tensor  # [B, T] bool, real (non-pad) positions
    roles: torch.Tensor  # [B, T] long, Role values
    image_index: torch.Tensor  # [B, T] long, image slot in prompt order, -1 for text
    patch_index: torch.Tensor  # [B, T] long, row-major patch index within its image, -1 for text
    grid: tuple[int, int]  # patch grid (rows, cols)
    images: list[list[Image.Image | None]] | None = None  # per study, images in prompt order

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def validate(self, d_sae: int | None = None) -> None:
        """Raise ValueError naming the first field whose shape, dtype or values break the contract."""
        if self.feature_acts.ndim != 3:
            raise ValueError(
                f"feature_acts must be [batch, tokens, d_sae], got shape {tuple(self.feature_acts.shape)}"
            )
        b, t, f = self.feature_acts.shape
        if self.feature_acts.layout not in (torch.strided, torch.sparse_coo):
            raise ValueError(
                f"feature_acts must be dense or sparse COO, got layout {self.feature_acts.layout}; "
                "convert it with .to_sparse_coo()"
            )
        if not self.feature_acts.is_floating_point():
            raise ValueError(f"feature_acts must be a float tensor, got {self.feature_acts.dtype}")
        if d_sae is not None and f != d_sae:
            raise ValueError(
                f"feature_acts has d_sae={f} but the statistics were set up for d_sae={d_sae}; "
                "use one collector per SAE"
            )
        if len(self.study_ids) != b:
            raise ValueError(f"study_ids has {len(self.study_ids)} entries for a batch of {b}")
        for name in ("token_ids", "mask", "roles", "image_index", "patch_index"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != (b, t):
                shape = (
                    tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                )
                raise ValueError(f"{name} must be a tensor of shape [{b}, {t}], got {shape}")
        if self.mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor, got {self.mask.dtype}")
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be (rows, cols) with positive sizes, got {self.grid}")
        is_img = self.image_index >= 0
        if bool(((self.patch_index >= 0) != is_img).any()):
            raise ValueError(
                "image_index and patch_index disagree: a position is an image patch exactly when both are >= 0"
            )
        if bool((self.patch_index >= self.n_patches).any()):
            raise ValueError(
                f"patch_index has values >= rows*cols = {self.n_patches}; check `grid` {self.grid}"
            )
        valid_roles = torch.tensor([int(r) for r in Role], device=self.roles.device)
        if bool((~torch.isin(self.roles, valid_roles)).any()):
            raise ValueError("roles holds values that are not sae_lens_maira.processing.roles.Role")
        if self.images is not None and len(self.images) != b:
            raise ValueError(f"images has {len(self.images)} entries for a batch of {b}")

    def to(self, device: torch.device | str) -> SequenceBatch:
        """The same batch with every tensor on ``device``."""
        kw = {
            n: getattr(self, n).to(device)
            for n in ("token_ids", "feature_acts", "mask", "roles", "image_index", "patch_index")
        }
        return SequenceBatch(self.study_ids, grid=self.grid, images=self.images, **kw)


@dataclass
class TokenNamer:
    """Turns display ids into strings: text ids through the vocabulary, image patches as pseudo-tokens.

    ``vocab`` is either a list (id -> string) or a function (e.g. a tokenizer's ``convert_ids_to_tokens``
    wrapped to one id). Image pseudo-tokens look like ``<img0:r12c07>``; :meth:`image_slot` gives the
    slot name (frontal, lateral, prior_frontal).
    """

    vocab: Sequence[str] | Callable[[int], str]
    grid: tuple[int, int]
    slot_names: tuple[str, ...] = IMAGE_SLOTS

    @property
    def n_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def text(self, token_id: int) -> str:
        if callable(self.vocab):
            return str(self.vocab(token_id))
        if not 0 <= token_id < len(self.vocab):
            raise ValueError(
                f"token id {token_id} is outside the vocabulary of {len(self.vocab)} strings; "
                "pass the tokenizer's full vocabulary (including added tokens)"
            )
        return self.vocab[token_id]

    def split_image(self, display_id: int) -> tuple[int, int]:
        """(image slot, patch index) of an image display id."""
        code = -2 - display_id
        return code // self.n_patches, code % self.n_patches

    def image_slot(self, display_id: int) -> str:
        img, _ = self.split_image(display_id)
        return self.slot_names[img] if img < len(self.slot_names) else f"image{img}"

    def __call__(self, display_id: int) -> str:
        if display_id >= 0:
            return self.text(display_id)
        if display_id == NO_TOKEN:
            return ""
        img, patch = self.split_image(display_id)
        row, col = divmod(patch, self.grid[1])
        return f"<img{img}:r{row:02d}c{col:02d}>"


@dataclass
class DashboardMeta:
    """What the exports say about the run: model, layer, hook, SAE set and Neuronpedia ids."""

    model_id: str = "maira-2"
    layer: int = 15
    hook_name: str = "blocks.15.hook_resid_post"
    sae_set: str = "maira-2-sae"
    d_sae: int = 0
    source_set: str = "res-mat"  # Neuronpedia source set: source id is f"{layer}-{source_set}"
    sae_id_suffix: str | None = None
    dataset: str = ""
    creator: str = "sae-lens-maira"
    release: str = "maira-2-sae"
    hf_repo_id: str | None = "microsoft/maira-2-sae"
    hf_folder_id: str | None = None
    saelens_release: str | None = None
    saelens_sae_id: str | None = None
    saelens_config: dict[str, Any] = field(default_factory=dict)
    description: str = "Matryoshka BatchTopK SAE on MAIRA-2's residual stream"
    #: the model's layer count and width (Neuronpedia's model row), recorded by ``collect``
    n_layers: int | None = None
    d_model: int | None = None

    @property
    def source_id(self) -> str:
        """Neuronpedia source id ``<layer>-<sourceSet>[__suffix]``."""
        sid = f"{self.layer}-{self.source_set}"
        return f"{sid}__{self.sae_id_suffix}" if self.sae_id_suffix else sid

    @property
    def neuronpedia_id(self) -> str:
        return f"{self.model_id}/{self.source_id}"

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DashboardMeta:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)
