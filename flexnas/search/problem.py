"""The pymoo problem over plan genomes: records from the evaluation cache, the rest from the candidates.

Evaluation is the expensive part, so it is never repeated: the run's evaluation records
(``flexnas.search.runfolder``) answer known genomes, and ``flexnas.search.candidates`` scores the
rest, in-process or through pymoo's runner (Dask). One generation is traced in docs/DESIGN.md, section 6.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.core.problem import Problem

from flexnas.plan.space import SearchSpace
from flexnas.search.candidates import EvalTask
from flexnas.search.config import SearchConfig
from flexnas.search.runfolder import EvalCache

INF_SCORE = 1e9  # what pymoo sees for a diverged candidate (rfid = inf in the records)


def genome_key(x: np.ndarray) -> str:
    return ",".join(str(int(v)) for v in x)


class GenomeProblem(Problem):
    """Minimise (objective, MACs ratio) [NSGA-II] or objective s.t. MACs ratio <= budget [GA]; either within
    ``floor <= MACs ratio`` when the config has a floor."""

    def __init__(self, space: SearchSpace, config: SearchConfig, run_dir: Path):
        ga = config.algorithm == "ga"
        xl, xu = space.bounds()
        super().__init__(n_var=space.n_var, n_obj=1 if ga else 2,
                         n_ieq_constr=len(config.constraints(0.0)),
                         xl=xl, xu=xu, vtype=int, exclude_from_serialization=["runner", "cache", "task", "progress"])
        self.space, self.config, self.run_dir = space, config, run_dir
        self.generation = 1
        self.requested_total = 0  # evaluations pymoo asked for (cache hits included)
        self.naive_total = 0  # denoiser calls those would cost without cache and prefix reuse
        self.attach()

    def attach(self, runner: Any = None, threads: int | None = None) -> None:
        """(Re)connect what a checkpoint does not carry: the runner, the evaluation cache, the progress display."""
        self.runner, self.progress = runner, None
        self.task = EvalTask(self.config, self.space, threads=1 if runner is not None else threads)
        self.cache = EvalCache(self.run_dir / "evaluations.jsonl")
        if not hasattr(self, "promoted"):  # a new run, or a checkpoint from before promotion existed
            self.promoted: dict[str, dict[str, Any]] = {}  # genome key -> its score on more images (search.promotion)

    def keys(self, X) -> list[str]:
        """Canonical genome keys of a matrix of genomes (what the evaluation records are filed under)."""
        return [genome_key(self.space.canonical(x)) for x in np.asarray(X, dtype=int)]

    def records(self, keys: list[str]) -> list[dict[str, Any]]:
        """The evaluation records of canonical genome keys, evaluating the unknown ones (also those lost
        with a damaged or deleted ``evaluations.jsonl``: the feature store makes that cheap)."""
        todo = sorted({k for k in keys if k not in self.cache.records})
        genomes = [np.array([int(v) for v in k.split(",")]) for k in todo]
        progress = self.progress
        if progress is not None:
            progress.start(len(set(keys)), len(set(keys)) - len(todo))
        lockstep = bool(genomes) and self.task.lockstep()
        if self.runner is not None and lockstep:  # one batch of genomes per worker, sampled together there
            workers = len(self.runner.client.scheduler_info()["workers"]) or 1
            parts = np.array_split(np.stack(genomes), min(workers, len(genomes)))
            results = [r for part in self.runner(self.task, parts) for r in part]
        elif self.runner is not None and genomes:
            results = self.runner(self.task, genomes)
        elif lockstep:
            results = self.task(np.stack(genomes))
            if progress is not None:
                for _ in results:
                    progress.step()
        else:
            results = []
            for g in genomes:
                results.append(self.task(g))
                if progress is not None:
                    progress.step()
        for key, g, r in zip(todo, genomes, results):
            plan = self.space.decode(g)
            self.cache.add({"key": key, "generation": self.generation, "genome": [int(v) for v in g],
                            "plan": plan.to_dict(), "strip": plan.strip(), **r})
        return [self.cache.records[k] for k in keys]

    def score(self, key: str, record: dict[str, Any] | None) -> float:
        """The objective pymoo sees: the promoted score of a promoted plan, else the screening score."""
        p = self.promoted.get(key)
        v = p["score"] if p else record.get(self.config.objective, math.inf)
        return v if math.isfinite(v) else INF_SCORE

    def _evaluate(self, X, out, *args, **kwargs):
        keys = self.keys(X)
        recs = self.records(keys)
        self.requested_total += len(keys)
        self.naive_total += sum(r["naive_calls"] for r in recs)
        obj = np.array([self.score(k, r) for k, r in zip(keys, recs)], dtype=float)
        macs = np.array([r["macs_ratio"] for r in recs], dtype=float)
        out["F"] = obj[:, None] if self.config.algorithm == "ga" else np.stack([obj, macs], axis=1)
        if self.n_ieq_constr:
            out["G"] = np.stack(self.config.constraints(macs), axis=1)

    def front(self, pop) -> np.ndarray:
        """Indices of ``pop``'s feasible, not diverged plans that are non-dominated in (objective, MACs ratio):
        what promotion re-scores and placement refinement moves."""
        from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

        keys = self.keys(pop.get("X"))
        F = np.array([[self.score(k, r), r["macs_ratio"]] for k, r in zip(keys, self.records(keys))])
        ok = np.flatnonzero((pop.get("CV")[:, 0] <= 0) & (F[:, 0] < INF_SCORE))
        return ok[NonDominatedSorting().do(F[ok], only_non_dominated_front=True)] if len(ok) else ok
