"""Steps as the engine sees them: counting the ones executed, matching a timestep to its step, and
whether a scheduler lets NULL steps be dropped from its schedule (docs/DESIGN.md, section 2)."""

from __future__ import annotations

import inspect
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch


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
