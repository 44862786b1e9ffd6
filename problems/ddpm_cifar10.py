"""DDPM on CIFAR-10 (``google/ddpm-cifar10-32`` layout: ``DDPMPipeline`` with a 35.7M-parameter
``UNet2DModel`` at 32x32), searched on DDIM 100 as in Flexiffusion.

``--problem ddpm-cifar10`` loads the hub id (from the local Hugging Face cache when offline);
``--problem ddpm-cifar10 --model DIR`` loads a local copy. rFID uses Inception-v3, whose weights
file must be local (see README).
"""

from __future__ import annotations

from typing import Any

from flexnas.models.pretrained import problem_from_pretrained

MODEL = "google/ddpm-cifar10-32"


def make_problem(model: str = MODEL, **overrides: Any):
    kw: dict[str, Any] = dict(
        name="ddpm-cifar10",
        scheduler="DDIMScheduler",
        T=100,
        num_images=1000,
        batch_size=250,
        seed=0,
        device="auto",
        feature_extractor="inception-v3-compat",
        description=f"pixel DDPM on CIFAR-10 (UNet2DModel, 32x32, 35.7M params) from {model}; DDIM 100",
    )
    kw.update(overrides)
    return problem_from_pretrained(model, **kw)
