"""A small Fashion-MNIST CNN whose penultimate layer is the embedded default's FID space.

Saved and loaded like a diffusers model (``save_pretrained``/``from_pretrained``:
``config.json`` + safetensors) so the repository ships it the same way as the U-Net.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class FashionClassifier(ModelMixin, ConfigMixin):
    """conv(32)-conv(64)-conv(128)-fc(feature_dim)-fc(10) on 28x28 grayscale in [-1, 1]."""

    @register_to_config
    def __init__(self, feature_dim: int = 64, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),    # 14
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),   # 7
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.feature = nn.Linear(128, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (after ReLU) of images in [-1, 1], shape [B, feature_dim]."""
        return F.relu(self.feature(self.conv(x).flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
