"""RAD-DINO image tower and MAIRA-2's 4-layer projector.

The tower is transformers' ``Dinov2Backbone`` (the class MAIRA-2 itself uses), returning the last
stage's LayerNormed hidden states; the projector maps them into the language model's embedding
space. Parameter names match the hub checkpoint (``multi_modal_projector.layers.{0,2,4,6}``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Dinov2Backbone

from sae_lens_maira.checkpoint_config import Maira2Config


def build_vision_tower(config: Maira2Config) -> Dinov2Backbone:
    tower = Dinov2Backbone(config.dinov2_config())
    tower.requires_grad_(False)  # frozen in MAIRA-2; unfreeze explicitly to fine-tune
    return tower


class Maira2Projector(nn.Module):
    """``n_layers`` Linear layers with GELU between them: d_vision -> d_model -> ... -> d_model."""

    def __init__(self, d_vision: int, d_model: int, n_layers: int = 4) -> None:
        super().__init__()
        modules: list[nn.Module] = [nn.Linear(d_vision, d_model)]
        for _ in range(n_layers - 1):
            modules += [nn.GELU(), nn.Linear(d_model, d_model)]
        self.layers = nn.Sequential(*modules)

    @property
    def first_layer(self) -> nn.Linear:
        """The first Linear (its weight has the projector's device and dtype)."""
        layer = self.layers[0]
        assert isinstance(layer, nn.Linear)
        return layer

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)
