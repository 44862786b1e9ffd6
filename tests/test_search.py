"""End-to-end search on the embedded Fashion-MNIST model, cut down to T=10 and 8 images.

The CLI runs use ``--problem tiny_problem:make_problem`` (tests/tiny_problem.py); library-level
runs use ``SearchConfig(overrides=...)``. Every cache goes to a temporary ``FLEXNAS_CACHE``.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_grid_of

from flexnas.cli import main
from flexnas.engine.steps import StepCounter
from flexnas.metrics.store import PrefixStore
from flexnas.models.registry import get_problem
from flexnas.plan.plan import Plan, Segment
from flexnas.plan.space import SearchSpace
from flexnas.search.candidates import CandidateEvaluator, EvalTask
from flexnas.search.config import SearchConfig
from flexnas.search.problem import GenomeProblem
from flexnas.search.runfolder import EvalCache
from flexnas.search.runner import load_checkpoint, run_search

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TINY = "tiny_problem:make_problem"
OVERRIDES = {"T": 10, "num_images": 8, "batch_size": 8}
PNG = b"\x89PNG\r\n\x1a\n"
OUTPUTS = ("candidates.csv", "candidates.json", "front.csv", "front.json", "chosen.csv", "chosen.json",
           "plans/plan_0.json", "pareto.png", "grids/teacher.png", "grids/plan_0.png", "checkpoint.pkl",
           "evaluations.jsonl", "run.json", "summary.json", "timings.json")


def snapshot_pipeline(dst: Path) -> Path:
    """A copy of the embedded DDPM pipeline folder that loads (retried: a background training
    run may be rewriting the shipped weights while we copy them)."""
    from diffusers import DDPMPipeline

    from problems.fashion_mnist.model import PIPELINE_DIR

    for attempt in range(10):
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(PIPELINE_DIR, dst)
        try:
            DDPMPipeline.from_pretrained(dst, local_files_only=True)
            return dst
        except Exception:  # noqa: BLE001 - a half-written file: copy again
            time.sleep(2)
    raise RuntimeError(f"could not snapshot {PIPELINE_DIR}")


@pytest.fixture(scope="module", autouse=True)
def search_env(tmp_path_factory):
    """One temporary FLEXNAS_CACHE for the module (teacher statistics are shared by its runs);
    tests/ importable here and in Dask worker processes; one snapshot of the model weights."""
    mp = pytest.MonkeyPatch()
    mp.setenv("FLEXNAS_TEST_PIPELINE", str(snapshot_pipeline(tmp_path_factory.mktemp("weights") / "ddpm")))
    mp.setenv("FLEXNAS_CACHE", str(tmp_path_factory.mktemp("flexnas-cache")))
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("OMP_WAIT_POLICY", "PASSIVE")
    mp.setenv("PYTHONPATH", os.pathsep.join([str(TESTS), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    mp.syspath_prepend(str(TESTS))
    yield
    mp.undo()


def search_argv(out: Path, *extra: str) -> list[str]:
    """A cheap search (argparse keeps the last of repeated options, so ``extra`` may override)."""
    return ["--threads", "1", "search", "--problem", TINY, "--images", "8", "--pop", "4", "--gens", "2",
            "--segments", "2,5,10", "--wall-images", "1", "--grid-images", "4", "--choose", "2", "--quiet",
            "--rescore-images", "0", "--objective", "rfid", "--paper-space",
            "--out", str(out), *extra]


def cli(argv: list[str]) -> int:
    old = torch.get_num_threads()
    try:
        return main(argv)
    finally:
        torch.set_num_threads(old)


def front_of(run: Path) -> list[tuple]:
    return [(tuple(r["genome"]), r["rfid"], r["macs_ratio"]) for r in json.loads((run / "front.json").read_text())]


def evaluations_of(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines() if line.strip()]


def evaluated_of(run: Path) -> dict[str, tuple]:
    return {r["key"]: (r["generation"], r["rfid"], r["fid_to_real"], r["macs_ratio"]) for r in evaluations_of(run)}


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- module runs
@pytest.fixture(scope="module")
def nsga_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "nsga"
    assert cli(search_argv(out)) == 0
    return out


@pytest.fixture(scope="module")
def ga_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "ga"
    assert cli(search_argv(out, "--algorithm", "ga", "--macs-budget", "0.5")) == 0
    return out


def check_outputs(out: Path, algorithm: str) -> dict:
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in ("pareto.png", "grids/teacher.png", "grids/plan_0.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    summary = json.loads((out / "summary.json").read_text())
    records = evaluations_of(out)
    candidates = json.loads((out / "candidates.json").read_text())
    front = json.loads((out / "front.json").read_text())
    chosen = json.loads((out / "chosen.json").read_text())
    assert summary["evaluated"] == len(records) == len(candidates) == len({r["key"] for r in records})
    assert summary["requested"] == summary["evaluated"] + summary["cache_hits"]
    assert 0 < summary["denoiser_calls_made"] <= summary["denoiser_calls_naive"]
    assert summary["denoiser_calls_made"] == sum(r["calls"] for r in records)
    assert summary["front_size"] == len(front) >= 1
    assert {r["key"] for r in front} <= {r["key"] for r in records}
    assert 1 <= len(chosen) <= 2 and summary["chosen"] == [f"plans/plan_{i}.json" for i in range(len(chosen))]
    space = SearchSpace(**{k: tuple(v) if isinstance(v, list) else v
                           for k, v in json.loads((out / "run.json").read_text())["space"].items()})
    assert space.T == 10 and space.Ns == (2, 5, 10)
    timings = json.loads((out / "timings.json").read_text())
    assert [t["file"] for t in timings] == summary["chosen"]
    for i, r in enumerate(chosen):
        plan = Plan.load(out / "plans" / f"plan_{i}.json")
        assert not {"eval_s", "sample_s", "calls", "wall_s"} & set(r)  # only what the seed determines
        assert plan == Plan.from_dict(r["plan"]) == space.decode(np.array(r["genome"]))
        assert plan.meta["rfid"] == r["rfid"] and plan.meta["macs_ratio"] == r["macs_ratio"]
        assert r["rival"] is None or r["rival"]["macs_ratio"] <= r["macs_ratio"]
        first = {c["key"]: c["generation"] for c in candidates}[r["key"]]  # a seed: in the initial population
        assert r["seed"] is (first == 1) and summary["chosen_plans"][i]["seed"] is r["seed"]
        assert timings[i]["wall_s"] > 0 and 0 < timings[i]["wall_ratio"] and timings[i]["teacher_wall_s"] > 0
        assert (out / "grids" / f"plan_{i}.png").read_bytes()[:8] == PNG
    for r in records:  # every record's genome is canonical, its plan is the decoded genome
        g = np.array(r["genome"])
        assert space.is_canonical(g) and Plan.from_dict(r["plan"]) == space.decode(g)
        assert r["key"] == ",".join(map(str, r["genome"]))
        assert 0 < r["macs_ratio"] <= 1 and r["calls"] <= r["naive_calls"]
    algo = load_checkpoint(out / "checkpoint.pkl")
    assert algo.n_gen == 2 and algo.problem.config.algorithm == algorithm
    return summary


def test_nsga2_run_writes_every_output(nsga_run):
    summary = check_outputs(nsga_run, "nsga2")
    front = json.loads((nsga_run / "front.json").read_text())
    # the teacher (N = T = 10) is in the first population; as the only rfid-0 plan it is on the front
    assert any(r["plan"]["N"] == 10 and r["rfid"] == 0 for r in front)
    assert summary["best"]["rfid"] == min(r["rfid"] for r in front)
    macs = [r["macs_ratio"] for r in front]
    assert macs == sorted(macs)
    # a front: no member dominates another
    for a in front:
        for b in front:
            assert not (a["rfid"] <= b["rfid"] and a["macs_ratio"] <= b["macs_ratio"]
                        and (a["rfid"], a["macs_ratio"]) != (b["rfid"], b["macs_ratio"]))
    cfg = json.loads((nsga_run / "run.json").read_text())["config"]
    assert cfg["problem"] == TINY and cfg["pop"] == 4 and cfg["gens"] == 2 and cfg["segments"] == [2, 5, 10]


def test_ga_run_writes_every_output(ga_run):
    summary = check_outputs(ga_run, "ga")
    front = json.loads((ga_run / "front.json").read_text())
    assert len(front) == 1
    assert front[0]["macs_ratio"] <= 0.5
    feasible = [r for r in evaluations_of(ga_run) if r["macs_ratio"] <= 0.5]
    assert front[0]["rfid"] == min(r["rfid"] for r in feasible)
    assert summary["best"]["rfid"] == front[0]["rfid"]


# --------------------------------------------------------------------------- resume
def test_resume_equals_uninterrupted_run(nsga_run, tmp_path):
    a = tmp_path / "a"
    assert cli(search_argv(a, "--gens", "1")) == 0
    ckpt = load_checkpoint(a / "checkpoint.pkl")
    assert ckpt.n_gen == 1
    gen1 = evaluated_of(a)
    assert {g for g, *_ in gen1.values()} == {1}
    moved = tmp_path / "moved"
    shutil.copytree(a, moved)

    assert cli(search_argv(a, "--gens", "2", "--resume")) == 0
    assert front_of(a) == front_of(nsga_run)
    for name in ("front.json", "front.csv", "chosen.json", "chosen.csv", "plans/plan_0.json"):
        assert (a / name).read_bytes() == (nsga_run / name).read_bytes(), name  # the seed's files, byte for byte
    assert evaluated_of(a) == evaluated_of(nsga_run)
    assert load_checkpoint(a / "checkpoint.pkl").n_gen == 2
    sa, sb = (json.loads((r / "summary.json").read_text()) for r in (a, nsga_run))
    for k in ("evaluated", "requested", "cache_hits", "denoiser_calls_naive", "front_size", "best"):
        assert sa[k] == sb[k], k

    # a copy of the generation-1 folder, "killed" part way through generation 2 (some of its
    # evaluations already logged), resumed through the library: same result, and the folder it
    # was copied from is left alone
    before = snapshot(a)
    gen2 = [r for r in evaluations_of(nsga_run) if r["generation"] == 2]
    with (moved / "evaluations.jsonl").open("a") as f:
        for r in gen2[: len(gen2) // 2]:
            f.write(json.dumps(r) + "\n")
    cfg = SearchConfig(problem=TINY, pop=4, gens=2, images=8, segments=[2, 5, 10], objective="rfid", skip=False)
    res, problem = run_search(cfg, moved, resume=True, progress=False, threads=1)
    assert problem.run_dir == moved
    assert snapshot(a) == before
    assert evaluated_of(moved) == evaluated_of(nsga_run)
    got = sorted(map(tuple, res.F.tolist()))
    assert got == sorted((r[1], r[2]) for r in front_of(nsga_run))


def test_resume_of_a_finished_run_adds_no_generation(nsga_run, tmp_path):
    run = tmp_path / "done"
    shutil.copytree(nsga_run, run)
    n_before = len(evaluations_of(run))
    cfg = SearchConfig(problem=TINY, pop=4, gens=2, images=8, segments=[2, 5, 10], objective="rfid", skip=False)
    before = snapshot(nsga_run)
    res, problem = run_search(cfg, run, resume=True, progress=False, threads=1)
    assert len(evaluations_of(run)) == n_before
    assert load_checkpoint(run / "checkpoint.pkl").n_gen == 2
    assert sorted(map(tuple, res.F.tolist())) == sorted((r[1], r[2]) for r in front_of(nsga_run))
    assert snapshot(nsga_run) == before  # the folder it was copied from is left alone


@pytest.mark.parametrize("damage", ["delete", "cut"])
def test_resume_rebuilds_lost_evaluation_records(nsga_run, tmp_path, damage):
    """evaluations.jsonl deleted, or cut in the middle of a line: --resume evaluates the lost records
    again (from the feature store) and writes the same front."""
    run = tmp_path / "damaged"
    shutil.copytree(nsga_run, run)
    ev = run / "evaluations.jsonl"
    if damage == "delete":
        ev.unlink()
    else:
        text = ev.read_text()
        ev.write_text(text[: len(text) // 2])
    assert cli(search_argv(run, "--resume")) == 0
    assert front_of(run) == front_of(nsga_run)


def test_two_resumes_at_once(nsga_run, tmp_path, capsys):
    """A second --resume while the first runs is refused in one line; the first finishes the run."""
    run = tmp_path / "run"
    shutil.copytree(nsga_run, run)
    first = subprocess.Popen([sys.executable, "-m", "flexnas.cli", *search_argv(run, "--resume", "--gens", "4")],
                             cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not (run / ".lock").is_file() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert (run / ".lock").read_text().split()[0] == str(first.pid)
        assert cli(search_argv(run, "--resume", "--gens", "4")) == 2
        assert f"in use by process {first.pid}" in assert_one_error_line(capsys)
    finally:
        assert first.wait(timeout=300) == 0, first.stderr.read()
    assert load_checkpoint(run / "checkpoint.pkl").n_gen == 4 and not (run / ".lock").exists()


def test_evaluation_records_survive_cuts_and_damage(tmp_path):
    """A cut last line is skipped and the next record keeps a line of its own; an altered record fails
    its checksum and is dropped (evaluated again), while whole records are all kept."""
    path = tmp_path / "evaluations.jsonl"
    cache = EvalCache(path)
    for i in range(3):
        cache.add({"key": str(i), "rfid": float(i)})
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1].replace('"rfid": 1.0', '"rfid": 0.5') + "\n" + lines[2][:20])
    cache = EvalCache(path)
    assert set(cache.records) == {"0"}
    cache.add({"key": "3", "rfid": 3.0})
    assert set(EvalCache(path).records) == {"0", "3"} and EvalCache(path).records["3"] == {"key": "3", "rfid": 3.0}


@pytest.mark.parametrize("delay", [3.0, 6.0, 9.0])
def test_killed_search_resumes_to_the_same_front(nsga_run, tmp_path, delay):
    """SIGKILL at some moment (model loading, mid-generation, mid-output), then the same command with
    --resume (or again, if the run never started): the same front, byte for byte."""
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "flexnas.cli", *search_argv(run)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.kill()
    proc.wait()
    started = (run / "run.json").is_file()
    assert cli(search_argv(run, *(["--resume"] if started else []))) == 0
    for name in ("front.json", "front.csv"):
        assert (run / name).read_bytes() == (nsga_run / name).read_bytes(), name
    assert not (run / ".lock").exists()


def test_resume_cannot_shrink_gens(nsga_run, tmp_path, capsys):
    run = tmp_path / "done"
    shutil.copytree(nsga_run, run)
    before = snapshot(run)
    assert cli(search_argv(run, "--gens", "1", "--resume")) == 2
    assert "can only grow" in assert_one_error_line(capsys)
    assert snapshot(run) == before


# --------------------------------------------------------------------------- Dask workers
def test_workers_give_the_in_process_front(nsga_run, tmp_path):
    out = tmp_path / "workers"
    assert cli(search_argv(out, "--workers", "2", "--wall-images", "0", "--choose", "1")) == 0
    assert front_of(out) == front_of(nsga_run)
    assert evaluated_of(out) == evaluated_of(nsga_run)
    fa, fb = (json.loads((r / "front.json").read_text()) for r in (out, nsga_run))
    assert [r["rfid"] for r in fa] == [r["rfid"] for r in fb]
    assert [r["macs_ratio"] for r in fa] == [r["macs_ratio"] for r in fb]
    assert [r["genome"] for r in fa] == [r["genome"] for r in fb]
    for name in ("front.json", "front.csv"):  # the seed's files, byte for byte, on Dask workers too
        assert (out / name).read_bytes() == (nsga_run / name).read_bytes(), name


def test_lockstep_search_in_process_and_on_workers(nsga_run, tmp_path):
    """With --lockstep (a generation's candidates in shared U-Net calls, here on CPU), the search
    evaluates the same genomes as one by one, with scores within float noise; Dask workers, each
    given a batch of genomes, give the in-process lockstep front."""
    runs = {}
    for name, extra in (("in-process", []), ("workers", ["--workers", "2"])):
        runs[name] = tmp_path / name
        assert cli(search_argv(runs[name], "--lockstep", "--wall-images", "0", "--choose", "1", *extra)) == 0
    mine, base = evaluated_of(runs["in-process"]), evaluated_of(nsga_run)
    assert mine.keys() == base.keys()
    for k in base:
        assert mine[k][0] == base[k][0] and mine[k][3] == base[k][3]  # generation, MACs ratio
        assert mine[k][1:3] == pytest.approx(base[k][1:3], rel=1e-4, abs=1e-4)
    assert [g for g, *_ in front_of(runs["workers"])] == [g for g, *_ in front_of(runs["in-process"])]
    summary = json.loads((runs["in-process"] / "run.json").read_text())
    assert summary["config"]["overrides"]["lockstep"] is True


def test_a_worker_killed_mid_evaluation_is_retried(nsga_run, tmp_path, monkeypatch):
    """SIGKILL one Dask worker process while it evaluates (a fresh feature store, so evaluations
    take real time): Dask reschedules its task, the nanny restarts it, the front is unchanged."""
    import signal
    import threading

    import psutil

    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path / "cold-cache"))
    killed, stop = [], threading.Event()

    def killer():
        me = psutil.Process()
        while not stop.is_set() and not killed:
            workers = [c for c in me.children(recursive=True) if time.time() - c.create_time() > 8]
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
            time.sleep(0.2)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert cli(search_argv(tmp_path / "run", "--workers", "2", "--wall-images", "0", "--choose", "1")) == 0
    finally:
        stop.set()
        thread.join()
    assert killed, "no worker was killed: the test did not test anything"
    assert front_of(tmp_path / "run") == front_of(nsga_run)


# --------------------------------------------------------------------------- evaluation cache
@pytest.fixture
def small_config():
    return SearchConfig(problem=TINY, pop=4, gens=2, images=8, segments=[2, 5, 10], objective="rfid", skip=False, overrides=dict(OVERRIDES))


def test_evaluation_cache_prevents_re_evaluation(small_config, tmp_path, monkeypatch, count_calls):
    ev = CandidateEvaluator.get(small_config, 1)
    ev.evaluator.ensure_teacher()
    space = SearchSpace.build("DDIMScheduler", 10, len(ev.loaded.branches), [2, 5, 10])
    problem = GenomeProblem(space, small_config, tmp_path)
    tasks = []
    real_call = EvalTask.__call__

    def counting(self, x):
        tasks.append(tuple(int(v) for v in x))
        return real_call(self, x)

    monkeypatch.setattr(EvalTask, "__call__", counting)
    unet_calls = count_calls({"unet": ev.loaded.unet})

    a = space.join(2, np.array([1, 0]), np.array([5, 1]))
    a_alias = a.copy()
    a_alias[2] = 4  # branch gene of an interval-1 segment: the same plan
    a_alias[-1] = 3  # an inactive interval gene
    b = space.join(5, np.array([2, 2, 2, 2, 2]), np.array([2, 2, 2, 2, 2]))
    c = space.join(10, np.zeros(10, int), np.ones(10, int))
    X = np.array([a, b, a_alias, c, b])

    out1 = problem.evaluate(X, return_as_dictionary=True)
    assert sorted(tasks) == sorted({space.key(x) for x in X})  # 3 distinct plans, each evaluated once
    calls_first = unet_calls["unet"]
    assert calls_first > 0
    lines = (tmp_path / "evaluations.jsonl").read_text().splitlines()
    assert len(lines) == 3 and len({json.loads(line)["key"] for line in lines}) == 3
    F1 = out1["F"]
    assert F1.shape == (5, 2) and np.array_equal(F1[0], F1[2]) and np.array_equal(F1[1], F1[4])
    assert F1[3, 0] == 0 and F1[3, 1] == 1  # the teacher

    out2 = problem.evaluate(X[::-1].copy(), return_as_dictionary=True)
    assert len(tasks) == 3 and unet_calls["unet"] == calls_first  # no evaluation, no denoiser call
    assert np.array_equal(out2["F"], F1[::-1])
    assert len((tmp_path / "evaluations.jsonl").read_text().splitlines()) == 3
    assert problem.requested_total == 10

    # the cache is the run folder's: a new problem over the same folder evaluates nothing either
    again = GenomeProblem(space, small_config, tmp_path)
    assert np.array_equal(again.evaluate(X, return_as_dictionary=True)["F"], F1)
    assert len(tasks) == 3 and unet_calls["unet"] == calls_first
    # a new genome is evaluated and appended
    d = space.join(5, np.array([0, 0, 0, 0, 0]), np.array([1, 2, 1, 2, 1]))
    again.evaluate(d[None], return_as_dictionary=True)
    assert len(tasks) == 4 and len((tmp_path / "evaluations.jsonl").read_text().splitlines()) == 4


def test_a_controlnet_reuse_plan_is_refused_by_a_model_without_controlnet(small_config):
    from dataclasses import replace

    from flexnas.errors import FlexnasError

    loaded = CandidateEvaluator.get(small_config, 1).loaded
    with pytest.raises(FlexnasError, match="has no ControlNet"):
        loaded.latents(replace(Plan.deepcache("DDIMScheduler", 10, 2, 0), controlnet_reuse=True), n=1)


def test_ga_problem_constraint(small_config, tmp_path):
    cfg = SearchConfig(**{**small_config.__dict__, "algorithm": "ga", "macs_budget": 0.5})
    ev = CandidateEvaluator.get(cfg, 1)
    space = SearchSpace.build("DDIMScheduler", 10, len(ev.loaded.branches), [2, 5, 10])
    problem = GenomeProblem(space, cfg, tmp_path)
    X = np.array([space.join(10, np.zeros(10, int), np.ones(10, int)),
                  space.join(2, np.array([0, 0]), np.array([1, 1]))])  # 2 FULL steps, 8 NULL
    out = problem.evaluate(X, return_as_dictionary=True)
    assert out["F"].shape == (2, 1) and out["G"].shape == (2, 1)
    assert out["F"][0, 0] == 0 and out["G"][0, 0] == pytest.approx(0.5)
    assert out["G"][1, 0] == pytest.approx(0.2 - 0.5)


def test_nsga2_problem_floor_and_budget_constraints(small_config, tmp_path):
    """With a floor, a plan faster than it is infeasible by exactly the MACs it lacks (pymoo's G <= 0: met)."""
    cfg = SearchConfig(**{**small_config.__dict__, "macs_budget": 0.55, "macs_floor": 0.3}).validate()
    ev = CandidateEvaluator.get(cfg, 1)
    space = SearchSpace.build("DDIMScheduler", 10, len(ev.loaded.branches), [2, 5, 10])
    problem = GenomeProblem(space, cfg, tmp_path)
    X = np.array([space.join(10, np.zeros(10, int), np.ones(10, int)),  # the teacher: over the budget
                  space.join(2, np.array([0, 0]), np.array([1, 1])),  # 2 FULL steps: below the floor
                  space.join(5, np.zeros(5, int), np.array([1, 1, 2, 1, 1]))])  # 5 FULL, 1 PARTIAL: inside
    out = problem.evaluate(X, return_as_dictionary=True)
    macs = out["F"][:, 1]
    assert out["G"].shape == (3, 2) and problem.n_ieq_constr == 2
    np.testing.assert_allclose(out["G"], np.stack([macs - 0.55, 0.3 - macs], axis=1))
    assert macs[1] == pytest.approx(0.2) and 0.5 < macs[2] < 0.55
    assert [cfg.feasible(m) for m in macs] == [False, False, True]
    assert (out["G"] <= 0).all(axis=1).tolist() == [False, False, True]


# --------------------------------------------------------------------------- prefix reuse
def test_prefix_reuse_is_exact_and_saves_calls(small_config):
    ev = CandidateEvaluator.get(small_config, 1)
    ev.evaluator.ensure_teacher()
    S = "DDIMScheduler"
    plans = [
        Plan(S, 10, (Segment(2, 1), Segment(1), Segment(2, 3), Segment(1), Segment(2, 0))),
        Plan(S, 10, (Segment(2, 1), Segment(1), Segment(2, 3), Segment(2, 5), Segment(1))),  # shares 3 segments
        Plan(S, 10, (Segment(2, 1), Segment(2, 2), Segment(1), Segment(1), Segment(1))),  # shares 1
        Plan(S, 10, (Segment(1), Segment(1), Segment(1), Segment(1), Segment(1))),  # shares none
        Plan(S, 10, (Segment(2, 1), Segment(1), Segment(2, 3), Segment(1), Segment(2, 0))),  # repeat of the first
    ]
    plain_store = ev.evaluator.store(root=None)  # in memory, no prefix reuse
    reuse_store = ev.evaluator.store(root=None, prefixes=PrefixStore())
    plain = [plain_store.cost(p, 8)["calls"] for p in plans[:4]]
    reused = [reuse_store.cost(p, 8)["calls"] for p in plans[:4]]
    for p in plans[:4]:  # bit-identical features with and without sharing a prefix
        assert np.array_equal(plain_store.features(p, 8), reuse_store.features(p, 8))
        assert torch.equal(ev.loaded.latents(p, n=8), ev.loaded.latents(p, n=8, prefixes=reuse_store.prefixes))
    assert plain == [len(p.active_indices()) for p in plans[:4]] == [8, 8, 7, 5]
    # B resumes at segment 3 (2 + 1 calls left), C at segment 1, D shares nothing
    assert reused == [8, 3, 5, 5]
    # the repeat of A is answered by the store: no sampling at all
    assert reuse_store.has(plans[4], 8) and ev.evaluate(plans[0])["macs"] == ev.evaluate(plans[4])["macs"]


def test_prefix_store_counts_shared_cache_tensors_once():
    plan = Plan("DDIMScheduler", 10, ((4, 1), (4, 1)))  # F p1 p1 p1 . F p1 p1 p1 .
    x = torch.zeros(100)  # 400 bytes
    cache = {"a": torch.zeros(1000), "b": (torch.zeros(500),)}  # 6000 bytes, one FULL step's features
    store = PrefixStore(max_bytes=10**6)
    for i in (1, 2, 3):
        store.put(plan, i, ("batch",), x, None, cache)
    assert store.bytes == 3 * 400 + 6000
    store.put(plan, 5, ("batch",), x, None, cache)  # before a FULL step: no cache kept
    assert store.bytes == 4 * 400 + 6000
    assert store.longest(plan, ("batch",))[0] == 5
    small = PrefixStore(max_bytes=7000)
    for i in (1, 2, 3):
        small.put(plan, i, ("batch",), x, None, cache)
    assert small.bytes == 2 * 400 + 6000  # the oldest state went; the cache it shared stays counted once
    hit = small.longest(plan, ("batch",))
    assert hit[0] == 3 and hit[3].keys() == cache.keys()


@pytest.mark.parametrize("null_mode", ["drop", "reuse"])
def test_prefix_reuse_at_partial_steps(small_config, null_mode):
    """Plans that agree up to a PARTIAL step share the state there (latents and the feature cache of the
    FULL step before it): bit-identical latents, and only the steps after it are run."""
    ev = CandidateEvaluator.get(small_config, 1)
    S = "DDIMScheduler"
    first = Plan(S, 10, ((4, 1), (4, 1)), null_mode)  # F p1 p1 p1 . | F p1 p1 p1 .
    second = Plan(S, 10, ((4, 1), (3, 1)), null_mode)  # F p1 p1 p1 . | F p1 p1 . .  (agrees up to step 7)
    prefixes = PrefixStore()
    ev.loaded.latents(first, n=8, prefixes=prefixes)
    counter = StepCounter()
    shared = ev.loaded.latents(second, n=8, prefixes=prefixes, counter=counter)
    assert torch.equal(shared, ev.loaded.latents(second, n=8))
    assert counter.calls == 1  # step 7 (PARTIAL); steps 0..6 came from the store
    assert prefixes.hits == 1 and prefixes.steps_saved == 7


# --------------------------------------------------------------------------- feature store, re-scoring
def test_feature_store_extends_prefixes_and_survives_damage(small_config, tmp_path):
    from flexnas.metrics.features import to_uint8_rgb
    from flexnas.metrics.store import plan_key

    ev = CandidateEvaluator.get(small_config, 1)
    S = "DDIMScheduler"
    plan = Plan(S, 10, (Segment(2, 1), Segment(0), Segment(2, 3), Segment(1), Segment(2, 0)))
    store = ev.evaluator.store(root=tmp_path)
    f8 = store.features(plan, 8)  # one batch (batch size 8)
    f24 = store.features(plan, 24)  # two more batches: the first 8 rows are the 8-image evaluation
    assert f24.shape == (24, 64) and np.array_equal(f24[:8], f8)
    images = ev.loaded.decode(ev.loaded.latents(plan, n=16, start=8))  # images 8..16, sampled on their own
    with torch.no_grad():
        direct = store.extractor(to_uint8_rgb(images))[0].double().numpy()
    assert np.array_equal(f24[8:16], direct)
    again = ev.evaluator.store(root=tmp_path)  # a new process reads the batches from disk
    assert again.has(plan, 24) and np.array_equal(again.features(plan, 24), f24)
    assert again.cost(plan, 24)["calls"] == 3 * len(plan.active_indices())
    damaged = next(tmp_path.rglob("0000008-0000016.npz"))
    damaged.write_bytes(b"not an npz")
    third = ev.evaluator.store(root=tmp_path)
    assert not third.has(plan, 24) and np.array_equal(third.features(plan, 24), f24)  # sampled again
    # one step sequence, two segmentations: one store entry
    assert plan_key(Plan.step_reduction(S, 10, 1)) == plan_key(Plan(S, 10, (Segment(1),) + (Segment(0),) * 4))


def test_a_shipped_store_is_read_where_the_own_store_lacks_a_batch_and_never_written(small_config, tmp_path):
    from flexnas.metrics.store import FeatureStore

    ev = CandidateEvaluator.get(small_config, 1)
    e = ev.evaluator
    plan = Plan("DDIMScheduler", 10, (Segment(2, 1), Segment(1), Segment(2, 0), Segment(1), Segment(1)))
    shipped, own = tmp_path / "shipped", tmp_path / "own"
    f16 = e.store(root=shipped).features(plan, 16)
    files = {f: f.read_bytes() for f in shipped.rglob("*.npz")}

    def store(namespace):
        return FeatureStore(e.loaded, e.extractor, e.extractor_kw, namespace, own, shipped=shipped)

    assert store(e.identity()).has(plan, 16) and not own.exists()  # found, nothing sampled or written
    assert np.array_equal(store(e.identity()).features(plan, 16), f16)
    f24 = store(e.identity()).features(plan, 24)  # the third batch is sampled, into the own store only
    assert np.array_equal(f24[:16], f16) and [f.name for f in own.rglob("*.npz")] == ["0000016-0000024.npz"]
    assert {f: f.read_bytes() for f in shipped.rglob("*.npz")} == files
    assert not store("another-identity").has(plan, 8)  # another setting's namespace: a miss
    bad = own / e.identity() / next(shipped.rglob("*.npz")).parent.name / "0000000-0000008.npz"
    bad.write_bytes(b"not an npz")  # a damaged own batch: the shipped one is read, nothing sampled
    assert np.array_equal(store(e.identity()).features(plan, 16), f16) and bad.read_bytes() == b"not an npz"


def test_rescoring_writes_high_fidelity_columns(tmp_path):
    import csv

    from flexnas.metrics.measures import Reference, fid, statistics

    out = tmp_path / "run"
    assert cli(search_argv(out, "--goal", "quality", "--objective", "fid_to_real", "--rescore-images", "16")) == 0
    rows = list(csv.DictReader((out / "rescored.csv").open()))
    assert rows and {"hi_images", "hi_front", "hi_fid_to_real", "hi_kid_to_real", "fid_to_real"} <= set(rows[0])
    assert "hi_paired" not in rows[0]  # quality goal: the teacher's 16 images are not sampled for it
    front = json.loads((out / "front.json").read_text())
    assert {r["key"] for r in front} <= {r["key"] for r in rows}
    ev = CandidateEvaluator.get(SearchConfig(problem=TINY, images=8).validate(), 1)
    from problems.fashion_mnist import FEATURE_EXTRACTOR, REAL_STATISTICS

    real = Reference.load(REAL_STATISTICS, FEATURE_EXTRACTOR)
    for r in rows:  # an independent FID of the plan's first 16 images against the shipped statistics
        feats = ev.store.features(Plan.from_dict(json.loads((out / "rescored.json").read_text())[rows.index(r)]["plan"]), 16)
        assert float(r["hi_fid_to_real"]) == pytest.approx(fid(statistics(feats), {"mu": real.mu, "sigma": real.sigma}),
                                                           abs=1e-5)
    hi = [(float(r["hi_fid_to_real"]), float(r["macs_ratio"])) for r in rows]
    for r, (q, m) in zip(rows, hi):  # hi_front: exactly the non-dominated re-scored plans
        dominated = any(q2 <= q and m2 <= m and (q2, m2) != (q, m) for q2, m2 in hi)
        assert (r["hi_front"] == "True") == (not dominated)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["measure"] == "hi_fid_to_real" and summary["goal"] == "quality"
    assert all("hi_fid_to_real" in c for c in summary["chosen_plans"])


def test_promotion_rescores_the_population_front_and_the_search_uses_it(tmp_path):
    """--promote-every 2 (one promotion, after generation 2): the non-dominated plans of the population are scored
    on 16 images (checked against an independent FID), put back on the 8-image scale by their mean shift, and the
    final front is non-dominated in those scores."""
    import csv

    from flexnas.metrics.measures import Reference, fid, statistics
    from problems.fashion_mnist import FEATURE_EXTRACTOR, REAL_STATISTICS

    out = tmp_path / "run"
    assert cli(search_argv(out, "--goal", "quality", "--objective", "fid_to_real", "--promote-every", "2",
                           "--promote-images", "16")) == 0
    problem = load_checkpoint(out / "checkpoint.pkl").problem
    promoted, records = problem.promoted, {r["key"]: r for r in evaluations_of(out)}
    assert promoted and {p["generation"] for p in promoted.values()} == {2}
    ev = CandidateEvaluator.get(SearchConfig(problem=TINY, images=8, overrides=dict(OVERRIDES)).validate(), 1)
    real = Reference.load(REAL_STATISTICS, FEATURE_EXTRACTOR)
    for key, p in promoted.items():
        feats = ev.store.features(Plan.from_dict(records[key]["plan"]), 16)
        assert p["fid_to_real"] == pytest.approx(fid(statistics(feats), {"mu": real.mu, "sigma": real.sigma}), abs=1e-5)
        assert p["score"] == pytest.approx(p["fid_to_real"] + p["shift"])
        cost = [ev.store.cost(Plan.from_dict(records[key]["plan"]), n)["calls"] for n in (8, 16)]
        assert p["calls"] in (0, cost[1] - cost[0])  # the images beyond the screening ones, when newly sampled
    shift = np.mean([records[k]["fid_to_real"] - p["fid_to_real"] for k, p in promoted.items()])
    assert all(p["shift"] == pytest.approx(shift) for p in promoted.values())
    assert shift > 0  # FID on 8 images is biased upward against FID on 16
    front = json.loads((out / "front.json").read_text())
    assert any("promoted_fid_to_real" in r for r in front)
    score = [(promoted[r["key"]]["score"] if r["key"] in promoted else r["fid_to_real"], r["macs_ratio"]) for r in front]
    for a in score:
        assert not any(b[0] <= a[0] and b[1] <= a[1] and b != a for b in score)
    assert {"promoted_images", "promoted_fid_to_real"} <= set(next(csv.DictReader((out / "front.csv").open())))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["denoiser_calls_made"] == (sum(r["calls"] for r in records.values())
                                              + sum(p["calls"] for p in promoted.values()))


def test_promoted_ga_keeps_its_best_by_the_promoted_score(tmp_path):
    out = tmp_path / "ga"
    assert cli(search_argv(out, "--algorithm", "ga", "--macs-budget", "0.5", "--goal", "quality", "--objective",
                           "fid_to_real", "--promote-every", "1", "--promote-images", "16", "--gens", "3")) == 0
    algorithm = load_checkpoint(out / "checkpoint.pkl")
    problem = algorithm.problem
    assert problem.promoted
    score = {r["key"]: problem.score(r["key"], r) for r in evaluations_of(out) if r["macs_ratio"] <= 0.5}
    in_pop = {k for k in problem.keys(algorithm.pop.get("X")) if k in score}
    best = problem.keys(algorithm.opt.get("X"))[0]
    assert score[best] == min(score[k] for k in in_pop)  # pymoo's own GA survival ranked the promoted scores


def test_placement_refinement_moves_the_fronts_full_steps(tmp_path):
    """--refine-evals 200 (skip space): the generations are the unrefined run's (same seed); then evaluations
    more (the tiny model's plans reach a local optimum long before 200), each of a FULL-only plan with as many
    FULL steps as a plan on the unrefined front; every plan of that front is matched or dominated by the
    refined front, whose FULL-only plans no move improves. With 3 evaluations, all go to the fastest start."""
    from flexnas.search.placement import moves, placement

    runs = {}
    for name, extra in (("plain", ()), ("thin", ("--refine-evals", "3")), ("refined", ("--refine-evals", "200"))):
        out = tmp_path / name
        argv = [a for a in search_argv(out, "--objective", "paired", "--pop", "8", *extra) if a != "--paper-space"]
        assert cli(argv) == 0
        runs[name] = out
    plain, thin, refined = ({r["key"]: r for r in evaluations_of(runs[n])} for n in ("plain", "thin", "refined"))
    assert set(plain) < set(refined) and len(refined) - len(plain) < 200
    space = load_checkpoint(runs["plain"] / "checkpoint.pkl").problem.space
    front = json.loads((runs["plain"] / "front.json").read_text())
    counts = {Plan.from_dict(r["plan"]).counts()["full"] for r in front}
    fastest = min(Plan.from_dict(r["plan"]).counts()["full"] for r in front
                  if placement(space, np.array(r["genome"])) is not None)
    assert 0 < len(thin) - len(plain) <= 3 and fastest < max(counts)  # equal shares would spread them
    assert {Plan.from_dict(thin[k]["plan"]).counts()["full"] for k in set(thin) - set(plain)} == {fastest}
    for key in set(refined) - set(plain):
        plan = Plan.from_dict(refined[key]["plan"])
        assert plan.N == plan.T and not plan.counts()["partial"] and plan.counts()["full"] in counts
    fronts = {n: [(r["paired"], r["macs_ratio"]) for r in json.loads((runs[n] / "front.json").read_text())]
              for n in runs}
    for q, m in fronts["plain"]:
        assert any(q2 <= q and m2 <= m for q2, m2 in fronts["refined"])
    mixed = [(r["paired"], r["macs_ratio"]) for r in front if Plan.from_dict(r["plan"]).counts()["partial"]]
    found = [(r["paired"], r["macs_ratio"]) for r in json.loads((runs["refined"] / "front.json").read_text())
             if r["key"] not in plain]
    assert any(q2 < q and m2 < m for q, m in mixed for q2, m2 in found)  # a start with a PARTIAL step dropped
    problem = load_checkpoint(runs["refined"] / "checkpoint.pkl").problem
    checked = 0
    for r in json.loads((runs["refined"] / "front.json").read_text()):
        x = placement(problem.space, np.array(r["genome"]))
        full_only = x is not None and not Plan.from_dict(r["plan"]).counts()["partial"]
        for i in range(Plan.from_dict(r["plan"]).counts()["full"] if full_only else 0):
            near = problem.keys(moves(problem.space, x, i))
            assert all(refined[k]["paired"] >= r["paired"] for k in near)
            checked += len(near)
    assert checked
    assert json.loads((runs["refined"] / "run.json").read_text())["config"]["refine_evals"] == 200


def test_promoted_run_resumes_to_the_uninterrupted_front(tmp_path):
    """The promoted scores live in the checkpoint: stopping after each generation changes nothing."""
    extra = ("--goal", "quality", "--objective", "fid_to_real", "--promote-every", "1", "--promote-images", "16")
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert cli(search_argv(whole, *extra, "--gens", "3")) == 0
    for gens in ("1", "2", "3"):
        assert cli(search_argv(parts, *extra, "--gens", gens, *(["--resume"] if gens != "1" else []))) == 0
    promoted = [{k: {f: v for f, v in p.items() if f != "calls"}  # calls made: what the feature store lacked
                 for k, p in load_checkpoint(run / "checkpoint.pkl").problem.promoted.items()} for run in (whole, parts)]
    assert promoted[0] == promoted[1] and max(p["generation"] for p in promoted[0].values()) == 3
    assert (whole / "front.json").read_bytes() == (parts / "front.json").read_bytes()


# --------------------------------------------------------------------------- bad input
def assert_one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("flexnas: error: ") and "Traceback" not in captured.err
    return lines[0]


@pytest.mark.parametrize("extra, words", [
    (["--pop", "1"], "--pop"),
    (["--gens", "0"], "--gens"),
    (["--images", "1"], "--images"),
    (["--algorithm", "ga"], "--macs-budget"),
    (["--macs-budget", "1.5"], "--macs-budget"),
    (["--macs-budget", "0"], "--macs-budget"),
    (["--macs-floor", "0"], "--macs-floor"),
    (["--macs-budget", "0.3", "--macs-floor", "0.3"], "below the MACs budget"),
    (["--workers", "0"], "--workers"),
    (["--workers", "2", "--dask", "tcp://127.0.0.1:9"], "not both"),
    (["--choose", "-1"], "--choose"),
    (["--segments", "2,x"], "--segments"),
    (["--rescore-images", "4"], "--rescore-images"),
    (["--promote-images", "4", "--promote-every", "1"], "--promote-images"),
    (["--promote-every", "-1"], "--promote-every"),
    (["--promote-images", "16"], "needs --promote-every"),
    (["--refine-evals", "-1"], "--refine-evals"),
    (["--scheduler", "PNDMScheduler", "--null-mode", "drop"], "cannot drop timesteps"),
    (["--dask", "foo://bar"], "cannot reach the Dask scheduler"),
    (["--segments", "3"], "do not divide T=10"),
    (["--branches", "99"], "branch"),
    (["--images", "100000000"], "over the limit"),
    (["--extractor", "no-such-extractor"], "extractor"),
])
def test_bad_search_input(tmp_path, capsys, extra, words):
    """One line, and nothing created: a failed start leaves no run folder behind."""
    out = tmp_path / "run"
    assert cli(search_argv(out, *extra)) == 2
    assert words in assert_one_error_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize("extra, flag", [
    (["--pop", "8"], "--pop"),
    (["--seed", "5"], "--seed"),
    (["--objective", "fid_to_real"], "--objective"),
    (["--refine-evals", "10"], "--refine-evals"),
    (["--steps", "20"], "model options"),
])
def test_resume_refuses_conflicting_options(nsga_run, tmp_path, capsys, extra, flag):
    run = tmp_path / "run"
    shutil.copytree(nsga_run, run)
    before = snapshot(run)
    assert cli(search_argv(run, "--resume", *extra)) == 2
    line = assert_one_error_line(capsys)
    assert flag in line and "conflicts" in line
    assert snapshot(run) == before


def test_a_locked_run_folder_is_refused_and_a_stale_lock_taken_over(nsga_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(nsga_run, run)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / ".lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        before = snapshot(run)
        assert cli(search_argv(run, "--resume")) == 2
        assert f"in use by process {holder.pid}" in assert_one_error_line(capsys)
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, the resume takes it over and releases it at the end
    assert cli(search_argv(run, "--resume")) == 0
    assert not (run / ".lock").exists() and front_of(run) == front_of(nsga_run)


def test_existing_out_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / "front.json").write_text("[]")
    before = snapshot(out)
    assert cli(search_argv(out)) == 2
    assert "--resume" in assert_one_error_line(capsys)
    assert snapshot(out) == before


@pytest.mark.parametrize("name", ["run.json", "checkpoint.pkl", "evaluations.jsonl", "front.json", "front.csv",
                                  "candidates.json", "summary.json", "plans/plan_0.json", "chosen.json", ".lock"])
@pytest.mark.parametrize("damage", ["garbage", "empty", "folder"])
def test_each_run_file_damaged_in_turn(nsga_run, tmp_path, capsys, name, damage):
    """Each file of a finished run damaged in turn, then --resume: either the complete run folder with
    the same front (outputs rebuilt), or one clear line with the folder left exactly as it was."""
    run = tmp_path / "run"
    shutil.copytree(nsga_run, run)
    path = run / name
    if path.exists():
        path.unlink()
    if damage == "folder":
        path.mkdir(parents=True)
    else:
        path.write_bytes(b"" if damage == "empty" else b"\x00garbage\xff" * 7)
    before = snapshot(run)
    rc = cli(search_argv(run, "--resume"))
    if rc == 0:
        for out in OUTPUTS:
            assert (run / out).is_file(), out
        assert front_of(run) == front_of(nsga_run)
        assert (run / "front.json").read_bytes() == (nsga_run / "front.json").read_bytes()
    else:
        assert rc == 2
        assert_one_error_line(capsys)
        assert snapshot(run) == before


def test_resume_with_corrupt_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pkl").write_bytes(b"\x80\x04garbage" + os.urandom(64))
    (out / "evaluations.jsonl").write_text('{"key": "0"}\n')
    before = snapshot(out)
    assert cli(search_argv(out, "--resume")) == 2
    assert "corrupt" in assert_one_error_line(capsys)
    assert snapshot(out) == before


def test_resume_with_truncated_checkpoint(nsga_run, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(nsga_run, out)
    data = (out / "checkpoint.pkl").read_bytes()
    (out / "checkpoint.pkl").write_bytes(data[: len(data) // 2])
    before = snapshot(out)
    assert cli(search_argv(out, "--resume")) == 2
    assert "corrupt" in assert_one_error_line(capsys)
    assert snapshot(out) == before


def test_resume_with_a_pickle_that_is_no_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.pkl").write_bytes(pickle.dumps({"n_gen": 1, "problem": None}))
    before = snapshot(out)
    assert cli(search_argv(out, "--resume")) == 2
    assert "not a flexnas search checkpoint" in assert_one_error_line(capsys)
    assert snapshot(out) == before


def test_resume_without_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text("{}")
    before = snapshot(out)
    assert cli(search_argv(out, "--resume")) == 2
    assert "checkpoint" in assert_one_error_line(capsys)
    assert snapshot(out) == before
    assert cli(search_argv(tmp_path / "missing", "--resume")) == 2
    assert "does not exist" in assert_one_error_line(capsys)
    assert not (tmp_path / "missing").exists()


def run_cli_subprocess(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "flexnas.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_unreachable_dask_scheduler(tmp_path):
    """In a subprocess, so that everything written to stderr (Dask's logging included) is seen."""
    out = tmp_path / "run"
    t0 = time.time()
    proc = run_cli_subprocess(search_argv(out, "--dask", "tcp://127.0.0.1:9"), timeout=120)
    elapsed = time.time() - t0
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("flexnas: error: ") and "Dask" in lines[0], proc.stderr
    assert elapsed < 40  # the 10 s connection timeout, plus the interpreter's start
    # nothing half-made: the folder is empty, so the same command can simply be run again
    assert not out.exists() or not any(out.iterdir())


def test_bad_input_through_the_real_entry_point(tmp_path):
    proc = run_cli_subprocess(search_argv(tmp_path / "run", "--pop", "1"), timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["flexnas: error: --pop must be at least 2, got 1"]


# --------------------------------------------------------------------------- space / plot / sample
def test_space_command(capsys):
    assert cli(["space", "--problem", "fashion-mnist"]) == 0
    text = capsys.readouterr().out
    seg = sum((6 * (100 // n)) ** n for n in (1, 2, 4, 5, 10, 20, 25, 50, 100))
    assert "T=100" in text and "N in [1, 2, 4, 5, 10, 20, 25, 50, 100]" in text and "genome length 201" in text
    assert f"{seg:.3e}" in text and f"{8 ** 100:.3e}" in text
    assert "branch 5:" in text
    assert cli(["space", "--problem", "fashion-mnist", "--segments", "10,20", "--branches", "0,1"]) == 0
    text = capsys.readouterr().out
    assert f"{20 ** 10 + 10 ** 20:.3e}" in text and f"{4 ** 100:.3e}" in text
    assert cli(["space", "--problem", "fashion-mnist", "--segments", "3"]) == 2
    assert "divide" in assert_one_error_line(capsys)
    assert cli(["space", "--problem", "fashion-mnist", "--branches", "9"]) == 2
    assert "do not exist" in assert_one_error_line(capsys)


def test_plot_command(nsga_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(nsga_run, run)
    (run / "pareto.png").unlink()
    assert cli(["plot", str(run)]) == 0
    assert (run / "pareto.png").read_bytes()[:8] == PNG
    capsys.readouterr()
    other = tmp_path / "other.png"
    assert cli(["plot", str(run), "--out", str(other)]) == 0
    assert other.read_bytes()[:8] == PNG
    before = other.read_bytes()
    assert cli(["plot", str(run), "--out", str(other)]) == 2
    assert "already exists" in assert_one_error_line(capsys)
    assert other.read_bytes() == before
    assert cli(["plot", str(tmp_path / "nothing")]) == 2
    assert "not a complete flexnas run folder" in assert_one_error_line(capsys)


def test_sample_command(nsga_run, tmp_path, capsys):
    grid = tmp_path / "grid.png"
    plan = nsga_run / "plans" / "plan_0.json"
    args = ["--threads", "1", "sample", "--problem", TINY, "--plan", str(plan), "--images", "4", "--out", str(grid)]
    assert cli(args) == 0
    data = grid.read_bytes()
    loaded = get_problem(TINY).load()
    assert_grid_of(grid, loaded.images(Plan.load(plan), n=4))  # the plan's own images, not the teacher's
    capsys.readouterr()
    assert cli(args) == 2
    assert "already exists" in assert_one_error_line(capsys)
    assert grid.read_bytes() == data
    teacher = tmp_path / "teacher.png"  # no --plan: the teacher
    assert cli(["--threads", "1", "sample", "--problem", TINY, "--images", "4", "--out", str(teacher)]) == 0
    assert_grid_of(teacher, loaded.images(None, n=4))
    assert cli([*args[:-4], "--images", "0", "--out", str(tmp_path / "none.png")]) == 2
    assert "--images" in assert_one_error_line(capsys)
    assert not (tmp_path / "none.png").exists()


def test_checkpoint_is_a_plain_pickle_of_the_algorithm(nsga_run):
    with (nsga_run / "checkpoint.pkl").open("rb") as f:
        algo = pickle.load(f)
    assert algo.problem.space.T == 10
    # pymoo's exclude_from_serialization: the run's handles are not in the checkpoint
    assert all(getattr(algo.problem, k) is None for k in ("cache", "runner", "task", "progress"))



def test_resume_before_first_checkpoint_starts_over_without_re_evaluating(nsga_run, tmp_path):
    """A run stopped before its first checkpoint keeps run.json and evaluations.jsonl: --resume
    starts over with the run's own settings, answers every known genome from the cache, and
    ends on the uninterrupted run's front."""
    run = tmp_path / "early"
    run.mkdir()
    for name in ("run.json", "evaluations.jsonl"):
        shutil.copy(nsga_run / name, run / name)
    n_before = len(evaluations_of(run))
    cfg = SearchConfig(problem=TINY, pop=4, gens=2, images=8, segments=[2, 5, 10], objective="rfid", skip=False)
    res, problem = run_search(cfg, run, resume=True, progress=False, threads=1)
    assert len(evaluations_of(run)) == n_before  # everything came from the evaluation cache
    assert (run / "checkpoint.pkl").is_file()
    assert sorted(map(tuple, res.F.tolist())) == sorted((r[1], r[2]) for r in front_of(nsga_run))


def test_empty_segment_or_branch_list_is_an_error(tmp_path, capsys):
    for extra, words in ((["--segments", ""], "no segment counts"), (["--branches", ""], "no branches")):
        assert cli(search_argv(tmp_path / "x", *extra)) == 2
        assert words in assert_one_error_line(capsys)
