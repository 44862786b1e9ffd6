"""Unconditional latent diffusion on CelebA-HQ 256 (``CompVis/ldm-celebahq-256`` layout:
``LDMPipeline`` = ``UNet2DModel`` on 3x64x64 latents + ``VQModel`` decoder + DDIM), searched on DDIM 250.

The VQ decode is part of every generated image (``vqvae.decode(latents / scaling_factor)``,
exactly as ``LDMPipeline``); its MACs are reported separately from the U-Net's.
"""

from __future__ import annotations

from typing import Any

from flexnas.models.pretrained import problem_from_pretrained

MODEL = "CompVis/ldm-celebahq-256"


def make_problem(model: str = MODEL, **overrides: Any):
    kw: dict[str, Any] = dict(
        name="ldm-celebahq",
        scheduler="DDIMScheduler",
        T=250,
        num_images=256,
        batch_size=64,
        seed=0,
        device="auto",
        feature_extractor="inception-v3-compat",
        description=f"latent diffusion on CelebA-HQ 256 (UNet2DModel on 3x64x64 VQ latents) from {model}; DDIM 250",
    )
    kw.update(overrides)
    return problem_from_pretrained(model, **kw)
