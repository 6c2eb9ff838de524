"""The token embedding with image splicing: TransformerLens's ``Embed`` plus MAIRA-2's images.

Positions holding the image token id receive the projected image features of the current call
(in order of appearance, as transformers' LLaVA ``masked_scatter`` does); ids at or beyond
``d_vocab`` are virtual image tokens resolved through the model's image bank. Everything else is
an ordinary ``W_E`` lookup, and the weight keeps TransformerLens's name ``embed.W_E``.

The images are an input of the lookup: ``embed(tokens, image_embeds)``. TransformerLens's
forward calls ``embed(tokens)`` itself, so ``HookedMaira2.forward`` hands them over with
``with embed.images(image_embeds):``, which scopes them to that block: every lookup inside it
splices them (a lookup is a pure function of its tokens and the block's images; nothing is
consumed), no lookup outside it sees them, and the enclosing value comes back on exit, on an
error too. A lookup without images treats image ids as plain tokens (a generated ``<image>``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformer_lens import HookedTransformerConfig

VirtualResolver = Callable[[torch.Tensor], torch.Tensor]  # ids [n] -> embeddings [n, d_model]


class MultimodalEmbed(nn.Module):
    def __init__(self, cfg: HookedTransformerConfig, image_token_id: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.image_token_id = image_token_id
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))
        self._scoped_images: torch.Tensor | None = None  # set only inside ``images()``
        self.resolve_virtual: VirtualResolver | None = None

    @contextmanager
    def images(self, image_embeds: torch.Tensor | None) -> Iterator[None]:
        """Inside the block, lookups given no images splice ``image_embeds``
        [n_images, n_patches, d_model] (``None``: none); the enclosing value comes back after."""
        previous = self._scoped_images
        self._scoped_images = image_embeds
        try:
            yield
        finally:
            self._scoped_images = previous

    @property
    def scoped_images(self) -> torch.Tensor | None:
        """The images of the enclosing ``images()`` block (``None`` outside one)."""
        return self._scoped_images

    def forward(
        self, tokens: torch.Tensor, image_embeds: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Embeddings of ``tokens``; image-token positions get ``image_embeds`` (default: the
        enclosing ``images()`` block's), in order of appearance."""
        if image_embeds is None:
            image_embeds = self._scoped_images
        virtual = tokens >= self.cfg.d_vocab
        has_virtual = bool(virtual.any())
        embeds = self.W_E[tokens.masked_fill(virtual, 0) if has_virtual else tokens]
        if image_embeds is not None:
            is_image = tokens == self.image_token_id
            if bool(is_image.any()):
                feats = image_embeds.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
                embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats)
        if has_virtual:
            if self.resolve_virtual is None:
                raise ValueError(
                    f"token ids >= d_vocab ({self.cfg.d_vocab}) are virtual image tokens, but no "
                    "ImageBank is attached; call model.attach_image_bank(bank) first"
                )
            embeds = embeds.clone()
            embeds[virtual] = self.resolve_virtual(tokens[virtual]).to(embeds.dtype)
        return embeds
