"""Apply a plan to a user's stock diffusers pipeline."""

from __future__ import annotations

from typing import Any, Callable

from flexnas.engine.controller import PlanController
from flexnas.engine.controlnet import ControlNetHook, check_controlnet_reuse
from flexnas.errors import FlexnasError
from flexnas.plan.plan import Plan


def apply(pipeline: Any, plan: Plan | str, *, forward: Callable | None = None) -> PlanController:
    """Make ``pipeline`` (DDPM/DDIM/PNDM/StableDiffusion...) run ``plan`` on its next calls.

    Returns the installed controller: use it as a context manager, or call ``remove()``
    to restore the stock pipeline; ``controller.counter`` counts the steps executed.
    Call the pipeline with ``num_inference_steps=plan.T`` and the plan's scheduler class::

        with flexnas.apply(pipe, "plan.json"):
            images = pipe(num_inference_steps=100).images

    A pipeline's ControlNet does not run at NULL steps (exact); a plan with ``controlnet_reuse`` also
    serves its residuals from the last FULL step at PARTIAL steps (cheaper, approximate).
    ``controller.controlnet.calls`` counts its runs. ``forward`` replaces the U-Net's own forward at
    network steps (a loaded problem passes its ``torch.compile``d one).
    """
    if not isinstance(plan, Plan):
        plan = Plan.load(plan)
    unet = getattr(pipeline, "unet", None)
    scheduler = getattr(pipeline, "scheduler", None)
    if unet is None or scheduler is None:
        raise FlexnasError(f"{type(pipeline).__name__} has no 'unet' and 'scheduler': flexnas applies plans to "
                           "diffusers pipelines whose denoiser is a UNet2DModel or UNet2DConditionModel")
    net = getattr(pipeline, "controlnet", None)
    check_controlnet_reuse(plan, net, type(pipeline).__name__)
    ctl = PlanController(unet, scheduler, plan, forward=forward)
    if net is not None:
        ctl.controlnet = ControlNetHook(ctl, reuse_on_partial=plan.controlnet_reuse)
        try:
            ctl.add_hook(net, ctl.controlnet)
        except Exception:
            ctl.remove()
            raise
    return ctl
