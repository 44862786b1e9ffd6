"""Fidelity goal: does seeding with DeepCache-with-trailing-NULL plans beat the baselines at their speed?

    python -m benchmarks.fidelity_seeds [--images 256] [--seed 0]

Runs a fidelity search (NSGA-II, population 12, 4 generations: the benchmark's before 71e21f8; paired distance on 64
images, MACs ratio <= 0.35) with ``FlexSampling(trailing_null=True)``, then scores its feasible
front, the uniform trailing-NULL plans themselves, and the fast-region baselines (stock
``num_inference_steps=k`` for k = 5..35, DeepCache uniform at every interval and branch) on the
first ``--images`` images (paired distance to the teacher), and measures every wall-clock speed-up
here, against the teacher in the same process. A baseline is beaten when a searched plan at
least as fast has a lower paired distance. Every image comes from the shared feature store.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.common import machine, parse, publish, search_front
from flexnas.errors import report_errors
from flexnas.plan.plan import Plan
from flexnas.search.candidates import CandidateEvaluator
from flexnas.search.config import SearchConfig

BUDGET = 0.35  # the benchmark's fast region


def baselines(cand: CandidateEvaluator) -> dict[str, Plan]:
    p, nb = cand.loaded.problem, len(cand.loaded.branches)
    out = {f"DDIM-{k}": Plan.teacher(p.scheduler, k) for k in range(5, 36)}
    out.update({f"DeepCache N={n} b={b}": Plan.deepcache(p.scheduler, p.T, n, b)
                for n in (2, 4, 5, 10, 20, 25) for b in range(nb)})
    return {k: v for k, v in out.items() if cand.evaluator.macs.ratio(v, p.T) <= BUDGET}


def run(images: int, seed: int) -> dict:
    t0 = time.time()
    cfg = SearchConfig(problem="fashion-mnist", algorithm="nsga2", pop=12, gens=4, seed=seed, goal="fidelity",
                       objective="paired", images=64, macs_budget=BUDGET, rescore_images=0)
    front, _ = search_front(cfg, BUDGET)
    search_s = time.time() - t0
    cand = CandidateEvaluator.get(SearchConfig(problem="fashion-mnist", images=images).validate())
    p = cand.loaded.problem
    plans = {f"searched {i}": ("searched", Plan.from_dict(f["plan"])) for i, f in enumerate(front)}
    plans.update({f"trailing N={n} k={k}": ("trailing", Plan.uniform(p.scheduler, p.T, n, k, 0))
                  for n in (20, 25) for k in range(2, p.T // n)})
    plans.update({name: ("baseline", plan) for name, plan in baselines(cand).items()})
    timed = cand.evaluator.wall_ratios([plan for _, plan in plans.values()], 16, 3)
    rows = []
    for (name, (kind, plan)), t in zip(plans.items(), timed):
        r = cand.evaluate(plan, n=images, measures=["paired"])
        rows.append({"name": name, "kind": kind, "strip": plan.strip(), "paired": r["paired"],
                     "macs_speedup": 1 / r["macs_ratio"], "wall_speedup": 1 / t["wall_ratio"]})
    mark_beaten(rows)
    return {"images": images, "seed": seed, "search_s": search_s, "total_s": time.time() - t0, "rows": rows,
            "machine": machine()}


def mark_beaten(rows: list[dict]) -> None:
    """Each baseline's ``beaten_by``: the closest searched plan at least as fast (wall-clock) with a lower
    paired distance, or None."""
    searched = [r for r in rows if r["kind"] == "searched"]
    for r in rows:
        if r["kind"] == "baseline":
            win = [s for s in searched if s["wall_speedup"] >= r["wall_speedup"] and s["paired"] < r["paired"]]
            r["beaten_by"] = min(win, key=lambda s: s["paired"])["name"] if win else None


def render(out: dict) -> str:
    base = sorted((r for r in out["rows"] if r["kind"] == "baseline"), key=lambda r: r["wall_speedup"])
    beaten = sum(r["beaten_by"] is not None for r in base)
    lines = ["## Fidelity seeds: DeepCache with trailing NULL steps", "",
             f"Command: `python -m benchmarks.fidelity_seeds` · search seed {out['seed']} (NSGA-II, population 12, "
             f"4 generations, paired on 64 images, MACs ratio <= {BUDGET}) · paired distance on {out['images']} "
             f"images · wall-clock: 16 images, median of 3, against the teacher in this run · "
             f"{out['total_s'] / 60:.0f} min · machine: {out['machine']}", "",
             f"**{beaten} of {len(base)} fast-region baselines beaten** by a searched plan at least as fast with a "
             "lower paired distance.", "",
             "| plan | kind | wall speed-up | MACs speed-up | paired | beaten by | strip |", "|---|---|---|---|---|---|---|"]
    for r in sorted(out["rows"], key=lambda r: r["wall_speedup"]):
        lines.append(f"| {r['name']} | {r['kind']} | {r['wall_speedup']:.2f}x | {r['macs_speedup']:.2f}x | "
                     f"{r['paired']:.3f} | {r.get('beaten_by') or ''} | `{r['strip'][:48]}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", type=int, default=256)
        p.add_argument("--seed", type=int, default=0)

    args = parse(__doc__, argv, options)

    def go() -> int:
        out = run(args.images, args.seed)
        return publish("fidelity_seeds", out, render(out), Path(args.results), Path(args.report))

    return report_errors(go, prog="fidelity_seeds")


if __name__ == "__main__":
    sys.exit(main())
