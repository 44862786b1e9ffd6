"""``flexnas search``: run or resume a search, then write and print its outputs."""

from __future__ import annotations

import argparse
from pathlib import Path

from flexnas.cli.args import int_list, load_problem, problem_spec, short_strip, stage
from flexnas.cli.commands import command
from flexnas.errors import FlexnasError


@command
def cmd_search(args: argparse.Namespace) -> int:
    """Run (or resume) a GA or NSGA-II search and write the run folder."""
    import time

    from flexnas.report.results import write_run_outputs
    from flexnas.search.candidates import CandidateEvaluator
    from flexnas.search.config import SearchConfig
    from flexnas.search.runfolder import run_folder
    from flexnas.search.runner import run_search

    if args.workers is not None and args.workers < 1:
        raise FlexnasError(f"--workers must be at least 1, got {args.workers}")
    if args.workers and args.dask:
        raise FlexnasError("give --workers K or --dask ADDRESS, not both")
    for name in ("choose", "wall_images", "grid_images"):
        if getattr(args, name) < 0:
            raise FlexnasError(f"--{name.replace('_', '-')} must be >= 0")
    spec, overrides = problem_spec(args)
    overrides.pop("null_mode", None)  # SearchConfig.null_mode carries it
    label = load_problem(args).name  # checks the problem / model before any run folder is made
    config = SearchConfig(problem=spec, algorithm=args.algorithm, pop=args.pop, gens=args.gens,
                          seed=args.seed, macs_budget=args.macs_budget,
                          macs_floor=args.macs_floor, images=args.images, goal=args.goal,
                          objective=args.objective, skip=not args.paper_space,
                          rescore_images=args.rescore_images, promote_every=args.promote_every,
                          promote_images=args.promote_images,
                          refine_evals=args.refine_evals, segments=int_list(args.segments, "segments"),
                          branches=int_list(args.branches, "branches"), null_mode=args.null_mode,
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
                                    log=None if args.quiet else stage)
    best, obj, m = summary["best"] or {}, summary["objective"], summary["measure"]
    print(f"evaluated {summary['evaluated']} plans ({summary['cache_hits']} cache hits); denoiser calls "
          f"{summary['denoiser_calls_made']} made vs {summary['denoiser_calls_naive']} naive")
    algo = problem.config.algorithm  # a resumed run keeps its own
    if best and algo == "ga":
        note = "" if best["feasible"] else "  (no plan met the MACs bounds: least infeasible)"
        print(f"best {obj} {best[obj]:.4g} at MACs ratio {best['macs_ratio']:.3f}{note}")
    print(f"chosen plans ({m}; beside the best baseline at least as fast):")
    for i, r in enumerate(summary["chosen_plans"]):
        wall = f"  wall {1 / r['wall_ratio']:.2f}x" if r.get("wall_ratio") else ""
        rv = r.get("rival")
        vs = f"   vs {rv[m]:.4g} at {1 / rv['macs_ratio']:.2f}x ({short_strip(rv['strip'])})" if rv else "   (no baseline as fast)"
        seed = "  (a seed)" if r["seed"] else ""
        print(f"  plans/plan_{i}.json  MACs {1 / r['macs_ratio']:.2f}x{wall}  {m} {r[m]:.4g}{vs}{seed}")
    print(f"results in {out}/ (front.csv, plans/, pareto.png, grids/, summary.json)")
    return 0
