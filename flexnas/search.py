"""The search: a pymoo problem over plan genomes, run by GA or NSGA-II through ``minimize``.

Evaluation is the expensive part, so it is never repeated: the run's evaluation records
(``flexnas.runfolder``) answer known genomes, and ``flexnas.candidates`` scores the rest from the
feature store, in-process or on Dask workers through pymoo's ``DaskParallelization``. Settings
live in ``flexnas.config``. One generation is traced in docs/DESIGN.md, section 6.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.core.callback import CallbackCollection
from pymoo.core.problem import Problem as PymooProblem
from pymoo.termination.max_gen import MaximumGenerationTermination

from flexnas.candidates import CandidateEvaluator, EvalTask, check_runnable
from flexnas.config import SearchConfig, check_resume_options
from flexnas.errors import FlexnasError
from flexnas.operators import CanonicalDuplicateElimination, FlexSampling, SegmentCrossover, SegmentMutation
from flexnas.registry import get_problem
from flexnas.runfolder import Checkpoint, EvalCache, Progress, run_folder
from flexnas.space import SearchSpace

INF_SCORE = 1e9  # what pymoo sees for a diverged candidate (rfid = inf in the records)


# --------------------------------------------------------------------------- pymoo problem
def genome_key(x: np.ndarray) -> str:
    return ",".join(str(int(v)) for v in x)


class FlexProblem(PymooProblem):
    """Minimise (objective, MACs ratio) [NSGA-II] or objective s.t. MACs ratio <= budget [GA]."""

    def __init__(self, space: SearchSpace, config: SearchConfig, run_dir: Path):
        ga = config.algorithm == "ga"
        xl, xu = space.bounds()
        super().__init__(n_var=space.n_var, n_obj=1 if ga else 2,
                         n_ieq_constr=0 if config.macs_budget is None else 1,
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

    def records(self, keys: list[str]) -> list[dict[str, Any]]:
        """The evaluation records of canonical genome keys, evaluating the unknown ones (also those lost
        with a damaged or deleted ``evaluations.jsonl``: the feature store makes that cheap)."""
        todo = sorted({k for k in keys if k not in self.cache.records})
        genomes = [np.array([int(v) for v in k.split(",")]) for k in todo]
        progress = self.progress
        if progress is not None:
            progress.start(len(set(keys)), len(set(keys)) - len(todo))
        if self.runner is not None and genomes:
            results = self.runner(self.task, genomes)
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

    def _evaluate(self, X, out, *args, **kwargs):
        X = np.asarray(X, dtype=int)
        keys = [genome_key(self.space.canonical(x)) for x in X]
        recs = self.records(keys)
        self.requested_total += len(keys)
        self.naive_total += sum(r["naive_calls"] for r in recs)
        obj = np.array([r.get(self.config.objective, math.inf) for r in recs], dtype=float)
        obj = np.where(np.isfinite(obj), obj, INF_SCORE)
        macs = np.array([r["macs_ratio"] for r in recs], dtype=float)
        out["F"] = obj[:, None] if self.config.algorithm == "ga" else np.stack([obj, macs], axis=1)
        if self.config.macs_budget is not None:
            out["G"] = (macs - self.config.macs_budget)[:, None]


def ga_tournament(pop, P, **kwargs):
    """pymoo's GA tournament (feasibility, then fitness) as a module-level function: pymoo's own is
    wrapped by a local decorator that pickle cannot store, so GA checkpoints would fail."""
    from pymoo.algorithms.soo.nonconvex.ga import comp_by_cv_and_fitness

    return comp_by_cv_and_fitness(pop, P, **kwargs)


def make_algorithm(space: SearchSpace, config: SearchConfig):
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.algorithms.soo.nonconvex.ga import GA
    from pymoo.operators.selection.tournament import TournamentSelection

    kw = dict(pop_size=config.pop, sampling=FlexSampling(), crossover=SegmentCrossover(),
              mutation=SegmentMutation(), eliminate_duplicates=CanonicalDuplicateElimination(space))
    if config.algorithm == "ga":
        return GA(selection=TournamentSelection(func_comp=ga_tournament), **kw)
    return NSGA2(**kw)


# --------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: Path):
    if not path.is_file():
        raise FlexnasError(f"no checkpoint at {path}: nothing to resume (start a new run without --resume)")
    try:
        with path.open("rb") as f:
            algorithm = pickle.load(f)
    except Exception as e:  # noqa: BLE001 - any unreadable pickle gets the same advice
        raise FlexnasError(f"checkpoint {path} is corrupt ({type(e).__name__}): restart the run in a new "
                           "--out folder") from None
    if not isinstance(getattr(algorithm, "problem", None), FlexProblem):
        raise FlexnasError(f"{path} is not a flexnas search checkpoint: restart the run in a new --out folder")
    return algorithm


# --------------------------------------------------------------------------- the run
def connect_runner(workers: int | None, dask: str | None):
    """pymoo's Dask runner on a new LocalCluster (``workers``) or an existing scheduler (``dask``)."""
    if not workers and not dask:
        return None, None
    from distributed import Client, LocalCluster
    from pymoo.parallelization.dask import DaskParallelization

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if dask:
        try:
            client = Client(dask, timeout=10)
        except (OSError, TimeoutError, ValueError) as e:
            raise FlexnasError(f"cannot reach the Dask scheduler at {dask} ({type(e).__name__}): start it with "
                               "'dask scheduler' or check the address") from None
        return DaskParallelization(client), _Closer(client)
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    return DaskParallelization(client), _Closer(client, cluster)


