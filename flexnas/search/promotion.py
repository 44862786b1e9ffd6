"""Promotion during the search: the population's best plans scored again on more images.

Screening on few images is noisy, and the plans a search keeps are those whose noise was lucky
(the winner's curse). Every ``promote_every`` generations, the population's non-dominated plans
(objective, MACs ratio) are scored on ``promote_images`` images and compete from then on with
that score, put back on the screening scale by the mean shift the promoted plans showed (FID is
biased upward on few images; paired distances are not): lucky plans fall back, and the search
spends its next generations around plans that stay good. docs/DESIGN.md, section 5;
``benchmarks/promotion.py`` measures whether it finds better plans than re-scoring only at the end.
"""

from __future__ import annotations

import math

import numpy as np
from pymoo.core.callback import Callback

from flexnas.search.candidates import CandidateEvaluator


class Promotion(Callback):
    """A pymoo callback: promote, then let the algorithm's own survival re-rank the population."""

    def __init__(self, every: int, images: int):
        super().__init__()
        self.every, self.images = every, images

    def _update(self, algorithm) -> None:
        if algorithm.n_gen % self.every:
            return
        problem, pop = algorithm.problem, algorithm.pop
        obj, keys = problem.config.objective, problem.keys(pop.get("X"))
        recs = problem.records(keys)  # known, unless a resume lost them from evaluations.jsonl
        front = problem.front(pop)
        if not len(front):
            return
        cand = CandidateEvaluator.get(problem.config)
        screen = cand.evaluator.n
        hi = {}
        for i in front:
            plan = problem.space.decode(pop[i].X)
            h = cand.evaluate(plan, n=self.images, measures=[obj])
            if h["calls"]:  # newly sampled: the images beyond the screening ones
                h["calls"] -= cand.store.cost(plan, screen)["calls"]
                problem.naive_total += len(plan.active_indices()) * (len(cand.loaded.batches(self.images))
                                                                     - len(cand.loaded.batches(screen)))
            hi[keys[i]] = (recs[i][obj], h)
        finite = [lo - h[obj] for lo, h in hi.values() if math.isfinite(h[obj])]
        shift = float(np.mean(finite)) if finite else 0.0
        for key, (_, h) in hi.items():
            calls = problem.promoted.get(key, {}).get("calls", 0) + h["calls"]
            problem.promoted[key] = {"generation": algorithm.n_gen, "images": self.images, obj: h[obj],
                                     "shift": shift, "score": h[obj] + shift, "calls": calls}
        for ind, key in zip(pop, keys):
            if key in problem.promoted:
                F_ = ind.F.copy()
                F_[0] = problem.score(key, None)
                ind.F = F_
        algorithm.pop = algorithm.survival.do(problem, pop, n_survive=len(pop), algorithm=algorithm,
                                              random_state=algorithm.random_state)
        algorithm._set_optimum()
