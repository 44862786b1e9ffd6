"""Feature extractors for FID and rFID, registered with torch-fidelity by name.

torch-fidelity ships Inception-v3 (``inception-v3-compat``) but downloads its weights on
first use; flexnas never downloads, so Inception needs its weights file locally. Problems
register their own extractors (e.g. the embedded Fashion-MNIST classifier) through
``register_extractor``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from flexnas.errors import FlexnasError
from flexnas.fingerprint import module_digest

INCEPTION = "inception-v3-compat"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] ``[N, C, H, W]`` to uint8 ``[N, 3, H, W]`` (grayscale repeated), on their own device
    (a GPU's images reach the feature extractor without a round trip through host memory)."""
    x = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x[:, :3]


def register_extractor(name: str, cls: type) -> None:
    """Register ``cls`` with torch-fidelity under ``name`` (idempotent)."""
    if FEATURE_EXTRACTORS_REGISTRY.get(name) is not cls:
        register_feature_extractor(name, cls)


def inception_weights(path: str | Path | None = None) -> Path:
    """The local Inception-v3 weights file: ``path``, else ``$TORCH_HOME/hub/checkpoints``."""
    if path is None:
        path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    path = Path(path)
    if not path.is_file():
        raise FlexnasError(f"Inception-v3 weights not found at {path}: copy {INCEPTION_FILE} there (or pass its path "
                           "with --inception-weights); flexnas never downloads at run time")
    return path


def resolve_extractor(name: str, weights: str | Path | None = None) -> dict[str, Any]:
    """torch-fidelity keyword arguments for extractor ``name``, checked before any sampling."""
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        known = ", ".join(sorted(FEATURE_EXTRACTORS_REGISTRY))
        raise FlexnasError(f"unknown feature extractor {name!r}: registered ones are {known}")
    kw: dict[str, Any] = {"feature_extractor": name}
    if name.startswith("inception"):
        kw["feature_extractor_weights_path"] = str(inception_weights(weights))
    elif weights is not None:
        kw["feature_extractor_weights_path"] = str(weights)
    return kw


@functools.lru_cache(maxsize=16)
def _fingerprint(name: str, weights: str | None) -> str:
    cls = FEATURE_EXTRACTORS_REGISTRY[name]
    layer = cls.get_default_feature_layer_for_metric("fid")
    kw = {"feature_extractor_weights_path": weights} if weights else {}
    return module_digest(cls(name, [layer], **kw), config=False)


def extractor_fingerprint(extractor_kw: dict[str, Any]) -> str:
    """A hash of the extractor's weights: cached statistics die with a retrained extractor."""
    return _fingerprint(extractor_kw["feature_extractor"], extractor_kw.get("feature_extractor_weights_path"))


class ModuleFeatureExtractor(FeatureExtractorBase):
    """Base for extractors that wrap a torch module: subclasses define ``load`` and ``embed``.

    torch-fidelity passes uint8 images ``[B, 3, H, W]``; grayscale models read channel 0.
    """

    provided: tuple[str, ...] = ("features",)

    def __init__(self, name: str, features_list: list[str], feature_extractor_weights_path: str | None = None,
                 **kwargs: Any):
        super().__init__(name, features_list)
        self.module = self.load(feature_extractor_weights_path)

    def load(self, weights_path: str | None) -> torch.nn.Module:
        raise NotImplementedError

    def embed(self, x_uint8: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    @classmethod
    def get_provided_features_list(cls) -> tuple[str, ...]:
        return cls.provided

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return "features"

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        return torch.zeros(1, 3, 28, 28, dtype=torch.uint8)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            feats = dict(zip(self.provided, self.embed(x)))
        return tuple(feats[name].float().cpu() for name in self.features_list)

