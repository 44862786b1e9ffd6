"""Candidate evaluation: one loaded problem per process scores plans from its feature store.

The same code runs in-process and on Dask workers (``EvalTask`` is what pymoo's runner ships).
Every record holds every measure of ``flexnas.metrics.measures``; the goal's objective is what pymoo sees.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from flexnas.engine.steps import can_drop
from flexnas.errors import FlexnasError
from flexnas.metrics.evaluator import Evaluator
from flexnas.metrics.measures import DEFAULT_MEASURE, MEASURES, available, check_measure, score
from flexnas.metrics.store import PrefixStore, plan_key
from flexnas.models.device import resolve_device
from flexnas.models.lockstep import lockstep_default
from flexnas.models.registry import get_problem
from flexnas.plan.plan import Plan
from flexnas.plan.space import SearchSpace
from flexnas.search.config import EVAL_FIELDS, SearchConfig


def check_runnable(evaluator: Evaluator, config: SearchConfig) -> None:
    """Refuse, before any sampling, a search that could only fail or score nothing."""
    problem = evaluator.loaded.problem
    real = evaluator.reference()
    if config.goal is None:
        config.goal = "fidelity"  # docs/DESIGN.md, section 4: what an accelerator promises
    if config.objective is None:
        config.objective = DEFAULT_MEASURE[config.goal]
    check_measure(config.objective, real)
    if config.rescore_images is None:
        n = problem.rescore_images.get(config.goal, 0)
        config.rescore_images = n if n > evaluator.n else 0
    for flag, more in (("--rescore-images", config.rescore_images), ("--promote-images", config.promote_images)):
        if more and more <= evaluator.n:
            raise FlexnasError(f"{flag} {more} must exceed the {evaluator.n} screening images (--images): "
                               "it scores on more images")
    sch = evaluator.loaded.scheduler
    if problem.null_mode == "drop" and not can_drop(sch):
        raise FlexnasError(f"{type(sch).__name__} cannot drop timesteps: pass --null-mode reuse")


_EVALUATORS: dict[str, "CandidateEvaluator"] = {}


class CandidateEvaluator:
    """Loads a problem once per process and scores plans from its feature store (with the process's prefix store)."""

    def __init__(self, config: SearchConfig):
        self.config = config
        problem = get_problem(config.problem, **config.problem_overrides())
        self.evaluator = Evaluator(problem, images=config.images, extractor=config.extractor,
                                   extractor_weights=config.extractor_weights)
        self.loaded = self.evaluator.loaded
        self.prefixes = PrefixStore()
        self.store = self.evaluator.store(prefixes=self.prefixes)
        self.real = self.evaluator.reference()
        self.measures = available(self.real)

    @classmethod
    def get(cls, config: SearchConfig, threads: int | None = None) -> "CandidateEvaluator":
        """The process's evaluator for ``config``: keyed by what evaluation depends on, not by the
        search settings, so a resumed or repeated search reuses the loaded model."""
        key = json.dumps({k: getattr(config, k) for k in EVAL_FIELDS}, sort_keys=True, default=str)
        if key not in _EVALUATORS:
            if threads:
                import torch

                torch.set_num_threads(threads)
            _EVALUATORS[key] = cls(config)
        return _EVALUATORS[key]

    def evaluate(self, plan: Plan, n: int | None = None, measures: list[str] | None = None,
                 sampled: tuple[bool, float] | None = None) -> dict[str, Any]:
        """Every measure of ``plan`` on its first ``n`` images (default: the search's), MACs and cost.

        Features come from the feature store: images already sampled (by this run, an earlier
        one or the benchmark) are not sampled again, and more images extend fewer. ``sampled``:
        (whether this evaluation sampled them, its seconds) when ``evaluate_many`` already did.
        """
        n = self.evaluator.n if n is None else n
        names = measures or self.measures
        before, spent = (not sampled[0], sampled[1]) if sampled else (self.store.has(plan, n), 0.0)
        t0 = time.perf_counter() - spent
        feats = self.store.features(plan, n)
        teacher = None
        if any(MEASURES[m].reference == "teacher" for m in names):
            teacher = self.store.features(self.loaded.problem.teacher_plan(), n)
        out: dict[str, Any] = score(names, feats, teacher, self.real)
        for k, v in out.items():  # rounded: the same front on any runner, whatever float noise
            if math.isfinite(v):
                out[k] = round(v, 6)
        cost = self.store.cost(plan, n)
        macs = self.evaluator.macs
        # against the problem's teacher, also for a plan on another base schedule (a stock k-step run)
        out.update(macs=macs.plan_macs(plan), macs_ratio=macs.ratio(plan, self.loaded.problem.T),
                   eval_s=round(time.perf_counter() - t0, 3), sample_s=round(cost["sample_s"], 3),
                   calls=0 if before else cost["calls"],
                   naive_calls=len(plan.active_indices()) * len(self.loaded.batches(n)))
        return out

    def evaluate_many(self, plans: list[Plan], n: int | None = None) -> list[dict[str, Any]]:
        """``evaluate`` of each plan; with the problem's lockstep on, their missing images are first
        sampled together (``FeatureStore.fill``), a generation's candidates in shared U-Net calls."""
        n = self.evaluator.n if n is None else n
        if not self.loaded.lockstep:
            return [self.evaluate(p, n) for p in plans]
        keys = [plan_key(p) for p in plans]
        new = {k for k, p in zip(keys, plans) if not self.store.has(p, n)}
        t0 = time.perf_counter()
        self.store.fill(plans, n)
        share = (time.perf_counter() - t0) / max(len(new), 1)
        out = []
        for k, p in zip(keys, plans):  # a plan twice over is sampled (and charged) once
            out.append(self.evaluate(p, n, sampled=(k in new, share if k in new else 0.0)))
            new.discard(k)
        return out


@dataclass
class EvalTask:
    """Picklable unit of work for pymoo's runners: genome -> result dict."""

    config: SearchConfig
    space: SearchSpace
    threads: int | None = None

    def lockstep(self) -> bool:
        """Whether the problem samples a generation's candidates in shared U-Net calls (read from its
        spec, without loading it: the main process of a Dask run holds no model)."""
        problem = get_problem(self.config.problem, **self.config.problem_overrides())
        return lockstep_default(resolve_device(problem.device)) if problem.lockstep is None else problem.lockstep

    def __call__(self, x: np.ndarray) -> dict[str, Any] | list[dict[str, Any]]:
        """The record of genome ``x``, or the records of a batch of genomes (rows), sampled together."""
        ev = CandidateEvaluator.get(self.config, self.threads)
        x = np.asarray(x)
        if x.ndim == 2:
            return ev.evaluate_many([self.space.decode(g) for g in x])
        return ev.evaluate(self.space.decode(x))
