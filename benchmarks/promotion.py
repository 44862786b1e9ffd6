"""Promotion during the search vs re-scoring only at the end (issue: multi-fidelity search).

    python -m benchmarks.promotion [--seeds 0,1] [--judge-images 256] [--quick]

Arms, each the benchmark's quality search (NSGA-II, population 12, FID to real on 64 images,
MACs ratio <= 0.35) at every seed:

- ``end``: 4 generations; only the final front is re-scored (what ``flexnas search`` does without
  ``--promote-every``);
- ``end, 6 gens``: the same search given the budget promotion spends, as two more generations;
- ``promote every K``: 4 generations, the population's non-dominated plans promoted to 256 images
  every K generations (``--promote-every K``).

Each arm's final feasible front is judged by FID to real on ``--judge-images`` images drawn from
other noise (problem seed 1,000,000: no image a search saw), and summarised by pymoo's hypervolume
of (judged FID, MACs ratio) with one reference point for all arms. Cost: the search's compute in
teacher-image equivalents (MACs ratio x images over every evaluation and promotion it asked for),
independent of what the shared feature store already held.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import machine, parse, publish, search_front
from benchmarks.render import hypervolume
from flexnas.errors import report_errors
from flexnas.plan.plan import Plan
from flexnas.search.candidates import CandidateEvaluator
from flexnas.search.config import SearchConfig

BUDGET = 0.35  # the benchmark's fast region
JUDGE_SEED = 1_000_000
FULL = dict(pop=12, images=64, promote_images=256, gens=4, more_gens=6, overrides={"compile": True})
QUICK = dict(pop=4, images=8, promote_images=16, gens=2, more_gens=3, overrides={"T": 20, "batch_size": 8})


def arms(s: dict) -> list[tuple[str, int, int]]:
    """(name, generations, promote every)."""
    return [("end", s["gens"], 0), (f"end, {s['more_gens']} gens", s["more_gens"], 0),
            ("promote every 2", s["gens"], 2), ("promote every 1", s["gens"], 1)]


def search(s: dict, seed: int, gens: int, every: int, problem: str) -> dict:
    cfg = SearchConfig(problem=problem, pop=s["pop"], gens=gens, seed=seed, goal="quality", objective="fid_to_real",
                       images=s["images"], macs_budget=BUDGET, rescore_images=0, promote_every=every,
                       promote_images=s["promote_images"] if every else None, overrides=s["overrides"])
    t0 = time.time()
    front, prob = search_front(cfg, BUDGET)
    records = prob.cache.records
    cost = sum(r["macs_ratio"] for r in records.values()) * s["images"]
    cost += sum(records[k]["macs_ratio"] for k in prob.promoted) * (s["promote_images"] - s["images"])
    return {"front": front, "evaluated": len(records), "promoted": len(prob.promoted), "cost": cost,
            "search_s": time.time() - t0}


def run(s: dict, seeds: list[int], judge_images: int, problem: str = "fashion-mnist") -> dict:
    t0 = time.time()
    rows = []
    for seed in seeds:
        for name, gens, every in arms(s):
            rows.append({"arm": name, "seed": seed, "gens": gens, "every": every,
                         **search(s, seed, gens, every, problem)})
    judge = CandidateEvaluator.get(SearchConfig(problem=problem, images=judge_images,
                                                overrides={**s["overrides"], "seed": JUDGE_SEED}).validate())
    for r in rows:
        for f in r["front"]:
            f["judged"] = judge.evaluate(Plan.from_dict(f["plan"]), measures=["fid_to_real"])["fid_to_real"]
    judged = [f["judged"] for r in rows for f in r["front"] if math.isfinite(f["judged"])]
    ref = (1.1 * max(judged, default=1.0), BUDGET)  # pymoo's HV: points beyond it add nothing
    for r in rows:
        r["hv"] = hypervolume(r["front"], "judged", ref)
        r["best_judged"] = min((f["judged"] for f in r["front"]), default=math.inf)
    return {"settings": s, "seeds": seeds, "judge_images": judge_images, "judge_seed": JUDGE_SEED,
            "ref_point": ref, "rows": rows, "total_s": time.time() - t0, "machine": machine()}


def render(out: dict) -> str:
    s = out["settings"]
    lines = ["## Promotion during the search", "",
             f"Command: `python -m benchmarks.promotion` · quality search: NSGA-II, population {s['pop']}, FID to "
             f"real on {s['images']} images, MACs ratio <= {BUDGET}, seeds {out['seeds']} · promotion to "
             f"{s['promote_images']} images · fronts judged by FID to real on {out['judge_images']} images of other "
             f"noise (seed {out['judge_seed']}) · hypervolume reference ({out['ref_point'][0]:.3g}, "
             f"{out['ref_point'][1]}) · {out['total_s'] / 60:.0f} min · machine: {out['machine']}", "",
             "| arm | seed | gens | plans evaluated | promoted | cost (teacher images) | front | best judged FID | HV |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        lines.append(f"| {r['arm']} | {r['seed']} | {r['gens']} | {r['evaluated']} | {r['promoted']} | "
                     f"{r['cost']:.0f} | {len(r['front'])} | {r['best_judged']:.2f} | {r['hv']:.4f} |")
    lines += ["", "| arm | mean HV | mean cost |", "|---|---|---|"]
    for name in dict.fromkeys(r["arm"] for r in out["rows"]):
        rs = [r for r in out["rows"] if r["arm"] == name]
        hv, cost = np.mean([r["hv"] for r in rs]), np.mean([r["cost"] for r in rs])
        lines.append(f"| {name} | {hv:.4f} | {cost:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--seeds", default="0,1")
        p.add_argument("--judge-images", type=int, default=256)  # ranks plans as 2,000 do (REPORT, objective study)
        p.add_argument("--quick", action="store_true", help="tiny settings (numbers mean nothing)")

    args = parse(__doc__, argv, options)

    def go() -> int:
        out = run(QUICK if args.quick else FULL, [int(x) for x in args.seeds.split(",")], args.judge_images)
        return publish("promotion", out, render(out), Path(args.results), Path(args.report))

    return report_errors(go, prog="promotion")


if __name__ == "__main__":
    sys.exit(main())
