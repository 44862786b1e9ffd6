"""flexnas: Flexiffusion-style search of fast sampling plans for pretrained diffusion models.

One folder per layer, imports pointing down (docs/DESIGN.md, section 9): plan (pure data)
-> engine -> models -> metrics -> search -> report -> cli. The names below are imported
lazily, so ``flexnas.cli`` can configure OpenMP before torch loads.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "apply": "flexnas.engine.apply", "Plan": "flexnas.plan.plan", "Segment": "flexnas.plan.plan", "Step": "flexnas.plan.plan",
    "StepKind": "flexnas.plan.plan", "PlanController": "flexnas.engine.controller", "StepCounter": "flexnas.engine.steps",
    "FlexnasError": "flexnas.errors", "PartialUNet": "flexnas.engine.partial", "list_branches": "flexnas.engine.partial",
    "Problem": "flexnas.models.problem", "get_problem": "flexnas.models.registry", "Conditioning": "flexnas.engine.sampler",
    "sample": "flexnas.engine.sampler", "SearchSpace": "flexnas.plan.space",
    "Evaluator": "flexnas.metrics.evaluator", "MacCounter": "flexnas.metrics.macs",
    "problem_from_pretrained": "flexnas.models.pretrained", "ClipScorer": "flexnas.metrics.clip",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flexnas' has no attribute {name!r}")
