"""The embedded default problem: a pixel DDPM trained by the project on Fashion-MNIST.

Its weights, feature classifier, real-image statistics and its teacher's features on 32 and 256
images (``teacher_store``) ship in this folder, so flexnas runs offline on a CPU with nothing to download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flexnas.errors import FlexnasError
from flexnas.models.problem import Problem
from problems.fashion_mnist.model import CLASSIFIER_DIR, PIPELINE_DIR, WEIGHTS_DIR

FEATURE_EXTRACTOR = "fashion-mnist-classifier"
REAL_STATISTICS = WEIGHTS_DIR / "fashion_mnist_test_stats.npz"
SHIPPED_FEATURES = WEIGHTS_DIR / "store"


def load_pretrained(cls: Any, folder: Path) -> Any:
    """``cls.from_pretrained(folder)`` offline, with one clear error line if the folder is unusable."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FlexnasError(f"weights folder {folder} is missing: restore it from the repository (git checkout -- {folder})")
    from diffusers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - diffusers raises many types for unreadable folders
        raise FlexnasError(f"weights folder {folder} is corrupt or incomplete ({type(e).__name__}): "
                           f"restore it from the repository (git checkout -- {folder})") from None


def load_pipeline(folder: Path = PIPELINE_DIR) -> Any:
    from diffusers import DDPMPipeline

    pipe = load_pretrained(DDPMPipeline, folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_classifier(folder: Path = CLASSIFIER_DIR) -> Any:
    from problems.fashion_mnist.classifier import FashionClassifier

    return load_pretrained(FashionClassifier, folder).eval()


def make_problem(model: str | Path | None = None, **overrides: Any) -> Problem:
    """The embedded problem; ``model`` (``--model DIR``): its settings on another DDPMPipeline folder."""
    import functools

    import problems.fashion_mnist.features  # noqa: F401 - registers the extractor with torch-fidelity

    kw: dict[str, Any] = dict(
        name="fashion-mnist",
        load_pipeline=load_pipeline,
        scheduler="DDIMScheduler",
        T=100,
        num_images=64,
        # fidelity re-scoring needs the teacher's images too (shipped for 32 and 256, about 3 min per 256 to sample); the paired
        # distance on 256 images ranks plans with Kendall tau 0.97 against 2,000 (benchmarks/REPORT.md)
        rescore_images={"quality": 1000, "fidelity": 256},
        batch_size=64,
        seed=0,
        feature_extractor=FEATURE_EXTRACTOR,
        real_statistics=REAL_STATISTICS,
        shipped_features=SHIPPED_FEATURES,
        description="pixel DDPM (UNet2DModel, 28x28, 2.7M params) trained on Fashion-MNIST; DDIM 100",
    )
    if model is not None:
        kw["load_pipeline"] = functools.partial(load_pipeline, Path(model))
    kw.update(overrides)
    return Problem(**kw)
