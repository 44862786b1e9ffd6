"""Search settings: what a run depends on, saved as ``run.json`` and checked on ``--resume``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flexnas.errors import FlexnasError
from flexnas.metrics.measures import GOALS, MEASURES

ALGORITHMS = ("nsga2", "ga")


@dataclass
class SearchConfig:
    """Everything a run depends on; saved as ``run.json`` and checked on ``--resume``."""

    problem: str = "fashion-mnist"
    algorithm: str = "nsga2"
    pop: int = 16
    gens: int = 6
    seed: int = 0
    macs_budget: float | None = None
    macs_floor: float | None = None  # plans with fewer MACs (faster than any speed wanted) are infeasible
    images: int | None = None
    goal: str | None = None  # fidelity or quality (None: fidelity)
    objective: str | None = None  # a measure of flexnas.metrics.measures (None: the goal's default)
    skip: bool = True  # segments after the first may be skipped (False: the paper's space)
    rescore_images: int | None = None  # re-score the front and baselines on this many images (0: no; None: the problem's)
    promote_every: int = 0  # promote the population's front every this many generations (0: never)
    promote_images: int | None = None  # to this many images (None: 4x the screening images)
    refine_evals: int = 0  # evaluations moving the front's FULL steps after the last generation (0: none)
    segments: list[int] | None = None
    branches: list[int] | None = None
    null_mode: str | None = None
    extractor: str | None = None
    extractor_weights: str | None = None
    overrides: dict = field(default_factory=dict)

    def validate(self) -> "SearchConfig":
        if self.algorithm not in ALGORITHMS:
            raise FlexnasError(f"--algorithm must be one of {ALGORITHMS}, got {self.algorithm!r}")
        if self.goal is not None and self.goal not in GOALS:
            raise FlexnasError(f"--goal must be one of {GOALS}, got {self.goal!r}")
        if self.objective is not None and self.objective not in MEASURES:
            raise FlexnasError(f"--objective must be one of {tuple(MEASURES)}, got {self.objective!r}")
        if self.promote_every < 0:
            raise FlexnasError(f"--promote-every must be 0 (never) or a number of generations, "
                               f"got {self.promote_every}")
        if self.promote_images is not None and not self.promote_every:
            raise FlexnasError("--promote-images needs --promote-every K (how often to promote)")
        if self.refine_evals < 0:
            raise FlexnasError(f"--refine-evals must be 0 (no refinement) or a number of evaluations, "
                               f"got {self.refine_evals}")
        if self.pop < 2:
            raise FlexnasError(f"--pop must be at least 2, got {self.pop}")
        if self.gens < 1:
            raise FlexnasError(f"--gens must be at least 1, got {self.gens}")
        if self.images is not None and self.images < 2:
            raise FlexnasError(f"--images must be at least 2 (rFID needs a covariance), got {self.images}")
        if self.algorithm == "ga":
            if self.macs_budget is None:
                raise FlexnasError("--algorithm ga needs --macs-budget X (MACs ratio to the teacher, 0 < X <= 1)")
        if self.macs_budget is not None and not 0 < self.macs_budget <= 1:
            raise FlexnasError(f"--macs-budget must be in (0, 1], got {self.macs_budget}")
        if self.macs_floor is not None and not 0 < self.macs_floor < (self.macs_budget or 1):
            raise FlexnasError(f"--macs-floor must be in (0, {self.macs_budget or 1}) (below the MACs budget), "
                               f"got {self.macs_floor}")
        return self

    def problem_overrides(self) -> dict[str, Any]:
        o = dict(self.overrides)
        if self.null_mode:
            o["null_mode"] = self.null_mode
        return o

    def constraints(self, macs) -> list:
        """pymoo's inequality constraints (<= 0 when met) on MACs ratios ``macs``: the budget, the floor."""
        return ([macs - self.macs_budget] if self.macs_budget is not None else []) + \
            ([self.macs_floor - macs] if self.macs_floor is not None else [])

    def feasible(self, macs: float) -> bool:
        return all(g <= 1e-12 for g in self.constraints(macs))


EVAL_FIELDS = ("problem", "overrides", "images", "null_mode", "extractor", "extractor_weights")


# a resumed run keeps its settings: options that would change them are refused (CLI flag of each field)
RESUME_FLAGS = {"problem": "--problem/--model", "algorithm": "--algorithm", "pop": "--pop", "seed": "--seed",
                "macs_budget": "--macs-budget", "macs_floor": "--macs-floor", "images": "--images", "goal": "--goal",
                "objective": "--objective",
                "skip": "--paper-space", "rescore_images": "--rescore-images", "promote_every": "--promote-every",
                "promote_images": "--promote-images", "refine_evals": "--refine-evals", "segments": "--segments",
                "branches": "--branches", "null_mode": "--null-mode", "extractor": "--extractor",
                "extractor_weights": "--inception-weights", "overrides": "the model options (--steps, --model, ...)"}


def check_resume_options(given: SearchConfig, saved: SearchConfig) -> None:
    """Refuse a resume whose options (other than ``gens`` and those left at their defaults) differ from the run's."""
    default = SearchConfig()
    for name, flag in RESUME_FLAGS.items():
        mine, theirs = getattr(given, name), getattr(saved, name)
        if mine != theirs and mine != getattr(default, name):
            raise FlexnasError(f"--resume: {flag} {mine} conflicts with this run's {theirs}; a resumed run keeps its "
                               "settings (only --gens may change): drop the option or start a new --out")
