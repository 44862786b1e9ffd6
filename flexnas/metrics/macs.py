"""MACs of plans, counted with fvcore on the real forward functions.

MACs(FULL) and MACs(PARTIAL at b) are counted once per model, input shape and
conditioning by tracing the hooked U-Net with ``fvcore.nn.FlopCountAnalysis`` (one fused
multiply-add = 1), then summed over a plan's steps. fvcore skips
``scaled_dot_product_attention``; we add a handle so attention matmuls count.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

with warnings.catch_warnings():  # fvcore's import uses the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import get_shape

from flexnas.engine.partial import PartialUNet
from flexnas.engine.steps import executed_steps, first_step
from flexnas.plan.plan import Plan, StepKind


def sdpa_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """``softmax(Q K^T) V``: B*H*Lq*Lk*D for the scores plus B*H*Lq*Lk*Dv for the values."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch_heads = math.prod(q[:-2])
    return batch_heads * q[-2] * k[-2] * (q[-1] + v[-1])


def baddbmm_flop_jit(inputs: list[Any], outputs: list[Any]) -> int:
    """``beta * M + alpha * (A @ B)`` with batched A [b, n, m], B [b, m, p]: b*n*m*p."""
    a, b = get_shape(inputs[1]), get_shape(inputs[2])
    return a[0] * a[1] * a[2] * b[2]


MACS_VERSION = 1  # bump when the counting rules change: cached counts then miss

EXTRA_OP_HANDLES = {
    "aten::scaled_dot_product_attention": sdpa_flop_jit,
    "aten::baddbmm": baddbmm_flop_jit,
}


def cache_dir() -> Path:
    """Where flexnas caches MACs and teacher statistics (``$FLEXNAS_CACHE``, else ~/.cache/flexnas)."""
    return Path(os.environ.get("FLEXNAS_CACHE", Path.home() / ".cache" / "flexnas"))


class _Forward(torch.nn.Module):
    """The U-Net's forward with fixed conditioning, returning a plain tensor for tracing."""

    def __init__(self, unet: torch.nn.Module, kwargs: dict[str, Any]):
        super().__init__()
        self.unet, self.kwargs = unet, kwargs

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, **self.kwargs, return_dict=False)[0]


def count_macs(module: torch.nn.Module, inputs: tuple) -> FlopCountAnalysis:
    """fvcore analysis of ``module(*inputs)`` with the attention handles added."""
    analysis = FlopCountAnalysis(module, inputs)
    for name, fn in EXTRA_OP_HANDLES.items():
        analysis.set_op_handle(name, fn)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


@torch.no_grad()
def count_unet(unet: torch.nn.Module, sample_shape: tuple[int, ...], unet_kwargs: dict[str, Any] | None = None,
               timestep: int = 500) -> tuple[int, dict[int, int]]:
    """(MACs of a FULL forward, {branch: MACs of a PARTIAL forward}) for one image."""
    fwd = _Forward(unet, unet_kwargs or {})
    x = torch.randn(1, *sample_shape, device=unet.device, dtype=unet.dtype)
    t = torch.tensor(timestep, device=unet.device)
    with PartialUNet.use(unet) as pu, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pu.full()
        full = int(count_macs(fwd, (x, t)).total())
        partial = {}
        for b in range(pu.num_branches):
            pu.full()
            fwd(x, t)  # fill the cache at this input, as the FULL step before a PARTIAL one does
            pu.partial(b)
            partial[b] = int(count_macs(fwd, (x, t)).total())
    return full, partial


class _ControlNet(torch.nn.Module):
    """A ControlNet's forward with fixed conditioning, returning its residuals as a flat tuple, for tracing."""

    def __init__(self, controlnet: torch.nn.Module, kwargs: dict[str, Any]):
        super().__init__()
        self.controlnet, self.kwargs = controlnet, kwargs

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
        down, mid = self.controlnet(x, t, controlnet_cond=cond, **self.kwargs, return_dict=False)
        return (*down, mid)


@torch.no_grad()
def count_controlnet(controlnet: torch.nn.Module, sample_shape: tuple[int, ...], cond_shape: tuple[int, ...],
                     kwargs: dict[str, Any] | None = None, timestep: int = 500) -> int:
    """MACs of one ControlNet call for one image: latents ``sample_shape``, control image ``cond_shape``;
    ``kwargs`` are the pipeline's other arguments for one image (``encoder_hidden_states``, ...)."""
    p = next(controlnet.parameters())
    x = torch.randn(1, *sample_shape, device=p.device, dtype=p.dtype)
    cond = torch.rand(1, *cond_shape, device=p.device, dtype=p.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fwd = _ControlNet(controlnet, kwargs or {})
        return int(count_macs(fwd, (x, torch.tensor(timestep, device=p.device), cond)).total())


class _Decode(torch.nn.Module):
    """A VAE / VQ model's ``decode`` as a module returning a plain tensor, for tracing."""

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z, return_dict=False)[0]


