"""What the commands share: the problem and model options, plans read with checks, output paths."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flexnas.errors import FlexnasError, writable_folder

# CLI option -> problem override (Problem field or problem_from_pretrained argument)
MODEL_OVERRIDES = {"scheduler": "scheduler", "base_steps": "T", "guidance": "guidance_scale", "prompts": "prompts",
                   "resolution": "resolution", "device": "device", "dtype": "dtype", "batch_size": "batch_size",
                   "compile": "compile", "lockstep": "lockstep", "input_images": "input_images", "strength": "strength",
                   "control_images": "control_images", "controlnet": "controlnet", "mask_images": "mask_images"}


def problem_spec(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(problem spec for ``get_problem``, overrides) from ``--problem`` and/or ``--model`` and the model options.

    ``--problem NAME`` alone: a registered problem; ``--model PATH_OR_ID`` alone: any diffusers pipeline
    with a U-Net (defaults from its pipeline class); both: the named problem's settings on local weights.
    """
    problem, model = getattr(args, "problem", None), getattr(args, "model", None)
    if not problem and not model:
        raise FlexnasError("give --problem NAME (e.g. fashion-mnist) or --model PATH_OR_HUB_ID (a diffusers pipeline)")
    if model and Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())  # absolute: run.json and workers must find it again
    overrides: dict[str, Any] = {}
    if problem and model:
        overrides["model"] = model
    if getattr(args, "null_mode", None):
        overrides["null_mode"] = args.null_mode
    for opt, key in MODEL_OVERRIDES.items():
        value = getattr(args, opt, None)
        if value is not None:
            overrides[key] = value
    for key in ("prompts", "input_images", "control_images", "mask_images", "controlnet"):  # absolute: run.json, workers
        if key in overrides and (key != "controlnet" or Path(overrides[key]).expanduser().is_dir()):
            overrides[key] = str(Path(overrides[key]).expanduser().resolve())
    for key in ("T", "resolution", "batch_size"):
        positive({"T": "base-steps", "batch_size": "batch-size"}.get(key, key), overrides.get(key))
    return problem or model, overrides


def load_problem(args: argparse.Namespace):
    from flexnas.models.device import resolve_device, resolve_dtype
    from flexnas.models.registry import get_problem

    spec, overrides = problem_spec(args)
    problem = get_problem(spec, **overrides)
    resolve_dtype(problem.dtype, resolve_device(problem.device))  # a bad --device/--dtype fails before any work
    return problem


def read_plan(path: str, problem: Any = None):
    """The plan at ``path``; with ``problem``, checked to be made for its scheduler and base schedule."""
    from flexnas.plan.plan import Plan

    plan = Plan.load(path)
    if problem is not None and (plan.scheduler, plan.T) != (problem.scheduler, problem.T):
        raise FlexnasError(f"{path} was made for {plan.scheduler} with T={plan.T} base steps, but problem "
                           f"{problem.name} samples with {problem.scheduler}, T={problem.T}: pass --scheduler "
                           f"{plan.scheduler} --base-steps {plan.T}, or make the plan with 'flexnas plan' for this problem")
    return plan


def new_file(path: str | Path) -> Path:
    """``path`` checked to be new and writable before any work (its folder is made)."""
    p = Path(path)
    if p.exists():
        raise FlexnasError(f"{p} already exists: choose another --out or remove it first")
    writable_folder(p.parent)
    return p


def positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise FlexnasError(f"--{name} must be positive, got {value}")


def int_list(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FlexnasError(f"--{name} takes comma-separated integers, got {text!r}") from None


def stage(text: str) -> None:
    """One progress line on stderr (stdout stays the result)."""
    print(text, file=sys.stderr, flush=True)


def short_strip(strip: str) -> str:
    """A strip in a few words: counts of FULL, PARTIAL and NULL steps."""
    parts = strip.split()
    return f"{parts.count('F')} full, {sum(p.startswith('p') for p in parts)} partial"
