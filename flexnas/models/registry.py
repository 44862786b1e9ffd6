"""Find a problem by name: registered entry points, ``module:function``, or a diffusers pipeline.

Problem definitions live outside the library (``problems/`` or any package) and reach
flexnas through the ``flexnas.problems`` entry-point group.
"""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable

from flexnas.errors import FlexnasError
from flexnas.models.hub import looks_like_model
from flexnas.models.pretrained import problem_from_pretrained
from flexnas.models.problem import Problem

ENTRY_POINT_GROUP = "flexnas.problems"


def _problem_from_spec(spec: str) -> Callable[[], Problem]:
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise FlexnasError(f"cannot load problem {spec!r}: {e}") from None


def available_problems() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def get_problem(name: str, **overrides: Any) -> Problem:
    """A problem by registered name (``flexnas.problems`` entry points), ``module:function``, or a
    diffusers pipeline given as a local folder or hub id (``flexnas.models.pretrained.problem_from_pretrained``)."""
    eps = available_problems()
    if name in eps:
        factory = eps[name].load()
    elif Path(name).expanduser().is_dir() or (looks_like_model(name) and ":" not in name):
        factory = functools.partial(problem_from_pretrained, name)
    elif ":" in name:
        factory = _problem_from_spec(name)
    else:
        known = ", ".join(sorted(eps)) or "none installed"
        raise FlexnasError(f"unknown problem {name!r}: choose one of {known}, give module:function, or a diffusers "
                           "pipeline folder / hub id (--model)")
    if not callable(factory):
        raise FlexnasError(f"problem {name!r} is not a factory function")
    try:
        problem = factory(**overrides)
    except TypeError as e:
        raise FlexnasError(f"problem {name!r} cannot be built with those options ({e})") from None
    if not isinstance(problem, Problem):
        raise FlexnasError(f"problem factory {name!r} returned {type(problem).__name__}, not a flexnas Problem")
    if problem.encode_prompts is None:
        if overrides.get("prompts") is not None:
            raise FlexnasError(f"problem {problem.name} is not text-to-image: prompts do not apply to it")
        if overrides.get("guidance_scale") not in (None, 1, 1.0):
            raise FlexnasError(f"problem {problem.name} is not text-to-image: guidance does not apply to it")
    return problem
