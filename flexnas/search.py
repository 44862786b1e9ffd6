"""The search: a pymoo problem over plan genomes, run by GA or NSGA-II through ``minimize``.

Evaluation is the expensive part, so it is never repeated: the run's evaluation records (one
line per canonical genome) answer known genomes, the feature store (``flexnas.store``) answers
known step sequences from any run, and a prefix store lets a candidate start from the latents
of an earlier one with the same steps up to a FULL step. Uncached genomes are evaluated
in-process, or on Dask workers through pymoo's ``DaskParallelization``; each worker process
loads the model once. Every record holds every measure of ``flexnas.measures``; the goal's
objective is what pymoo sees.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
from pymoo.core.callback import Callback
from pymoo.core.problem import Problem as PymooProblem
from pymoo.termination.max_gen import MaximumGenerationTermination

from flexnas.errors import FlexnasError, writable_folder
from flexnas.measures import DEFAULT_MEASURE, GOALS, MEASURES, available, check_measure, score
from flexnas.objectives import Evaluator
from flexnas.operators import CanonicalDuplicateElimination, FlexSampling, SegmentCrossover, SegmentMutation
from flexnas.plan import Plan
from flexnas.problem import PrefixStore, get_problem
from flexnas.space import SearchSpace

ALGORITHMS = ("nsga2", "ga")
INF_SCORE = 1e9  # what pymoo sees for a diverged candidate (rfid = inf in the records)


@dataclass
class SearchConfig:
    """Everything a run depends on; saved as ``run.json`` and checked on ``--resume``."""

    problem: str = "fashion-mnist"
    algorithm: str = "nsga2"
    pop: int = 16
    gens: int = 6
    seed: int = 0
    macs_budget: float | None = None
    images: int | None = None
    goal: str | None = None  # quality or fidelity (None: quality where the problem has real-image statistics)
    objective: str | None = None  # a measure of flexnas.measures (None: the goal's default)
    skip: bool = True  # segments after the first may be skipped (False: the paper's space)
    rescore_images: int | None = None  # re-score the front and baselines on this many images (0: no; None: the problem's)
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
        if self.rescore_images and self.rescore_images <= max(1, self.images or 0):
            raise FlexnasError(f"--rescore-images {self.rescore_images} must exceed the screening --images "
                               f"({self.images}): re-scoring is on more images")
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
        return self

    def problem_overrides(self) -> dict[str, Any]:
        o = dict(self.overrides)
        if self.null_mode:
            o["null_mode"] = self.null_mode
        return o


EVAL_FIELDS = ("problem", "overrides", "images", "null_mode", "extractor", "extractor_weights")


def check_runnable(evaluator: Evaluator, config: SearchConfig) -> None:
    """Refuse, before any sampling, a search that could only fail or score nothing."""
    from flexnas.engine import accepts_custom_timesteps, is_ddim

    problem = evaluator.loaded.problem
    real = evaluator.reference()
    if config.goal is None:
        config.goal = "quality" if real is not None else "fidelity"
    if config.objective is None:
        config.objective = DEFAULT_MEASURE[config.goal]
    check_measure(config.objective, real)
    if config.rescore_images is None:
        config.rescore_images = problem.rescore_images if problem.rescore_images > evaluator.n else 0
    sch = evaluator.loaded.scheduler
    if problem.null_mode == "drop" and not (is_ddim(sch) or accepts_custom_timesteps(sch)):
        raise FlexnasError(f"{type(sch).__name__} cannot drop timesteps: pass --null-mode reuse")


# --------------------------------------------------------------------------- worker side
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

    def evaluate(self, plan: Plan, n: int | None = None, measures: list[str] | None = None) -> dict[str, Any]:
        """Every measure of ``plan`` on its first ``n`` images (default: the search's), MACs and cost.

        Features come from the feature store: images already sampled (by this run, an earlier
        one or the benchmark) are not sampled again, and more images extend fewer.
        """
        n = self.evaluator.n if n is None else n
        names = measures or self.measures
        t0 = time.perf_counter()
        before = self.store.has(plan, n)
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
        out.update(macs=macs.plan_macs(plan), macs_ratio=macs.plan_macs(plan) / macs.teacher_macs(self.loaded.problem.T),
                   eval_s=round(time.perf_counter() - t0, 3), sample_s=round(cost["sample_s"], 3),
                   calls=0 if before else cost["calls"],
                   naive_calls=len(plan.active_indices()) * len(self.loaded.batches(n)))
        return out


@dataclass
class EvalTask:
    """Picklable unit of work for pymoo's runners: genome -> result dict."""

    config: SearchConfig
    space: SearchSpace
    threads: int | None = None

    def __call__(self, x: np.ndarray) -> dict[str, Any]:
        ev = CandidateEvaluator.get(self.config, self.threads)
        return ev.evaluate(self.space.decode(x))


# --------------------------------------------------------------------------- pymoo problem
class EvalCache:
    """Canonical genome -> result, persisted as JSON lines in the run folder.

    Each line carries a checksum of its record: a line cut short or altered (a run killed
    mid-write, a damaged disk) is skipped and that genome evaluated again, and a record
    appended after a cut line starts on a line of its own.
    """

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict[str, Any]] = {}
        data = path.read_bytes() if path.is_file() else b""
        for line in data.decode("utf-8", "replace").splitlines():
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and "key" in r and r.pop("check", None) in (None, _checksum(r)):
                self.records[r["key"]] = r
        self._newline = bool(data) and not data.endswith(b"\n")

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["key"]] = record
        line = json.dumps({**record, "check": _checksum(record)}) + "\n"
        with self.path.open("a") as f:
            f.write("\n" + line if self._newline else line)
            f.flush()
            os.fsync(f.fileno())
        self._newline = False


