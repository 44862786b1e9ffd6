"""The ``flexnas`` command line.

Every user error is a ``FlexnasError``: printed as one line, exit status 2, and no
file that existed before the command is overwritten (``flexnas plot RUN`` redraws the
run's own ``pareto.png`` unless given ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: 2-core machines slow down 5-10x without

from flexnas.errors import FlexnasError, writable_folder  # noqa: E402
from flexnas.measures import GOALS, MEASURES  # noqa: E402

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


# upper bounds checked before any work: beyond them memory or time runs out long before a result
LIMITS = {"images": (50_000, "torch-fidelity's own FID protocol uses 50,000"),
          "rescore_images": (50_000, "torch-fidelity's own FID protocol uses 50,000"),
          "wall_images": (10_000, "a wall-clock measurement needs a few batches"),
          "grid_images": (1_024, "a grid image of more is unreadable"),
          "pop": (10_000, "each generation evaluates the whole population"),
          "gens": (10_000, "resume with --gens to extend a run"),
          "batch_size": (4_096, "larger batches only cost memory"),
          "workers": (256, "each worker loads its own model")}


def _check_limits(args: argparse.Namespace) -> None:
    for name, (high, why) in LIMITS.items():
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and value > high:
            raise FlexnasError(f"--{name.replace('_', '-')} {value} is over the limit of {high:,} ({why})")


def _setup_torch(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise FlexnasError(f"--threads must be at least 1, got {threads}")
    cores = os.cpu_count() or 1
    if threads is not None and threads > 4 * cores:
        raise FlexnasError(f"--threads {threads} is more than 4x this machine's {cores} cores: use at most {cores}")
    import torch

    torch.set_num_threads(threads or max(1, min(2, os.cpu_count() or 1)))


# CLI option -> problem override (Problem field or problem_from_pretrained argument)
MODEL_OVERRIDES = {"scheduler": "scheduler", "base_steps": "T", "guidance": "guidance_scale", "prompts": "prompts",
                   "resolution": "resolution", "device": "device", "dtype": "dtype", "batch_size": "batch_size",
                   "compile": "compile"}


def _problem_spec(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(problem spec for ``get_problem``, overrides) from ``--problem`` and/or ``--model`` and the model options.

    ``--problem NAME`` alone: a registered problem; ``--model PATH_OR_ID`` alone: any diffusers pipeline
    with a U-Net (defaults from its pipeline class); both: the named problem's settings on local weights.
    """
    problem, model = getattr(args, "problem", None), getattr(args, "model", None)
    if not problem and not model:
        raise FlexnasError("give --problem NAME (e.g. fashion-mnist) or --model PATH_OR_HUB_ID (a diffusers pipeline)")
    if model and Path(model).expanduser().is_dir():
        model = str(Path(model).expanduser().resolve())  # absolute: run.json and workers must find it again
    overrides: dict[str, Any] = {}
    if problem and model:
        overrides["model"] = model
    if getattr(args, "null_mode", None):
        overrides["null_mode"] = args.null_mode
    for opt, key in MODEL_OVERRIDES.items():
        value = getattr(args, opt, None)
        if value is not None:
            overrides[key] = value
    if "prompts" in overrides:
        overrides["prompts"] = str(Path(overrides["prompts"]).expanduser().resolve())
    for key in ("T", "resolution", "batch_size"):
        _positive({"T": "base-steps", "batch_size": "batch-size"}.get(key, key), overrides.get(key))
    return problem or model, overrides


def _load(args: argparse.Namespace):
    from flexnas.problem import resolve_device, resolve_dtype
    from flexnas.registry import get_problem

    spec, overrides = _problem_spec(args)
    problem = get_problem(spec, **overrides)
    resolve_dtype(problem.dtype, resolve_device(problem.device))  # a bad --device/--dtype fails before any work
    return problem


def _read_plan(path: str, problem: Any = None):
    """The plan at ``path``; with ``problem``, checked to be made for its scheduler and base schedule."""
    from flexnas.plan import Plan

    plan = Plan.load(path)
    if problem is not None and (plan.scheduler, plan.T) != (problem.scheduler, problem.T):
        raise FlexnasError(f"{path} was made for {plan.scheduler} with T={plan.T} base steps, but problem "
                           f"{problem.name} samples with {problem.scheduler}, T={problem.T}: pass --scheduler "
                           f"{plan.scheduler} --base-steps {plan.T}, or make the plan with 'flexnas plan' for this problem")
    return plan


