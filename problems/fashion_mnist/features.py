"""The embedded default's feature space: penultimate features of the Fashion-MNIST classifier."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from flexnas.metrics.features import ModuleFeatureExtractor, register_extractor
from problems.fashion_mnist.model import CLASSIFIER_DIR

NAME = "fashion-mnist-classifier"


class FashionFeatureExtractor(ModuleFeatureExtractor):
    provided = ("features", "logits")

    def load(self, weights_path: str | None) -> torch.nn.Module:
        from problems.fashion_mnist import load_classifier

        return load_classifier(Path(weights_path) if weights_path else CLASSIFIER_DIR)

    def embed(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x_uint8[:, :1].float().div(127.5).sub(1.0)
        if x.shape[-2:] != (28, 28):
            x = F.interpolate(x, size=(28, 28), mode="bilinear", antialias=True, align_corners=False)
        feats = self.module.features(x)
        return feats, self.module.head(feats)


register_extractor(NAME, FashionFeatureExtractor)
