"""The token embedding with image splicing: TransformerLens's ``Embed`` plus MAIRA-2's images.

Positions holding the image token id receive the projected image features of the current call
(in order of appearance, as transformers' LLaVA ``masked_scatter`` does); ids at or beyond
``d_vocab`` are virtual image tokens resolved through the model's image bank. Everything else is
an ordinary ``W_E`` lookup, and the weight keeps TransformerLens's name ``embed.W_E``.
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
        self._image_embeds: torch.Tensor | None = None
        self.resolve_virtual: VirtualResolver | None = None

    @contextmanager
    def images(self, image_embeds: torch.Tensor | None) -> Iterator[None]:
        """Make ``image_embeds`` [n_images, n_patches, d_model] available to the next lookups."""
        previous = self._image_embeds
        self._image_embeds = image_embeds
        try:
            yield
        finally:
            self._image_embeds = previous

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        virtual = tokens >= self.cfg.d_vocab
        has_virtual = bool(virtual.any())
        embeds = self.W_E[tokens.masked_fill(virtual, 0) if has_virtual else tokens]
        if self._image_embeds is not None:
            is_image = tokens == self.image_token_id
            if bool(is_image.any()):
                feats = self._image_embeds.reshape(-1, embeds.shape[-1]).to(embeds.dtype)
                embeds = embeds.masked_scatter(is_image.unsqueeze(-1), feats)
                self._image_embeds = None  # consumed: later (generated) image ids are plain tokens
        if has_virtual:
            if self.resolve_virtual is None:
                raise ValueError(
                    f"token ids >= d_vocab ({self.cfg.d_vocab}) are virtual image tokens, but no "
                    "ImageBank is attached; call model.attach_image_bank(bank) first"
                )
            embeds = embeds.clone()
            embeds[virtual] = self.resolve_virtual(tokens[virtual]).to(embeds.dtype)
        return embeds