@torch.no_grad()
def count_decode(vae: torch.nn.Module, latent_shape: tuple[int, ...]) -> int:
    """MACs of decoding one image's latents ``latent_shape`` with ``vae.decode`` (VAE or VQ model)."""
    z = torch.randn(1, *latent_shape, device=vae.device, dtype=vae.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return int(count_macs(_Decode(vae), (z,)).total())


@dataclass
class MacCounter:
    """Per-image MACs of FULL and PARTIAL steps; ``cfg_factor`` 2 when guidance doubles the batch.

    ``decode`` is the per-image MACs of the VAE / VQ decode of latent models (None for pixel models):
    reported beside the denoiser's, never part of plan MACs or their ratios. ``controlnet`` is the
    per-image MACs of one ControlNet call (``count_controlnet``): added at the steps where it runs
    under ``flexnas.apply`` (FULL, and PARTIAL unless the plan has ``controlnet_reuse``; never NULL). An
    image-to-image ``strength`` leaves out the steps before the pipeline's first (``first_step``) and
    counts the steps that then run FULL as FULL (``executed_steps``).
    """

    full: int
    partial: dict[int, int]
    cfg_factor: int = 1
    decode: int | None = None
    controlnet: int = 0
    strength: float | None = None

    def step_macs(self, kind: StepKind, branch: int | None = None, controlnet_reuse: bool = False) -> int:
        if kind is StepKind.FULL:
            return self.cfg_factor * (self.full + self.controlnet)
        if kind is StepKind.PARTIAL:
            return self.cfg_factor * (self.partial[branch] + (0 if controlnet_reuse else self.controlnet))
        return 0

    def plan_macs(self, plan: Plan) -> int:
        """Per-image MACs of the denoiser over the steps of the plan that run."""
        return sum(self.step_macs(s.kind, s.branch, plan.controlnet_reuse)
                   for s in executed_steps(plan, first_step(plan.T, self.strength)))

    def teacher_macs(self, T: int) -> int:
        return (T - first_step(T, self.strength)) * self.step_macs(StepKind.FULL)

    def ratio(self, plan: Plan, T: int | None = None) -> float:
        """Plan MACs / MACs of the teacher over ``T`` steps (default: the plan's own base schedule; a
        problem's T for a stock ``num_inference_steps=k`` plan, whose own T is k)."""
        return self.plan_macs(plan) / self.teacher_macs(plan.T if T is None else T)

    @classmethod
    def for_problem(cls, loaded: Any) -> "MacCounter":
        """Counted once per model identity, resolution and conditioning; cached on disk."""
        cond = loaded.conditioning(0, 1)
        kwargs = replace(cond, guidance_scale=1.0).unet_kwargs()  # one image's conditional half: cfg_factor doubles

        def shape(v: Any) -> Any:
            return tuple(v.shape) if torch.is_tensor(v) else sorted((k, shape(x)) for k, x in v.items()) \
                if isinstance(v, dict) else v

        shapes = sorted((k, shape(v)) for k, v in kwargs.items())
        key = (f"v{MACS_VERSION}-{sorted(EXTRA_OP_HANDLES)}-{loaded.identity}-"
               f"{'x'.join(map(str, loaded.sample_shape))}-{shapes}")
        path = cache_dir() / "macs" / f"{_slug(key)}.json"
        vae = getattr(loaded, "vae", None)
        try:
            d = json.loads(path.read_text()) if path.is_file() else None
        except ValueError:
            d = None  # a truncated cache file is a miss
        net = getattr(loaded, "controlnet", None)
        if d is None or (vae is not None and d.get("decode") is None) or (net is not None and "controlnet" not in d):
            if d is None:
                full, partial = count_unet(loaded.unet, loaded.sample_shape, kwargs)
                d = {"key": key, "full": full, "partial": partial}
            if vae is not None:  # an inpainting U-Net takes more channels (mask, masked image) than it denoises
                channels = getattr(vae.config, "latent_channels", loaded.sample_shape[0])
                d["decode"] = count_decode(vae, (channels, *loaded.sample_shape[1:]))
            else:
                d["decode"] = None
            if net is not None:  # its conditioning image has the output's pixel size
                pixels = tuple(s * loaded.vae_scale for s in loaded.sample_shape[1:])
                shape = (getattr(net.config, "in_channels", loaded.sample_shape[0]), *loaded.sample_shape[1:])
                d["controlnet"] = count_controlnet(net, shape, (3, *pixels), kwargs)  # its own input: the latents
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(d))
            os.replace(tmp, path)
        full, partial = d["full"], {int(k): v for k, v in d["partial"].items()}
        inputs = getattr(getattr(loaded, "problem", None), "inputs", None)
        return cls(full, partial, 2 if cond.cfg else 1, d.get("decode"), d.get("controlnet", 0),
                   strength=inputs.strength if inputs is not None else None)


def _slug(key: str) -> str:
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:20]