def _new_file(path: str | Path) -> Path:
    """``path`` checked to be new and writable before any work (its folder is made)."""
    p = Path(path)
    if p.exists():
        raise FlexnasError(f"{p} already exists: choose another --out or remove it first")
    writable_folder(p.parent)
    return p


def _positive(name: str, value: int | float | None) -> None:
    if value is not None and value <= 0:
        raise FlexnasError(f"--{name} must be positive, got {value}")


# --------------------------------------------------------------------------- commands
@command
def cmd_plan(args: argparse.Namespace) -> int:
    """Write a common plan (teacher, DeepCache, step reduction, uniform segments) as JSON."""
    from flexnas.plan import Plan

    problem = _load(args)
    s, T, mode = problem.scheduler, problem.T, problem.null_mode
    chosen = [x for x in ("teacher", "deepcache", "steps", "segments") if getattr(args, x) not in (None, False)
              or getattr(args, x) == 0 and getattr(args, x) is not False]
    if len(chosen) != 1:
        raise FlexnasError("give exactly one of --teacher, --deepcache K, --steps T2, --segments N")
    if args.teacher:
        plan = Plan.teacher(s, T, mode)
    elif args.deepcache is not None:
        if args.branch is None:
            raise FlexnasError("--deepcache needs --branch B (see 'flexnas branches --problem ...')")
        plan = Plan.deepcache(s, T, args.deepcache, args.branch, mode)
    elif args.steps is not None:
        plan = Plan.step_reduction(s, T, args.steps, mode)
    else:
        if args.interval is None:
            raise FlexnasError("--segments needs --interval K (and --branch B when K > 1)")
        plan = Plan.uniform(s, T, args.segments, args.interval, args.branch, mode)
    if any(seg.branch is not None for seg in plan.segments):
        from flexnas.partial import list_branches

        plan.validate(len(list_branches(problem.load().unet)))
    plan = plan.with_meta(problem=problem.name)
    text = plan.to_json()
    if args.out:
        _new_file(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


@command
def cmd_show(args: argparse.Namespace) -> int:
    """Print a plan's step-kind strip, its step counts and (with --problem) its MACs ratio."""
    problem = _load(args) if args.problem or args.model else None
    plan = _read_plan(args.plan, problem)
    print(f"{plan.scheduler}  T={plan.T}  N={plan.N}  L={plan.L}  null mode: {plan.null_mode}")
    print(plan.strip())
    c = plan.counts()
    partial = ", ".join(f"b{b}: {n}" for b, n in c["partial"].items()) or "none"
    print(f"full {c['full']}  partial {sum(c['partial'].values())} ({partial})  null {c['null']}")
    if problem is not None:
        from flexnas.macs import MacCounter

        loaded = problem.load()
        plan.validate(len(loaded.branches))
        macs = MacCounter.for_problem(loaded)
        print(f"MACs per image {macs.plan_macs(plan) / 1e6:.1f}M  ratio to teacher {macs.ratio(plan):.3f} "
              f"(speed-up {1 / macs.ratio(plan):.2f}x)")
        if macs.decode is not None:
            print(f"decode MACs per image {macs.decode / 1e6:.1f}M (VAE/VQ decoder, once per image, not in the ratio)")
    return 0


@command
def cmd_branches(args: argparse.Namespace) -> int:
    """List the model's skip branches (PARTIAL step positions), shallowest first."""
    loaded = _load(args).load()
    for b in loaded.branches:
        print(f"{b.index}\t{b.name}")
    return 0


@command
def cmd_sample(args: argparse.Namespace) -> int:
    """Save a grid of images sampled under a plan (teacher by default)."""
    from flexnas.report import save_grid

    _positive("images", args.images)
    if Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise FlexnasError(f"--out {args.out}: give a .png or .jpg file name")
    out = _new_file(args.out)
    problem = _load(args)
    plan = _read_plan(args.plan, problem) if args.plan else None
    loaded = problem.load()
    images = loaded.images(plan, n=args.images, seed=args.seed)
    save_grid(images, out)
    print(f"wrote {out}")
    return 0


@command
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score one plan: rFID, FID to real images, MACs, MACs ratio and wall-clock time."""
    from flexnas.objectives import Evaluator

    _positive("images", args.images)
    if args.wall_images < 0:
        raise FlexnasError(f"--wall-images must be >= 0, got {args.wall_images}")
    problem = _load(args)
    plan = _read_plan(args.plan, problem)
    ev = Evaluator(problem, images=args.images, extractor=args.extractor, extractor_weights=args.inception_weights,
                   clip=args.clip)
    plan.validate(len(ev.loaded.branches))
    res = ev.evaluate(plan, wall_images=args.wall_images)
    if args.json:
        print(json.dumps(res))
    else:
        for k, v in res.items():
            print(f"{k:>14}  {v:.6g}" if isinstance(v, float) else f"{k:>14}  {v}")
    return 0


def _int_list(text: str | None, name: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise FlexnasError(f"--{name} takes comma-separated integers, got {text!r}") from None


@command
def cmd_space(args: argparse.Namespace) -> int:
    """Print the search space: admissible N, branches, genome length and sizes."""
    from flexnas.space import SearchSpace

    problem = _load(args)
    loaded = problem.load()
    space = SearchSpace.build(problem.scheduler, problem.T, len(loaded.branches),
                              _int_list(args.segments, "segments"), _int_list(args.branches, "branches"),
                              problem.null_mode)
    print(f"problem {problem.name}: {problem.description}")
    print(space.describe())
    for b in loaded.branches:
        print(f"  branch {b.index}: {b.name}")
    return 0


def _stage(text: str) -> None:
    """One progress line on stderr (stdout stays the result)."""
    print(text, file=sys.stderr, flush=True)


def _short(strip: str) -> str:
    """A strip in a few words: counts of FULL, PARTIAL and NULL steps."""
    parts = strip.split()
    return f"{parts.count('F')} full, {sum(p.startswith('p') for p in parts)} partial"


@command
def cmd_search(args: argparse.Namespace) -> int:
    """Run (or resume) a GA or NSGA-II search and write the run folder."""
    import time

    from flexnas.results import write_run_outputs
    from flexnas.candidates import CandidateEvaluator
    from flexnas.config import SearchConfig
    from flexnas.runfolder import run_folder
    from flexnas.search import run_search

    if args.workers is not None and args.workers < 1:
        raise FlexnasError(f"--workers must be at least 1, got {args.workers}")
    if args.workers and args.dask:
        raise FlexnasError("give --workers K or --dask ADDRESS, not both")
    for name in ("choose", "wall_images", "grid_images"):
        if getattr(args, name) < 0:
            raise FlexnasError(f"--{name.replace('_', '-')} must be >= 0")
    spec, overrides = _problem_spec(args)
    overrides.pop("null_mode", None)  # SearchConfig.null_mode carries it
    label = _load(args).name  # checks the problem / model before any run folder is made
    config = SearchConfig(problem=spec, algorithm=args.algorithm, pop=args.pop, gens=args.gens,
                          seed=args.seed, macs_budget=args.macs_budget, images=args.images, goal=args.goal,
                          objective=args.objective, skip=not args.paper_space,
                          rescore_images=args.rescore_images, segments=_int_list(args.segments, "segments"),
                          branches=_int_list(args.branches, "branches"), null_mode=args.null_mode,
                          extractor=args.extractor, extractor_weights=args.inception_weights,
                          overrides=overrides).validate()
    out = Path(args.out) if args.out else Path("runs") / f"{label}-{args.algorithm}-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.time()
    res, problem = run_search(config, out, resume=args.resume, workers=args.workers, dask=args.dask,
                              progress=not args.quiet, threads=args.threads)
    candidates = CandidateEvaluator.get(problem.config, args.threads)
    with run_folder(out, resume=True):
        summary = write_run_outputs(res, problem, out, candidates, n_choose=args.choose,
                                    wall_images=args.wall_images, grid_images=args.grid_images, started=started,
                                    log=None if args.quiet else _stage)
    best, obj, m = summary["best"] or {}, summary["objective"], summary["measure"]
    print(f"evaluated {summary['evaluated']} plans ({summary['cache_hits']} cache hits); denoiser calls "
          f"{summary['denoiser_calls_made']} made vs {summary['denoiser_calls_naive']} naive")
    algo = problem.config.algorithm  # a resumed run keeps its own
    if best and algo == "ga":
        note = "" if best["feasible"] else "  (no plan met the MACs budget: least infeasible)"
        print(f"best {obj} {best[obj]:.4g} at MACs ratio {best['macs_ratio']:.3f}{note}")
    print(f"chosen plans ({m}; beside the best baseline at least as fast):")
    for i, r in enumerate(summary["chosen_plans"]):
        wall = f"  wall {1 / r['wall_ratio']:.2f}x" if r.get("wall_ratio") else ""
        rv = r.get("rival")
        vs = f"   vs {rv[m]:.4g} at {1 / rv['macs_ratio']:.2f}x ({_short(rv['strip'])})" if rv else "   (no baseline as fast)"
        print(f"  plans/plan_{i}.json  MACs {1 / r['macs_ratio']:.2f}x{wall}  {m} {r[m]:.4g}{vs}")
    print(f"results in {out}/ (front.csv, plans/, pareto.png, grids/, summary.json)")
    return 0


@command
def cmd_plot(args: argparse.Namespace) -> int:
    """Redraw a run's Pareto plot from its candidates and front."""
    from flexnas.report import plot_pareto

    run = Path(args.run)
    try:
        records = json.loads((run / "candidates.json").read_text())
        front = json.loads((run / "front.json").read_text())
        config = json.loads((run / "run.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as e:
        raise FlexnasError(f"{run} is not a complete flexnas run folder ({type(e).__name__}: {e})") from None
    out = Path(args.out) if args.out else run / "pareto.png"
    if args.out:
        _new_file(out)
    plot_pareto(records, front, out, config["objective"],
                title=f"{config['problem']} {config['algorithm']} pop {config['pop']} gens {config['gens']}")
    print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flexnas", description="Search fast sampling plans for diffusion models.")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: min(2, cores))")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        return sp

    def problem_arg(sp: argparse.ArgumentParser, steps_flag: bool = True) -> None:
        """--problem and/or --model (one of them is required, checked in _problem_spec) and the model options."""
        sp.add_argument("--problem", default=None,
                        help="registered problem name (fashion-mnist, ddpm-cifar10, ldm-celebahq, sd15) or "
                             "module:function")
        g = sp.add_argument_group("model options (any diffusers pipeline whose denoiser is a U-Net)")
        g.add_argument("--model", default=None, metavar="PATH_OR_ID",
                       help="diffusers pipeline folder or hub id; alone: defaults from its pipeline class; with "
                            "--problem: that problem's settings on these weights")
        g.add_argument("--scheduler", default=None, help="diffusers scheduler class of the base schedule "
                       "(e.g. DDIMScheduler, PNDMScheduler, DPMSolverMultistepScheduler)")
        g.add_argument(*(("--steps", "--base-steps") if steps_flag else ("--base-steps",)), dest="base_steps",
                       type=int, default=None, metavar="T", help="steps T of the base schedule")
        g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (text-to-image)")
        g.add_argument("--prompts", default=None, metavar="FILE",
                       help="prompt file: text (one per line) or JSON (text-to-image)")
        g.add_argument("--resolution", type=int, default=None, metavar="PIXELS", help="image side in pixels")
        g.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the problem's)")
        g.add_argument("--dtype", default=None, choices=("fp32", "fp16", "bf16"),
                       help="model precision (fp16 needs a GPU; default: as loaded)")
        g.add_argument("--batch-size", type=int, default=None, help="images per sampler batch")
        g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile each step kind (default: on for CUDA, off on CPU, as measured in "
                            "benchmarks/REPORT.md)")

    sp = add("plan", "write a common plan as JSON (stdout, or --out)")
    problem_arg(sp, steps_flag=False)  # --steps here is the plain step-reduction plan
    sp.add_argument("--teacher", action="store_true", help="every step FULL")
    sp.add_argument("--deepcache", type=int, metavar="INTERVAL", help="DeepCache uniform: FULL every INTERVAL steps")
    sp.add_argument("--steps", type=int, metavar="T2", help="plain step reduction to T2 steps")
    sp.add_argument("--segments", type=int, metavar="N", help="N uniform segments (with --interval, --branch)")
    sp.add_argument("--branch", type=int, metavar="B")
    sp.add_argument("--interval", type=int, metavar="K")
    sp.add_argument("--null-mode", choices=("drop", "reuse"), default=None)
    sp.add_argument("--out", default=None, help="write to this file instead of stdout (never overwrites)")

    sp = add("show", "print a plan's step strip, counts and MACs ratio")
    sp.add_argument("plan")
    problem_arg(sp)

    sp = add("branches", "list a problem's skip branches")
    problem_arg(sp)

    sp = add("sample", "save a sample grid for a plan")
    problem_arg(sp)
    sp.add_argument("--plan", default=None, help="plan JSON (default: the teacher)")
    sp.add_argument("--images", type=int, default=64)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--out", required=True)
    sp = add("evaluate", "score a plan: rfid, fid_to_real, macs, macs_ratio, wall_s, wall_ratio")
    problem_arg(sp)
    sp.add_argument("--plan", required=True)
    sp.add_argument("--images", type=int, default=None, help="images for rFID (default: the problem's)")
    sp.add_argument("--wall-images", type=int, default=16, help="images per wall-clock measurement (0: skip)")
    sp.add_argument("--extractor", default=None, help="torch-fidelity feature extractor (default: the problem's)")
    sp.add_argument("--inception-weights", default=None, help="local Inception-v3 weights file")
    sp.add_argument("--clip", default=None, metavar="FOLDER",
                    help="local transformers CLIPModel folder: adds clip_score (text-to-image problems)")
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    sp = add("space", "print the search space and its size")
    problem_arg(sp)
    sp.add_argument("--segments", default=None, help="admissible N, comma-separated (default: divisors of T)")
    sp.add_argument("--branches", default=None, help="candidate branches, comma-separated (default: all)")

    sp = add("search", "search plans with GA or NSGA-II")
    problem_arg(sp)
    sp.add_argument("--algorithm", choices=("nsga2", "ga"), default="nsga2")
    sp.add_argument("--pop", type=int, default=16)
    sp.add_argument("--gens", type=int, default=6)
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--macs-budget", type=float, default=None,
                    help="MACs ratio bound (e.g. 0.3): GA needs one; NSGA-II keeps its front below it")
    sp.add_argument("--images", type=int, default=None, help="images per screening evaluation (default: the problem's)")
    sp.add_argument("--goal", choices=GOALS, default=None,
                    help="quality: best FID to real images per compute (default where the problem has real-image "
                         "statistics); fidelity: the teacher's images, faster (default otherwise)")
    sp.add_argument("--objective", choices=tuple(MEASURES), default=None,
                    help="search measure (default: the goal's, see README 'Objectives')")
    sp.add_argument("--rescore-images", type=int, default=None,
                    help="re-score the front and the baselines on this many images (default: the problem's, "
                         "1000 for fashion-mnist; 0: off)")
    sp.add_argument("--paper-space", action="store_true",
                    help="the paper's space: every segment runs a FULL step (no skipped segments)")
    sp.add_argument("--segments", default=None, help="admissible N, comma-separated (default: divisors of T)")
    sp.add_argument("--branches", default=None, help="candidate branches, comma-separated (default: all)")
    sp.add_argument("--null-mode", choices=("drop", "reuse"), default=None)
    sp.add_argument("--extractor", default=None)
    sp.add_argument("--inception-weights", default=None)
    sp.add_argument("--out", default=None, help="run folder (default: runs/PROBLEM-ALGO-TIME); never overwritten")
    sp.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    sp.add_argument("--workers", type=int, default=None, help="evaluate on a local Dask cluster of K workers")
    sp.add_argument("--dask", default=None, metavar="ADDRESS", help="evaluate on an existing Dask scheduler")
    sp.add_argument("--choose", type=int, default=5, help="plans to pick from the front")
    sp.add_argument("--wall-images", type=int, default=16, help="images per wall-clock measurement (0: skip)")
    sp.add_argument("--grid-images", type=int, default=16)
    sp.add_argument("--quiet", action="store_true", help="no progress bar")

    sp = add("plot", "redraw a run's Pareto plot")
    sp.add_argument("run")
    sp.add_argument("--out", default=None)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_limits(args)
        _setup_torch(args.threads)
        rc = COMMANDS[args.command](args)
        sys.stdout.flush()  # inside the try: a reader that left is seen here, not at interpreter exit
        return rc
    except FlexnasError as e:
        print(f"flexnas: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (e.g. `| head`): end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # a path the user named cannot be read or written
        where = f" {e.filename}" if e.filename else ""
        print(f"flexnas: error: cannot use{where}: {e.strerror or e}: check the path and its permissions",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flexnas: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
