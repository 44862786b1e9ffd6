"""Running a search: GA or NSGA-II on the ``GenomeProblem`` through pymoo's ``minimize``.

Composes the algorithm (``make_algorithm``), the run folder (lock, evaluation cache,
checkpoint, progress: ``flexnas.search.runfolder``) and the runner (in-process, local Dask
workers or a scheduler address, through pymoo's ``DaskParallelization``). Settings live in
``flexnas.search.config``.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pymoo.core.callback import CallbackCollection
from pymoo.termination.max_gen import MaximumGenerationTermination

from flexnas.engine.steps import first_step
from flexnas.errors import FlexnasError
from flexnas.metrics.macs import MacCounter
from flexnas.models.registry import get_problem
from flexnas.plan.space import SearchSpace
from flexnas.search.candidates import CandidateEvaluator, check_runnable
from flexnas.search.config import SearchConfig, check_resume_options
from flexnas.search.operators import CanonicalDuplicateElimination, FlexSampling, SegmentCrossover, SegmentMutation
from flexnas.search.placement import PlacementRefinement
from flexnas.search.problem import GenomeProblem
from flexnas.search.promotion import Promotion
from flexnas.search.runfolder import Checkpoint, Progress, run_folder


def ga_tournament(pop, P, **kwargs):
    """pymoo's GA tournament (feasibility, then fitness) as a module-level function: pymoo's own is
    wrapped by a local decorator that pickle cannot store, so GA checkpoints would fail."""
    from pymoo.algorithms.soo.nonconvex.ga import comp_by_cv_and_fitness

    return comp_by_cv_and_fitness(pop, P, **kwargs)


def make_algorithm(space: SearchSpace, config: SearchConfig, macs: MacCounter | None = None):
    """pymoo's GA or NSGA-II with the segment operators; with ``macs`` the seeds keep to the constraints."""
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.algorithms.soo.nonconvex.ga import GA
    from pymoo.operators.selection.tournament import TournamentSelection

    sampling = FlexSampling(trailing_null=config.goal == "fidelity", macs=macs, feasible=config.feasible)
    kw = dict(pop_size=config.pop, sampling=sampling, crossover=SegmentCrossover(), mutation=SegmentMutation(),
              eliminate_duplicates=CanonicalDuplicateElimination(space))
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
    if not isinstance(getattr(algorithm, "problem", None), GenomeProblem):
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
    """Run (or resume) a search into ``out`` (locked meanwhile); returns the pymoo result and the GenomeProblem."""

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
            cand = CandidateEvaluator.get(config, threads)
            check_runnable(cand.evaluator, config)  # before writing anything
            space = SearchSpace.build(base.scheduler, base.T, len(cand.loaded.branches), config.segments,
                                      config.branches, base.null_mode, config.skip,
                                      first_step(base.T, cand.evaluator.macs.strength))
            problem = GenomeProblem(space, config, out)
            algorithm = make_algorithm(space, config, cand.evaluator.macs)
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
        # promotion first: the checkpoint and the progress bar see the promoted population
        every, images = config.promote_every, config.promote_images or 4 * evaluator.n
        cbs = [Promotion(every, images)] if every else []
        cbs += [PlacementRefinement(config.refine_evals)] if config.refine_evals else []
        cb = CallbackCollection(*cbs, Checkpoint(ckpt_path), *([bar] if bar is not None else []))
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
