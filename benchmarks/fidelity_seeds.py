"""Fidelity goal: does a search seeded with DeepCache-with-trailing-NULL plans beat the baselines at their speed?

    python -m benchmarks.fidelity_seeds [--images 256] [--seed 0]

Runs one fidelity search of ``benchmarks.compare`` (NSGA-II with its population, generations, MACs
floor and ceiling, paired distance on its screening images; ``FlexSampling`` with the trailing-NULL
and early-PARTIAL families), then scores its feasible front, the uniform trailing-NULL plans themselves
(segments of at most 10 steps), the early-PARTIAL plans of 5 to 22 FULL steps (``early_partial``: where
stock step counts were unbeaten) and the fast-region baselines (stock ``num_inference_steps=k`` and DeepCache uniform
at every interval and branch of ``benchmarks.compare``) on the first ``--images`` images (paired
distance to the teacher). Wall-clock as ``benchmarks.compare`` models it: interleaved rounds
against the teacher, a least-squares cost per step kind (``fitted_speedups``), each plan's own
median beside it. A baseline is beaten when a searched plan at least as fast has a lower paired
distance. Every image comes from the shared feature store (eager sampling).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from benchmarks.common import machine, parse, publish, search_front
from benchmarks.compare import Settings, fitted_speedups
from flexnas.errors import report_errors
from flexnas.plan.plan import Plan
from flexnas.plan.space import SearchSpace
from flexnas.search.candidates import CandidateEvaluator
from flexnas.search.config import SearchConfig
from flexnas.search.operators import early_partial

ROUNDS = 3  # timing rounds: about 3 min each for the ~60 plans
EARLY_FULLS = range(5, 23)  # early-PARTIAL plans scored on their own: DDIM-5..22 were unbeaten at e5900e8


def baselines(cand: CandidateEvaluator, s: Settings) -> dict[str, Plan]:
    p, nb = cand.loaded.problem, len(cand.loaded.branches)
    out = {f"DDIM-{k}": Plan.teacher(p.scheduler, k) for k in s.step_counts if k < p.T}
    out.update({f"DeepCache N={n} b={b}": Plan.deepcache(p.scheduler, p.T, n, b)
                for n in s.deepcache_intervals for b in range(nb)})
    return {k: v for k, v in out.items() if cand.evaluator.macs.ratio(v, p.T) <= s.fast_region}


def search_config(s: Settings, T: int, seed: int) -> SearchConfig:
    """``benchmarks.compare``'s fidelity NSGA-II search (eager: its images share this benchmark's store)."""
    return SearchConfig(problem=s.problem, algorithm="nsga2", pop=s.pop["fidelity"], gens=s.gens, seed=seed,
                        goal="fidelity", objective="paired", images=s.screen_images, macs_budget=s.fast_region,
                        macs_floor=min(s.step_counts) / T, rescore_images=0)


def run(images: int, seed: int) -> dict:
    t0, s = time.time(), Settings()
    cand = CandidateEvaluator.get(SearchConfig(problem=s.problem, images=images).validate())
    p = cand.loaded.problem
    cfg = search_config(s, p.T, seed)
    front, _ = search_front(cfg, s.fast_region)
    search_s = time.time() - t0
    plans = {f"searched {i}": ("searched", Plan.from_dict(f["plan"])) for i, f in enumerate(front)}
    plans.update({f"trailing N={n} k={k}": ("trailing", Plan.uniform(p.scheduler, p.T, n, k, 0))
                  for n in (10, 20, 25) for k in range(2, p.T // n)})
    sp = SearchSpace.build(p.scheduler, p.T, len(cand.loaded.branches), skip=True, null_mode=p.null_mode)
    plans.update({f"early f={f}": ("early", sp.decode(early_partial(sp, f))) for f in EARLY_FULLS})
    plans.update({name: ("baseline", plan) for name, plan in baselines(cand, s).items()})
    timed_plans = [plan for _, plan in plans.values()]
    timed = cand.evaluator.wall_ratios(timed_plans, s.wall_images, ROUNDS)
    fitted, fit = fitted_speedups(timed_plans, [t["round_ratios"] for t in timed], len(cand.loaded.branches))
    rows = []
    for (name, (kind, plan)), t, f in zip(plans.items(), timed, fitted):
        r = cand.evaluate(plan, n=images, measures=["paired"])
        rows.append({"name": name, "kind": kind, "strip": plan.strip(), "paired": r["paired"],
                     "macs_speedup": 1 / r["macs_ratio"], "wall_speedup": f, "wall_speedup_median": 1 / t["wall_ratio"]})
    mark_beaten(rows)
    return {"images": images, "seed": seed, "pop": cfg.pop, "gens": cfg.gens, "floor": cfg.macs_floor,
            "budget": cfg.macs_budget, "screen_images": cfg.images, "wall_fit": fit, "search_s": search_s,
            "total_s": time.time() - t0, "rows": rows, "machine": machine()}


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
    lines = ["## Fidelity seeds: DeepCache with trailing NULL steps, step reduction with early PARTIAL steps", "",
             f"Command: `python -m benchmarks.fidelity_seeds` · search seed {out['seed']} (NSGA-II, population "
             f"{out['pop']}, {out['gens']} generations, paired on {out['screen_images']} images, MACs ratio between "
             f"{out['floor']:.2f} and {out['budget']}) · paired distance on {out['images']} images · wall-clock: "
             f"16 images, {ROUNDS} rounds against the teacher in this run, modelled per step kind (median gap "
             f"{out['wall_fit']['median_gap']:.1%}, at most {out['wall_fit']['max_gap']:.1%}; the plan's own "
             f"median in brackets) · {out['total_s'] / 60:.0f} min · machine: {out['machine']}", "",
             f"**{beaten} of {len(base)} fast-region baselines beaten** by a searched plan at least as fast with a "
             "lower paired distance.", "",
             "| plan | kind | wall speed-up | MACs speed-up | paired | beaten by | strip |", "|---|---|---|---|---|---|---|"]
    for r in sorted(out["rows"], key=lambda r: r["wall_speedup"]):
        lines.append(f"| {r['name']} | {r['kind']} | {r['wall_speedup']:.2f}x ({r['wall_speedup_median']:.2f}x) | "
                     f"{r['macs_speedup']:.2f}x | "
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