def _checksum(record: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def genome_key(x: np.ndarray) -> str:
    return ",".join(str(int(v)) for v in x)


class FlexProblem(PymooProblem):
    """Minimise (objective, MACs ratio) [NSGA-II] or objective s.t. MACs ratio <= budget [GA]."""

    def __init__(self, space: SearchSpace, config: SearchConfig, run_dir: Path):
        ga = config.algorithm == "ga"
        xl, xu = space.bounds()
        super().__init__(n_var=space.n_var, n_obj=1 if ga else 2,
                         n_ieq_constr=0 if config.macs_budget is None else 1,
                         xl=xl, xu=xu, vtype=int)
        self.space, self.config, self.run_dir = space, config, run_dir
        self.generation = 1
        self.requested_total = 0  # evaluations pymoo asked for (cache hits included)
        self.naive_total = 0  # denoiser calls those would cost without cache and prefix reuse
        self.attach()

    def attach(self, runner: Any = None, threads: int | None = None) -> None:
        """(Re)connect what a pickle does not carry: the runner and the evaluation cache."""
        self.runner, self.progress = runner, None
        self.task = EvalTask(self.config, self.space, threads=1 if runner is not None else threads)
        self.cache = EvalCache(self.run_dir / "evaluations.jsonl")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for k in ("runner", "cache", "task", "progress"):
            state.pop(k, None)
        return state

    def records(self, keys: list[str]) -> list[dict[str, Any]]:
        """The evaluation records of canonical genome keys, evaluating the unknown ones (also those lost
        with a damaged or deleted ``evaluations.jsonl``: the feature store makes that cheap)."""
        todo = sorted({k for k in keys if k not in self.cache.records})
        genomes = [np.array([int(v) for v in k.split(",")]) for k in todo]
        progress = getattr(self, "progress", None)
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
class Progress:
    """What a person follows: generations done, plans evaluated in the current one (with cache hits
    and an ETA), and the front's best plan that is not the teacher."""

    def __init__(self, gens: int, done: int, label: str):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=gens, initial=min(done, gens), desc=label, unit="gen", dynamic_ncols=True)
        self.front = ""
        self.start(0, 0)

    def start(self, asked: int, cached: int) -> None:
        self.asked, self.cached, self.done, self.t0 = asked, cached, 0, time.time()
        self._show()

    def step(self) -> None:
        self.done += 1
        self._show()

    def _show(self) -> None:
        left = self.asked - self.cached - self.done
        eta = f" eta {(time.time() - self.t0) / self.done * left:.0f}s" if self.done and left else ""
        self.bar.set_postfix_str(f"plans {self.cached + self.done}/{self.asked} ({self.cached} cached){eta}"
                                 f"{self.front}", refresh=True)

    def generation_done(self, algorithm) -> None:
        F, obj = algorithm.opt.get("F"), algorithm.problem.config.objective
        fast = F[F[:, 1] < 1 - 1e-9] if F.shape[1] > 1 else F  # NSGA-II: leave out the teacher (MACs ratio 1)
        if len(fast):
            best = fast[np.argmin(fast[:, 0])]
            at = f" at {1 / best[1]:.1f}x MACs" if F.shape[1] > 1 else ""
            self.front = f" · front {len(F)}, best non-teacher {obj} {best[0]:.4g}{at}"
        self.bar.update(1)
        self._show()

    def close(self) -> None:
        self.bar.close()


