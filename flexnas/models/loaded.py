"""A problem with its pipeline in memory: images for any plan from the problem's fixed noise."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from flexnas.engine.apply import apply
from flexnas.engine.compiled import compile_by_default, compiled_forward
from flexnas.engine.controller import PlanController
from flexnas.engine.controlnet import check_controlnet_reuse
from flexnas.engine.partial import PartialUNet, list_branches
from flexnas.engine.sampler import Conditioning, initial_noise, sample, to_images
from flexnas.engine.steps import StepCounter, is_ddim
from flexnas.errors import FlexnasError
from flexnas.fingerprint import module_digest
from flexnas.models.device import resolve_device, resolve_dtype
from flexnas.models.inputs import ImageInputs
from flexnas.models.lockstep import lockstep_default
from flexnas.plan.plan import Plan, StepKind

if TYPE_CHECKING:
    from flexnas.models.problem import Problem


def vae_scale_factor(vae: Any) -> int:
    """Pixels per latent cell of a diffusers VAE / VQ model (2 ** (levels - 1)), 1 without one."""
    if vae is None:
        return 1
    return 2 ** (len(vae.config.block_out_channels) - 1)


class LoadedModel:
    """A problem with its pipeline in memory: generates images for any plan from fixed noise.

    The whole pipeline (U-Net, VAE, text encoder) is moved to the problem's device and dtype.
    Initial noise is drawn on the CPU (``torch.Generator("cpu")``) in the model's dtype and then
    moved, so a seed gives the same noise on every device, exactly as a stock pipeline called
    with a CPU generator draws it.
    """

    def __init__(self, problem: Problem, device: str | None = None, dtype: str | None = None):
        import diffusers

        self.problem = problem
        self.device = resolve_device(device or problem.device)
        dtype = resolve_dtype(dtype or problem.dtype, self.device)
        self.pipeline = problem.load_pipeline()
        self.unet = getattr(self.pipeline, "unet", None)
        if self.unet is None:
            raise FlexnasError(f"problem {problem.name}: the pipeline has no 'unet' denoiser; flexnas supports "
                               "UNet2DModel and UNet2DConditionModel")
        self.vae = getattr(self.pipeline, "vae", None) or getattr(self.pipeline, "vqvae", None)
        self.controlnet = getattr(self.pipeline, "controlnet", None)
        (problem.inputs or ImageInputs()).check(type(self.pipeline), self.controlnet is not None)
        if isinstance(self.pipeline, diffusers.DiffusionPipeline):
            self.pipeline.to(device=self.device, dtype=dtype)
        else:
            for module in (self.unet, self.vae):
                if module is not None:
                    module.to(device=self.device, dtype=dtype)
        self.unet.eval()
        if self.vae is not None:
            self.vae.eval()
        self.dtype = self.unet.dtype
        self.branches = list_branches(self.unet)
        self.partial = PartialUNet(self.unet, keep=True)
        self.compiled = compile_by_default(self.device) if problem.compile is None else problem.compile
        self.forward = compiled_forward(self.unet, len(self.branches)) if self.compiled else None
        self.lockstep = lockstep_default(self.device) if problem.lockstep is None else problem.lockstep
        cls = getattr(diffusers, problem.scheduler, None)
        if cls is None:
            raise FlexnasError(f"unknown scheduler {problem.scheduler!r}: name a diffusers scheduler class")
        self.scheduler = cls.from_config(self.pipeline.scheduler.config, **problem.scheduler_kwargs)
        if problem.inputs is not None:  # the pipeline call samples these problems, on the problem's scheduler
            self.pipeline.scheduler = self.scheduler
        n_train = getattr(self.scheduler.config, "num_train_timesteps", None)
        if n_train is not None and not 1 <= problem.T <= n_train:
            raise FlexnasError(f"{problem.T} steps do not fit {problem.scheduler}: the model was trained with "
                               f"{n_train} timesteps, so T must be in 1..{n_train}")
        self.sample_shape = self._sample_shape()
        self._identity: str | None = None

    def _sample_shape(self) -> tuple[int, ...]:
        cfg = self.unet.config
        if self.problem.resolution is None:
            size = cfg.sample_size
            return (cfg.in_channels, *size) if isinstance(size, (tuple, list)) else (cfg.in_channels, size, size)
        res, scale = self.problem.resolution, vae_scale_factor(self.vae)
        multiple = scale * 2 ** (len(self.unet.down_blocks) - 1)
        if res < multiple or res % multiple:
            raise FlexnasError(f"resolution {res} does not fit {self.problem.name}: it must be a multiple of "
                               f"{multiple} (VAE factor {scale} x U-Net downsampling {multiple // scale})")
        return (cfg.in_channels, res // scale, res // scale)

    @property
    def vae_scale(self) -> int:
        return vae_scale_factor(self.vae)

    @property
    def identity(self) -> str:
        """A short hash of the U-Net (and VAE) weights and config: the model part of cache keys."""
        if self._identity is None:
            self._identity = module_digest(self.unet, self.vae, self.controlnet)
        return self._identity

    def prompts(self, start: int, stop: int) -> list[str] | None:
        """The prompt texts of images ``start..stop`` (None for problems without prompts)."""
        ps = self.problem.prompts
        return [ps[i % len(ps)] for i in range(start, stop)] if ps else None

    def conditioning(self, start: int, stop: int) -> Conditioning:
        p = self.problem
        if p.encode_prompts is not None:
            cond = p.encode_prompts(self.pipeline, start, stop)
            if cond.pooled_embeds is not None and cond.time_ids is None:  # SDXL: the stock size conditioning
                h, w = (s * self.vae_scale for s in self.sample_shape[1:])
                ids = torch.tensor([[h, w, 0, 0, h, w]], dtype=cond.prompt_embeds.dtype, device=self.device)
                cond.time_ids = ids.repeat(stop - start, 1)
            return cond
        if p.class_labels:
            labels = torch.tensor([p.class_labels[i % len(p.class_labels)] for i in range(start, stop)],
                                  device=self.device)
            return Conditioning(class_labels=labels)
        return Conditioning()

    def batches(self, n: int) -> list[tuple[int, int]]:
        bs = self.problem.batch_size
        return [(s, min(s + bs, n)) for s in range(0, n, bs)]

    def noise(self, start: int, stop: int, seed: int) -> tuple[torch.Tensor, torch.Generator]:
        """Initial noise of images ``start..stop``: batch ``b`` draws from ``Generator("cpu")`` seeded ``seed + b``.

        Drawn on the CPU and moved, so the same seed gives the same noise on every device (stochastic
        schedulers draw their step noise from the same CPU generator).
        """
        g = torch.Generator("cpu").manual_seed(seed + start // self.problem.batch_size)
        return initial_noise((stop - start, *self.sample_shape), g, self.device, self.unet.dtype), g

    @torch.no_grad()
    def latents(self, plan: Plan | None, n: int | None = None, seed: int | None = None,
                counter: StepCounter | None = None, prefixes: Any = None,
                start: int = 0) -> torch.Tensor:
        """Final latents of images ``start..n`` under ``plan`` (None = teacher), from the problem's fixed noise.

        ``start`` must be a batch boundary: batch ``b`` always draws from seed ``seed + b``. A plan's
        own ``T`` is its base schedule (a stock ``num_inference_steps=k`` run is ``Plan.teacher(.., k)``).

        With a ``prefixes`` store (stateless schedulers such as DDIM), a plan whose steps up to one of
        its active steps equal an earlier plan's starts from the state stored there.
        """
        p = self.problem
        n = p.num_images if n is None else n
        seed = p.seed if seed is None else seed
        if n < 1:
            raise FlexnasError(f"number of images must be at least 1, got {n}")
        plan = plan or p.teacher_plan()
        check_controlnet_reuse(plan, self.controlnet, f"problem {p.name}")
        if start % p.batch_size:
            raise FlexnasError(f"start {start} is not a multiple of the batch size {p.batch_size}")
        if p.inputs is not None:
            return self._called_latents(plan, n, seed, counter, start)
        if prefixes is not None and not is_ddim(self.scheduler):
            prefixes = None  # a multistep scheduler's state is more than the latents
        out, active = [], [s.kind is not StepKind.NULL for s in plan.steps]
        with PlanController(self.unet, self.scheduler, plan, forward=self.forward) as ctl:
            for first, stop in self.batches(n):
                if first < start:
                    continue
                noise, g = self.noise(first, stop, seed)
                batch_key = (seed, first, stop)
                start_step, start_x, start_cache = 0, None, None
                if prefixes is not None:
                    hit = prefixes.longest(plan, batch_key)
                    if hit is not None:
                        start_step, start_x, g_state, start_cache = hit
                        g.set_state(g_state)

                def on_step(i: int, x: torch.Tensor, g: torch.Generator = g, batch_key: tuple = batch_key) -> None:
                    if prefixes is not None and i > start_step and active[i]:
                        prefixes.put(plan, i, batch_key, x, g.get_state(), ctl.partial.state.cache)

                out.append(sample(self.unet, self.scheduler, plan.T, plan=plan, noise=noise, generator=g,
                                  cond=self.conditioning(first, stop), eta=p.eta, counter=counter, controller=ctl,
                                  start_step=start_step, start_x=start_x, start_cache=start_cache,
                                  on_step=on_step))
        return torch.cat(out)

    def _called_latents(self, plan: Plan, n: int, seed: int, counter: StepCounter | None, start: int) -> torch.Tensor:
        """Latents of a problem with image inputs: the stock pipeline called under the plan, batch ``b``
        with ``Generator("cpu")`` seeded ``seed + b`` (the init image's encoding and its noise come from it)."""
        import inspect

        p, out = self.problem, []
        h, w = (s * self.vae_scale for s in self.sample_shape[1:])
        extra = {"eta": p.eta} if "eta" in inspect.signature(self.pipeline.__call__).parameters else {}
        with apply(self.pipeline, plan, forward=self.forward) as ctl:
            for first, stop in self.batches(n):
                if first < start:
                    continue
                g = torch.Generator("cpu").manual_seed(seed + first // p.batch_size)
                kw = {**self.conditioning(first, stop).pipeline_kwargs(), **p.inputs.call_kwargs(
                    self.pipeline, first, stop, (w, h)), **extra}
                out.append(self.pipeline(**kw, num_inference_steps=plan.T, height=h, width=w, generator=g,
                                         output_type="latent", return_dict=False)[0])
            if counter is not None:
                counter.add(ctl.counter)
        return torch.cat(out)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Final latents to float32 CPU images in [0, 1], decoded batch by batch (VAE/VQ for latent models).

        The decode is the stock pipelines' own (``vae.decode(latents / scaling_factor)``), in the model's dtype.
        """
        bs = self.problem.batch_size
        return torch.cat([to_images(latents[i:i + bs], self.vae).float().cpu() for i in range(0, len(latents), bs)])

    def images(self, plan: Plan | None, n: int | None = None, seed: int | None = None,
               counter: StepCounter | None = None) -> torch.Tensor:
        """Images in [0, 1], shape [n, C, H, W] (float32, on the CPU)."""
        return self.decode(self.latents(plan, n, seed, counter))