@dataclass
class _Closer:
    client: Any
    cluster: Any = None

    def close(self) -> None:
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def run_search(config: SearchConfig, out: Path, resume: bool = False, workers: int | None = None,
               dask: str | None = None, progress: bool = True, threads: int | None = None):
    """Run (or resume) a search into ``out`` (locked meanwhile); returns the pymoo result and the FlexProblem."""

    config.validate()
    out = Path(out)
    with run_folder(out, resume):
        return _run(config, out, resume, workers, dask, progress, threads)


def _run(config: SearchConfig, out: Path, resume: bool, workers: int | None, dask: str | None, progress: bool,
         threads: int | None):
    ckpt_path = out / "checkpoint.pkl"
    if resume and not ckpt_path.is_file() and (out / "run.json").is_file():
        # stopped before its first checkpoint: start over with the run's own settings (known
        # evaluations stay in evaluations.jsonl and are not repeated)
        try:
            saved = SearchConfig(**json.loads((out / "run.json").read_text())["config"])
        except (ValueError, KeyError, TypeError):
            raise FlexnasError(f"no checkpoint in {out} and its run.json is unreadable: nothing to resume "
                               "(start a new run in another --out)") from None
        check_resume_options(config, saved)
        saved.gens, config, resume = config.gens, saved, False
    algorithm = load_checkpoint(ckpt_path) if resume else None
    if resume:
        check_resume_options(config, algorithm.problem.config)
    if resume and config.gens < algorithm.n_gen:
        raise FlexnasError(f"--gens {config.gens}: this run has done {algorithm.n_gen} generations already; "
                           "a resumed run can only grow")
    # connect before writing run.json: a scheduler that cannot be reached leaves no half-made run folder
    runner, closer = connect_runner(workers, dask)
    try:
        if resume:
            problem = algorithm.problem
            problem.run_dir = out  # the folder may have been moved or copied since the checkpoint
            problem.config.gens = config.gens  # a resumed run keeps its own settings; only gens may grow
            config = problem.config
            try:
                meta = json.loads((out / "run.json").read_text())
            except (OSError, ValueError):
                meta = {}  # rewritten below from the checkpoint's own settings
            meta = meta if isinstance(meta, dict) else {}
            meta["config"] = asdict(config)
            (out / "run.json").write_text(json.dumps(meta, indent=2, default=str))
        else:
            base = get_problem(config.problem, **config.problem_overrides())
            check_runnable(CandidateEvaluator.get(config, threads).evaluator, config)  # before writing anything
            num_branches = len(CandidateEvaluator.get(config, threads).loaded.branches)
            space = SearchSpace.build(base.scheduler, base.T, num_branches, config.segments, config.branches,
                                      base.null_mode, config.skip)
            problem = FlexProblem(space, config, out)
            algorithm = make_algorithm(space, config)
            (out / "run.json").write_text(json.dumps({"config": asdict(config), "space": asdict(space)}, indent=2,
                                                     default=str))
        evaluator = CandidateEvaluator.get(config, threads).evaluator
        # the teacher's features are computed once, here, before any worker needs them
        cand, teacher = CandidateEvaluator.get(config, threads), evaluator.loaded.problem.teacher_plan()
        if progress and not cand.store.has(teacher, evaluator.n):
            print(f"sampling the teacher ({teacher.T} steps) on {evaluator.n} images; its features are stored for "
                  "later runs", file=sys.stderr, flush=True)
        cand.evaluate(teacher)
        problem.attach(runner, threads)
        from pymoo.optimize import minimize

        done = algorithm.n_gen if resume and algorithm.n_gen else 0
        bar = Progress(config.gens, done, f"{config.algorithm} gens") if progress else None
        cb = Checkpoint(ckpt_path) if bar is None else CallbackCollection(Checkpoint(ckpt_path), bar)
        problem.progress = bar
        if resume:
            algorithm.callback = cb
            algorithm.termination = MaximumGenerationTermination(config.gens)
            # the checkpoint was pickled in pymoo's _post_advance, before it counts the generation done:
            # update the termination for the generations done (a finished run adds none), then count it
            algorithm.termination.update(algorithm)
            algorithm.n_iter += 1
            res = minimize(problem, algorithm, copy_algorithm=False)
        else:
            res = minimize(problem, algorithm, MaximumGenerationTermination(config.gens), seed=config.seed,
                           callback=cb, copy_algorithm=False, verbose=False)
        if bar is not None:
            bar.close()
    finally:
        if closer is not None:
            closer.close()
    return res, problem
