"""What the engine needs to know about a diffusers scheduler: how to match timesteps, and whether
NULL steps can be dropped from its schedule (docs/DESIGN.md, section 2)."""

from __future__ import annotations

import inspect
from typing import Any

import torch


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
