"""One plan-driven sampler loop over any diffusers scheduler.

The loop is the one diffusers' own pipelines run (noise, ``set_timesteps``, U-Net,
optional classifier-free guidance, ``scheduler.step``); the plan acts through the hooks
of ``PlanController``, so an all-FULL plan reproduces the stock pipeline exactly.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

import torch
from diffusers.utils.torch_utils import randn_tensor

from flexnas.engine.controller import PlanController
from flexnas.engine.steps import StepCounter
from flexnas.plan.plan import Plan


@dataclass
class Conditioning:
    """What the denoiser is conditioned on; all fields optional.

    ``prompt_embeds``/``negative_prompt_embeds`` are text-encoder outputs ``[B, L, D]``;
    with ``guidance_scale > 1`` both halves go through the U-Net in one batched call. SDXL-style
    U-Nets also take pooled text embeddings ``[B, D]`` and size conditioning ``time_ids`` ``[B, 6]``
    (original size, crop corner, target size), passed as ``added_cond_kwargs`` as the stock pipeline does.
    """

    class_labels: torch.Tensor | None = None
    prompt_embeds: torch.Tensor | None = None
    negative_prompt_embeds: torch.Tensor | None = None
    guidance_scale: float = 1.0
    pooled_embeds: torch.Tensor | None = None
    negative_pooled_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    @property
    def cfg(self) -> bool:
        return self.prompt_embeds is not None and self.guidance_scale > 1.0

    def _both(self, negative: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
        return torch.cat([negative, positive]) if self.cfg else positive

    def unet_kwargs(self) -> dict[str, Any]:
        if self.prompt_embeds is not None:
            kw: dict[str, Any] = {"encoder_hidden_states": self._both(self.negative_prompt_embeds, self.prompt_embeds)}
            if self.pooled_embeds is not None:
                kw["added_cond_kwargs"] = {"text_embeds": self._both(self.negative_pooled_embeds, self.pooled_embeds),
                                           "time_ids": self._both(self.time_ids, self.time_ids)}
            return kw
        if self.class_labels is not None:
            return {"class_labels": self.class_labels}
        return {}


    def pipeline_kwargs(self) -> dict[str, Any]:
        """The same conditioning as a stock pipeline call's arguments (its own encoder is then skipped)."""
        kw: dict[str, Any] = {"prompt_embeds": self.prompt_embeds, "guidance_scale": self.guidance_scale}
        if self.cfg:
            kw["negative_prompt_embeds"] = self.negative_prompt_embeds
        if self.pooled_embeds is not None:
            kw["pooled_prompt_embeds"] = self.pooled_embeds
            if self.cfg:
                kw["negative_pooled_prompt_embeds"] = self.negative_pooled_embeds
        return kw


def step_kwargs(scheduler: Any, eta: float, generator: torch.Generator | None) -> dict[str, Any]:
    """Keyword arguments the scheduler's ``step`` accepts, as diffusers pipelines pass them."""
    params = inspect.signature(scheduler.step).parameters
    kw: dict[str, Any] = {}
    if "eta" in params:
        kw["eta"] = eta
    if "generator" in params:
        kw["generator"] = generator
    return kw


def initial_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: Any = "cpu",
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return randn_tensor(shape, generator=generator, device=torch.device(device), dtype=dtype)


@torch.no_grad()
def sample(unet: torch.nn.Module, scheduler: Any, T: int, shape: tuple[int, ...] | None = None, *,
           plan: Plan | None = None, noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
           cond: Conditioning | None = None, eta: float = 0.0, counter: StepCounter | None = None,
           controller: PlanController | None = None, start_step: int = 0, start_x: torch.Tensor | None = None,
           start_cache: dict | None = None, on_step: Callable[[int, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Run the sampler for ``T`` base steps under ``plan`` (None = stock) and return the final latents.

    Noise is ``noise`` if given, else drawn from ``generator`` exactly as diffusers
    pipelines draw it; stochastic schedulers draw their step noise from the same generator.
    A ``controller`` already installed for ``plan`` is reused (cheaper than re-hooking).
    With a plan, ``on_step(i, x)`` sees the latents before base step ``i``, and
    ``start_step``/``start_x``/``start_cache`` resume from latents and a feature cache stored there
    (stateless schedulers only; ``start_step`` is an active step, so no earlier output is needed).
    """
    cond = cond or Conditioning()
    if noise is None:
        noise = initial_noise(shape, generator, unet.device, unet.dtype)
    own = controller is None and plan is not None
    ctx = PlanController(unet, scheduler, plan) if own else contextlib.nullcontext(controller)
    with ctx as ctl:
        scheduler.set_timesteps(T)
        x = noise * scheduler.init_noise_sigma if start_x is None else start_x
        if start_cache is not None:
            ctl.partial.state.cache.update(start_cache)
        kw, skw = cond.unet_kwargs(), step_kwargs(scheduler, eta, generator)
        for t in scheduler.timesteps:
            if ctl is not None:
                i = ctl.step_index(t)
                if i < start_step:
                    continue
                if on_step is not None:
                    on_step(i, x)
            model_in = torch.cat([x] * 2) if cond.cfg else x
            model_in = scheduler.scale_model_input(model_in, t)
            out = unet(model_in, t, **kw, return_dict=False)[0]
            if cond.cfg:
                uncond, text = out.chunk(2)
                out = uncond + cond.guidance_scale * (text - uncond)
            x = scheduler.step(out, t, x, **skw, return_dict=False)[0]
        if counter is not None and ctl is not None:
            counter.add(ctl.counter)
            ctl.counter.reset()
    return x


def to_images(x: torch.Tensor, vae: Any = None) -> torch.Tensor:
    """Final latents to images in [0, 1] (decoding through ``vae`` for latent models).

    A half-precision VAE whose config says ``force_upcast`` (SDXL's overflows in fp16) decodes in
    float32 and is cast back afterwards, as the stock SDXL pipelines do.
    """
    if vae is not None:
        scale = getattr(vae.config, "scaling_factor", 1.0)
        upcast = vae.dtype == torch.float16 and getattr(vae.config, "force_upcast", False)
        if upcast:
            torch.nn.Module.to(vae, torch.float32)  # (diffusers' own .to warns about every dtype cast)
        try:
            with torch.no_grad():
                x = vae.decode(x.to(vae.dtype) / scale, return_dict=False)[0]
        finally:
            if upcast:
                torch.nn.Module.to(vae, torch.float16)
    return (x / 2 + 0.5).clamp(0, 1)