class Checkpoint(Callback):
    """After every generation: pickle the algorithm atomically (and tell the progress display)."""

    def __init__(self, path: Path, progress: Progress | None = None):
        super().__init__()
        self.path, self.progress = path, progress

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["progress"] = None
        return state

    def notify(self, algorithm) -> None:
        problem = algorithm.problem
        problem.generation = algorithm.n_gen + 1
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("wb") as f:
            cloudpickle.dump(algorithm, f)  # pymoo's GA holds local functions plain pickle refuses
        os.replace(tmp, self.path)
        if self.progress is not None:
            self.progress.generation_done(algorithm)


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


LOCK = ".lock"  # pid and host of the process writing the run folder


def _owner(lock: Path) -> tuple[int, str] | None:
    try:
        pid, host = lock.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _held(lock: Path) -> bool:
    """Whether the lock's owner may still run (another host's, or a live process here)."""
    import socket

    owner = _owner(lock)
    return owner is not None and (owner[1] != socket.gethostname() or _alive(owner[0]))


@contextmanager
def run_folder(out: Path, resume: bool):
    """The run folder, checked (new: absent or empty; ``resume``: present) and locked for this process.

    The lock file holds the owner's pid and host; a lock whose process is gone (killed) is stale
    and taken over. A folder this call created is removed again if it ends empty (a failed start).
    """
    import socket

    if resume and not out.is_dir():
        raise FlexnasError(f"--resume: run folder {out} does not exist")
    if not resume:
        if out.exists() and not out.is_dir():
            raise FlexnasError(f"--out {out} is a file: give a folder")
        if out.exists() and any(p.name != LOCK or _held(p) for p in out.iterdir()):
            raise FlexnasError(f"run folder {out} already exists: pass --resume to continue it, or choose another --out")
    created = not out.exists()
    writable_folder(out)
    lock, me = out / LOCK, f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            owner = _owner(lock)
            if _held(lock):
                raise FlexnasError(f"run folder {out} is in use by process {owner[0]} on {owner[1]}: wait for it to "
                                   f"finish (or stop it), or remove {lock} if that process is gone") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        break
    else:
        raise FlexnasError(f"cannot lock run folder {out}: another process keeps taking it")
    try:
        yield out
    finally:
        if _owner(lock) == (os.getpid(), socket.gethostname()):
            lock.unlink(missing_ok=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


# a resumed run keeps its settings: options that would change them are refused (CLI flag of each field)
RESUME_FLAGS = {"problem": "--problem/--model", "algorithm": "--algorithm", "pop": "--pop", "seed": "--seed",
                "macs_budget": "--macs-budget", "images": "--images", "goal": "--goal", "objective": "--objective",
                "skip": "--paper-space", "rescore_images": "--rescore-images", "segments": "--segments",
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
        cb = Checkpoint(ckpt_path, bar)
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
