"""flexnas: Flexiffusion-style search of fast sampling plans for pretrained diffusion models.

Layers run one way: plan and search space (pure data) -> sampling engine -> objectives
-> search -> CLI. Names are imported lazily, so ``flexnas.cli`` can configure OpenMP
before torch loads.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "apply": "flexnas.pipeline", "Plan": "flexnas.plan", "Segment": "flexnas.plan", "Step": "flexnas.plan",
    "StepKind": "flexnas.plan", "PlanController": "flexnas.engine", "StepCounter": "flexnas.engine",
    "FlexnasError": "flexnas.errors", "PartialUNet": "flexnas.partial", "list_branches": "flexnas.partial",
    "Problem": "flexnas.problem", "get_problem": "flexnas.registry", "Conditioning": "flexnas.sampler",
    "sample": "flexnas.sampler", "SearchSpace": "flexnas.space",
    "Evaluator": "flexnas.objectives", "MacCounter": "flexnas.macs",
    "problem_from_pretrained": "flexnas.pretrained", "ClipScorer": "flexnas.clip",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flexnas' has no attribute {name!r}")
