"""Stable Diffusion XL base 1.0 (``StableDiffusionXLPipeline``: ``UNet2DConditionModel`` on 4x128x128
latents with two CLIP text encoders, pooled-text and size conditioning, VAE), searched on its stock
Euler 50 (``EulerDiscreteScheduler``) with classifier-free guidance 5.0.

Prompts come from a text or JSON file (``--prompts FILE``); by default the list that ships with
flexnas (``flexnas/models/default_prompts.txt``). The negative prompt is the pipeline's default
(zero embeddings). Euler takes custom timesteps, so NULL steps are dropped ("drop").
"""

from __future__ import annotations

from typing import Any

from flexnas.models.pretrained import problem_from_pretrained
from flexnas.models.prompts import DEFAULT_PROMPTS

MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


def make_problem(model: str = MODEL, **overrides: Any):
    kw: dict[str, Any] = dict(
        name="sdxl",
        scheduler="EulerDiscreteScheduler",
        T=50,
        guidance_scale=5.0,
        prompts=DEFAULT_PROMPTS,
        num_images=64,
        batch_size=8,
        seed=0,
        device="auto",
        feature_extractor="inception-v3-compat",
        description=f"Stable Diffusion XL base 1.0 (UNet2DConditionModel, 1024x1024, two CLIP text encoders) "
                    f"from {model}; Euler 50, guidance 5.0",
    )
    kw.update(overrides)
    return problem_from_pretrained(model, **kw)
