"""Stable Diffusion 1.5 (``StableDiffusionPipeline``: ``UNet2DConditionModel`` on 4x64x64 latents,
CLIP text encoder, VAE), searched on PLMS 50 (``PNDMScheduler`` with ``skip_prk_steps=True``)
with classifier-free guidance 7.5.

Prompts come from a text or JSON file (``--prompts FILE``); by default the short MS-COCO-style
list that ships with flexnas (``flexnas/models/default_prompts.txt``, 64 prompts). PLMS cannot drop
timesteps, so NULL steps reuse the last noise prediction (null mode "reuse").
"""

from __future__ import annotations

from typing import Any

from flexnas.models.pretrained import problem_from_pretrained
from flexnas.models.prompts import DEFAULT_PROMPTS

MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def make_problem(model: str = MODEL, **overrides: Any):
    kw: dict[str, Any] = dict(
        name="sd15",
        scheduler="PNDMScheduler",
        T=50,
        guidance_scale=7.5,
        prompts=DEFAULT_PROMPTS,
        num_images=64,
        batch_size=16,
        seed=0,
        device="auto",
        feature_extractor="inception-v3-compat",
        description=f"Stable Diffusion 1.5 (UNet2DConditionModel, 512x512, CLIP text) from {model}; PLMS 50, "
                    "guidance 7.5",
    )
    kw.update(overrides)
    return problem_from_pretrained(model, **kw)
