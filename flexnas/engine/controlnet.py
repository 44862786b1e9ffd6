"""A pipeline's ControlNet under a plan.

Pipelines call their ControlNet before the U-Net at every timestep and add its residuals to the
U-Net's skips and mid block. Where the plan makes those residuals unused (NULL steps: the U-Net
does not run) the ControlNet does not run either, which changes no image. At PARTIAL steps the
shallow skips still take fresh residuals; with ``reuse_on_partial`` the ControlNet instead serves
the residuals of the last step it ran (a FULL step), which is cheaper and no longer exact, the
same trade DeepCache makes for the U-Net's deep features.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.hooks import ModelHook

from flexnas.errors import FlexnasError
from flexnas.plan.plan import Plan, StepKind


def check_controlnet_reuse(plan: Plan, controlnet: Any, owner: str) -> None:
    """A plan that reuses ControlNet residuals needs a ControlNet: refuse it on ``owner`` (one line) otherwise."""
    if plan.controlnet_reuse and controlnet is None:
        raise FlexnasError(f"the plan reuses ControlNet residuals (controlnet_reuse) but {owner} has no ControlNet: "
                           "drop the field from the plan")


class ControlNetHook(ModelHook):
    """Runs the ControlNet only at the steps whose residuals the plan uses; ``calls`` counts its runs."""

    _is_stateful = True

    def __init__(self, controller: Any, reuse_on_partial: bool = False):
        super().__init__()
        self.controller, self.reuse_on_partial = controller, reuse_on_partial
        self.last: Any = None
        self.calls = 0

    def reset_state(self, module: torch.nn.Module) -> torch.nn.Module:
        """A new sampling run: residuals of the previous one (another prompt or control image) are never served."""
        self.last = None
        return module

    def new_forward(self, module: torch.nn.Module, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        kind = self.controller.steps[self.controller.step_index(timestep)].kind
        if self.last is not None and (kind is StepKind.NULL or (kind is StepKind.PARTIAL and self.reuse_on_partial)):
            return self.last
        self.last = self.fn_ref.original_forward(sample, timestep, *args, **kwargs)
        self.calls += 1
        return self.last
