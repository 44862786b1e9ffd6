"""The commands that make, show, score and sample plans, and redraw a run's plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from flexnas.cli.args import int_list, load_problem, new_file, positive, read_plan
from flexnas.errors import FlexnasError

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {}


def command(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    COMMANDS[fn.__name__.removeprefix("cmd_")] = fn
    return fn


@command
def cmd_plan(args: argparse.Namespace) -> int:
    """Write a common plan (teacher, DeepCache, step reduction, uniform segments) as JSON."""
    from flexnas.plan.plan import Plan

    problem = load_problem(args)
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
        from flexnas.engine.partial import list_branches

        plan.validate(len(list_branches(problem.load().unet)))
    plan = plan.with_meta(problem=problem.name)
    text = plan.to_json()
    if args.out:
        new_file(args.out).write_text(text + "\n")
    else:
        print(text)
    return 0


@command
def cmd_show(args: argparse.Namespace) -> int:
    """Print a plan's step-kind strip, its step counts and (with --problem) its MACs ratio."""
    problem = load_problem(args) if args.problem or args.model else None
    plan = read_plan(args.plan, problem)
    print(f"{plan.scheduler}  T={plan.T}  N={plan.N}  L={plan.L}  null mode: {plan.null_mode}")
    print(plan.strip())
    c = plan.counts()
    partial = ", ".join(f"b{b}: {n}" for b, n in c["partial"].items()) or "none"
    print(f"full {c['full']}  partial {sum(c['partial'].values())} ({partial})  null {c['null']}")
    if problem is not None:
        from flexnas.metrics.macs import MacCounter

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
    loaded = load_problem(args).load()
    for b in loaded.branches:
        print(f"{b.index}\t{b.name}")
    return 0


@command
def cmd_sample(args: argparse.Namespace) -> int:
    """Save a grid of images sampled under a plan (teacher by default)."""
    from flexnas.report.plots import save_grid

    positive("images", args.images)
    if Path(args.out).suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise FlexnasError(f"--out {args.out}: give a .png or .jpg file name")
    problem = load_problem(args)
    plan = read_plan(args.plan, problem) if args.plan else None
    out = new_file(args.out)  # checked writable before sampling; made only once the inputs are good
    loaded = problem.load()
    images = loaded.images(plan, n=args.images, seed=args.seed)
    save_grid(images, out)
    print(f"wrote {out}")
    return 0


@command
def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score one plan: rFID, FID to real images, MACs, MACs ratio and wall-clock time."""
    from flexnas.metrics.evaluator import Evaluator

    positive("images", args.images)
    if args.wall_images < 0:
        raise FlexnasError(f"--wall-images must be >= 0, got {args.wall_images}")
    problem = load_problem(args)
    plan = read_plan(args.plan, problem)
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


@command
def cmd_space(args: argparse.Namespace) -> int:
    """Print the search space: admissible N, branches, genome length and sizes."""
    from flexnas.plan.space import SearchSpace

    problem = load_problem(args)
    loaded = problem.load()
    space = SearchSpace.build(problem.scheduler, problem.T, len(loaded.branches),
                              int_list(args.segments, "segments"), int_list(args.branches, "branches"),
                              problem.null_mode)
    print(f"problem {problem.name}: {problem.description}")
    print(space.describe())
    for b in loaded.branches:
        print(f"  branch {b.index}: {b.name}")
    return 0


@command
def cmd_plot(args: argparse.Namespace) -> int:
    """Redraw a run's Pareto plot from its candidates and front."""
    from flexnas.report.plots import plot_pareto

    run = Path(args.run)
    try:
        records = json.loads((run / "candidates.json").read_text())
        front = json.loads((run / "front.json").read_text())
        config = json.loads((run / "run.json").read_text())["config"]
    except (OSError, ValueError, KeyError) as e:
        raise FlexnasError(f"{run} is not a complete flexnas run folder ({type(e).__name__}: {e})") from None
    out = Path(args.out) if args.out else run / "pareto.png"
    if args.out:
        new_file(out)
    plot_pareto(records, front, out, config["objective"],
                title=f"{config['problem']} {config['algorithm']} pop {config['pop']} gens {config['gens']}")
    print(f"wrote {out}")
    return 0
