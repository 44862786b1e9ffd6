"""Make a stock U-Net and scheduler follow a plan, step by step.

``PlanController`` hooks the U-Net's forward (diffusers ``ModelHook``): at every call
it looks up the step of the base schedule from the timestep and runs the network FULL,
PARTIAL at the plan's branch, or not at all (a NULL step in "reuse" mode returns the
last output). In "drop" mode the sampler jumps over NULL timesteps: DDIM keeps its full list
of timesteps (so pipelines that start inside the schedule, such as image-to-image at some
``strength``, index it as usual) and a NULL step there is a no-op (no network call, the
latents stay) while the step before it jumps to the next kept timestep; other schedulers
that take custom timesteps get only the kept ones. Because only hooks change, the same
controller drives flexnas' own sampler loop and a user's stock pipeline (``flexnas.apply``).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from diffusers.hooks import HookRegistry, ModelHook

from flexnas.engine.partial import PartialUNet
from flexnas.engine.steps import StepCounter, can_drop, is_ddim, timestep_key
from flexnas.errors import FlexnasError
from flexnas.plan.plan import Plan, Step, StepKind

HOOK_NAME = "flexnas_plan"
FULL_STEP = Step(StepKind.FULL)
PATCHED = ("set_timesteps", "step", "set_begin_index")  # scheduler methods a controller may replace


def ddim_step_to(scheduler: Any, step: Callable, nxt: int, base_next: int | None, model_output: torch.Tensor,
                 timestep: Any, sample: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
    """DDIM's own ``step`` from ``timestep`` to the timestep ``nxt`` (-1: the end), ``base_next`` being
    the next timestep of the base schedule.

    DDIM derives the previous timestep as ``t - num_train_timesteps // T``. Where the plan keeps
    the base successor the step is the stock one; where it jumps, that index (or
    ``final_alpha_cumprod`` past the end) holds the cumulative alpha of ``nxt`` for the duration
    of the call.
    """
    if nxt == base_next:
        return step(model_output, timestep, sample, *args, **kwargs)
    s = scheduler
    prev = int(timestep_key(timestep)) - s.config.num_train_timesteps // s.num_inference_steps
    target = s.alphas_cumprod[nxt] if nxt >= 0 else s.final_alpha_cumprod
    alphas, final = s.alphas_cumprod, s.final_alpha_cumprod
    if prev >= 0:
        s.alphas_cumprod = alphas.clone()
        s.alphas_cumprod[prev] = target
    else:
        s.final_alpha_cumprod = target
    try:
        return step(model_output, timestep, sample, *args, **kwargs)
    finally:
        s.alphas_cumprod, s.final_alpha_cumprod = alphas, final


class _ControlHook(ModelHook):
    def __init__(self, controller: "PlanController"):
        super().__init__()
        self.controller = controller

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.controller._forward(self.fn_ref.original_forward, *args, **kwargs)


class PlanController:
    """Installs a plan on a U-Net and its scheduler until ``remove()`` (or the end of a ``with``).

    ``forward`` replaces the U-Net's own forward at network steps (a loaded problem passes its
    ``torch.compile``d one); the partial-step hooks kept on the U-Net are reused (``PartialUNet.use``).
    """

    def __init__(self, unet: torch.nn.Module, scheduler: Any, plan: Plan, forward: Callable | None = None):
        name = type(scheduler).__name__
        if name != plan.scheduler:
            raise FlexnasError(f"plan was made for {plan.scheduler} but the scheduler is {name}: use "
                               f"{plan.scheduler}.from_config(scheduler.config)")
        has_null = any(s.kind is StepKind.NULL for s in plan.steps)
        if plan.null_mode == "drop" and has_null and not can_drop(scheduler):
            raise FlexnasError(f"{name} cannot drop timesteps (its set_timesteps takes no custom timesteps): "
                               "use null mode 'reuse' for this scheduler")
        self.unet, self.scheduler, self.plan = unet, scheduler, plan
        self.steps, self.forward = plan.steps, forward
        self.counter = StepCounter()
        self.partial = PartialUNet.use(unet)
        try:
            plan.validate(self.partial.num_branches)
        except FlexnasError:
            self.partial.release()
            raise
        self._last: Any = None
        self._companions: list[tuple[torch.nn.Module, ModelHook]] = []
        self.controlnet: ModelHook | None = None  # flexnas.apply's hook on a pipeline's ControlNet
        self._step_of: dict[float, int] = {}
        self._next_t: dict[int, int] = {}
        self._base_next: dict[int, int] = {}
        try:
            HookRegistry.check_if_exists_or_initialize(unet).register_hook(_ControlHook(self), HOOK_NAME)
        except Exception:
            self.partial.release()
            raise
        # what a later remove() restores: instance attributes another tool may have set, or nothing
        self._saved = {a: scheduler.__dict__[a] for a in PATCHED if a in scheduler.__dict__}
        self._orig_set_timesteps = scheduler.set_timesteps
        self._orig_step = scheduler.step
        scheduler.set_timesteps = self._set_timesteps
        self._drops = plan.null_mode == "drop" and has_null and is_ddim(scheduler)
        if self._drops:  # with the stock signature: callers pass eta and generator by reading it
            scheduler.step = functools.wraps(self._orig_step)(
                lambda *args, **kwargs: self._ddim_step(*args, **kwargs))
        elif plan.null_mode == "drop" and has_null and hasattr(scheduler, "set_begin_index"):
            self._orig_begin = scheduler.set_begin_index
            scheduler.set_begin_index = self._set_begin_index

    # ------------------------------------------------------------------ scheduler side
    def _set_timesteps(self, num_inference_steps: int | None = None, device: Any = None, **kwargs: Any) -> None:
        if num_inference_steps != self.plan.T:
            raise FlexnasError(f"the plan's base schedule has T={self.plan.T} steps but the sampler asked for "
                               f"{num_inference_steps}: call it with num_inference_steps={self.plan.T}")
        self._orig_set_timesteps(num_inference_steps, device=device, **kwargs)
        distinct: list[float] = []
        values: list[Any] = []  # the scheduler's own value of each distinct timestep (int, or float for e.g. Euler)
        for t in self.scheduler.timesteps:
            k = timestep_key(t)
            if not distinct or distinct[-1] != k:
                distinct.append(k)
                values.append(t.item() if torch.is_tensor(t) else t)
        if len(distinct) != self.plan.T:
            raise FlexnasError(f"{type(self.scheduler).__name__} visits {len(distinct)} distinct timesteps for "
                               f"T={self.plan.T}; flexnas needs one per step (for PNDM use skip_prk_steps=True, i.e. PLMS)")
        self._step_of = {k: i for i, k in enumerate(distinct)}
        self._last = None
        self.partial.clear()
        for module, hook in self._companions:
            hook.reset_state(module)
        active = self.plan.active_indices()
        if self.plan.null_mode == "drop" and len(active) < self.plan.T:
            kept = [distinct[i] for i in active]
            if is_ddim(self.scheduler):  # full list kept; NULL steps are no-ops (see _ddim_step)
                self._next_t = {int(a): int(b) for a, b in zip(kept, kept[1:] + [-1])}
                self._base_next = {int(a): int(b) for a, b in zip(distinct, distinct[1:] + [-1])}
            else:
                self._orig_set_timesteps(device=device, timesteps=[values[i] for i in active])
                self.counter.null += self.plan.T - len(kept)

    def _ddim_step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any,
                   **kwargs: Any) -> Any:
        """DDIM's own step, told the real previous timestep where the plan dropped the ones between."""
        t = int(timestep_key(timestep))
        if t not in self._next_t:  # a dropped timestep: the latents stay, the kept step before jumped over it
            if not kwargs.get("return_dict", True):
                return sample, None
            from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput

            return DDIMSchedulerOutput(prev_sample=sample, pred_original_sample=None)
        return ddim_step_to(self.scheduler, self._orig_step, self._next_t[t], self._base_next.get(t),
                            model_output, timestep, sample, *args, **kwargs)

    def _set_begin_index(self, begin_index: int = 0) -> None:
        """Pipelines that start inside the schedule (image-to-image) index the stock list of timesteps,
        which a dropping plan has shortened for this scheduler: refuse rather than sample the wrong steps."""
        if begin_index:
            raise FlexnasError(f"{type(self.scheduler).__name__} in null mode 'drop' cannot start inside the schedule "
                               "(image-to-image, inpainting at strength < 1): use null mode 'reuse', or DDIM")
        self._orig_begin(begin_index)

    @torch.compiler.disable
    def step_index(self, timestep: Any) -> int:
        """The base-schedule step of ``timestep`` (after ``set_timesteps``).

        A Python lookup on the timestep's value: under ``torch.compile(pipe.unet)`` it runs outside
        the graph (one clean break), and the U-Net's forward after it is compiled as usual.
        """
        key = timestep_key(timestep)
        if key not in self._step_of:
            raise FlexnasError(f"timestep {key} is not in the plan's base schedule: call "
                               f"scheduler.set_timesteps({self.plan.T}) before sampling")
        return self._step_of[key]

    # ------------------------------------------------------------------ model side
    def _forward(self, forward: Callable, sample: torch.Tensor, timestep: Any, *args: Any, **kwargs: Any) -> Any:
        step = self.steps[self.step_index(timestep)]
        # a pipeline that starts inside the schedule (image-to-image) may reach a PARTIAL step before any
        # FULL one, or a reused NULL step before any output: it runs FULL (engine.steps.executed_steps)
        if (step.kind is StepKind.PARTIAL and not self.partial.state.cache) or \
                (step.kind is StepKind.NULL and self._last is None and not self._drops):
            step = FULL_STEP
        if step.kind is StepKind.NULL:
            self.counter.null += 1
            if self._last is not None:
                return self._last
            from diffusers.models.unets.unet_2d import UNet2DOutput  # dropped before any network call: unused

            out = sample.new_zeros(sample.shape[0], self.unet.config.out_channels, *sample.shape[2:])
            return (out,) if not kwargs.get("return_dict", True) else UNet2DOutput(sample=out)
        if step.kind is StepKind.FULL:
            self.partial.full()
            self.counter.full += 1
        else:
            self.partial.partial(step.branch)
            self.counter.partial[step.branch] += 1
        try:
            out = (self.forward or forward)(sample, timestep, *args, **kwargs)
        finally:
            self.partial.off()
        self._last = out
        return out

    # ------------------------------------------------------------------ lifetime
    def add_hook(self, module: torch.nn.Module, hook: ModelHook) -> None:
        """Hook another model of the pipeline (its ControlNet) for the plan's lifetime, reset at each run."""
        HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, HOOK_NAME)
        self._companions.append((module, hook))

    def remove(self) -> None:
        """Restore the stock U-Net forward and scheduler methods (and those of hooked companions)."""
        if self.partial is None:
            return
        for module in [self.unet] + [m for m, _ in self._companions]:
            HookRegistry.check_if_exists_or_initialize(module).remove_hook(HOOK_NAME, recurse=False)
        self.partial.release()
        self.partial = None
        for attr in PATCHED:
            self.scheduler.__dict__.pop(attr, None)
        self.scheduler.__dict__.update(self._saved)

    def __enter__(self) -> "PlanController":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()
