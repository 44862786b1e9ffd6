"""Steps as the engine sees them: counting the ones executed, matching a timestep to its step, and
whether a scheduler lets NULL steps be dropped from its schedule (docs/DESIGN.md, section 2)."""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from flexnas.plan.plan import Plan, Step, StepKind


@dataclass
class StepCounter:
    """Steps executed: FULL and PARTIAL (per branch) network calls, and NULL steps."""

    full: int = 0
    partial: Counter = field(default_factory=Counter)
    null: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"full": self.full, "partial": dict(sorted(self.partial.items())), "null": self.null}

    @property
    def calls(self) -> int:
        """Network evaluations (FULL + PARTIAL)."""
        return self.full + sum(self.partial.values())

    def add(self, other: "StepCounter") -> None:
        """Count ``other``'s steps here too (a caller's counter summing a controller's)."""
        self.full += other.full
        self.partial.update(other.partial)
        self.null += other.null

    def reset(self) -> None:
        self.full, self.null = 0, 0
        self.partial.clear()


def timestep_key(t: Any) -> float:
    if torch.is_tensor(t):
        t = t.flatten()[0].item()
    return round(float(t), 4)


def accepts_custom_timesteps(scheduler: Any) -> bool:
    return "timesteps" in inspect.signature(scheduler.set_timesteps).parameters


def is_ddim(scheduler: Any) -> bool:
    cls = scheduler if isinstance(scheduler, type) else type(scheduler)
    return cls.__name__ in ("DDIMScheduler", "DDIMParallelScheduler")


def can_drop(scheduler: Any) -> bool:
    """Whether NULL steps can be dropped from this scheduler's timesteps (an instance or a class):
    DDIM is stepped by hand (docs/DESIGN.md, section 2); others must take custom timesteps."""
    return is_ddim(scheduler) or accepts_custom_timesteps(scheduler)


def first_step(T: int, strength: float | None) -> int:
    """The base step an image-to-image pipeline starts at for ``strength`` (diffusers' ``get_timesteps``:
    it runs the last ``int(T * strength)`` steps); steps before it never run, so they cost nothing."""
    return 0 if strength is None else T - min(int(T * strength), T)


def executed_steps(plan: Plan, start: int = 0) -> list[Step]:
    """The steps of ``plan`` a sampler runs when it starts at base step ``start`` (``first_step``).

    Until the first FULL step, a PARTIAL step has no cached deep features and, in null mode
    "reuse", a NULL step has no output to reuse: both run FULL (``PlanController`` does the same).
    From the first step (``start`` 0) every valid plan runs as written.
    """
    out, fresh = [], True
    for step in plan.steps[start:]:
        if fresh and (step.kind is StepKind.PARTIAL or (step.kind is StepKind.NULL and plan.null_mode == "reuse")):
            step = Step(StepKind.FULL)
        fresh = fresh and step.kind is not StepKind.FULL
        out.append(step)
    return out
