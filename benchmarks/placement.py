"""Where should k FULL steps sit? Stock spacing against grid placements of the same k, for both goals.

    python -m benchmarks.placement [--images 256]

For k FULL steps on the DDIM-T grid: the stock ``num_inference_steps=k`` run ("leading"
spacing: the first step below the top of the schedule), one FULL step at the start of each of
k equal segments (the paper's step reduction, ``flexnas plan --steps k`` for k dividing T; to
within one base step otherwise), k evenly spaced steps from the top to the end, and denser
placements at the low-noise or the high-noise end (``position = (T-1) * u^p`` and its mirror).
Scored by FID and KID to real images (quality) and by the paired distance to the teacher's
images from the same noise (fidelity). The same k means the same U-Net calls: equal speed.
Every plan's images come from the shared feature store.

Where stock spacing was the closest of these (k <= 12), a row more: stock spacing on the grid
refined by ``flexnas.search.placement.refine`` (what ``flexnas search --refine-evals`` runs on a
front's FULL-step plans), moving one step at a time while the fidelity goal's search measure
(paired distance on 64 images) falls, then scored on the table's images like every other row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import machine, parse, publish
from benchmarks.compare import Settings
from flexnas.errors import report_errors
from flexnas.metrics.measures import score
from flexnas.plan.plan import Plan
from flexnas.plan.space import SearchSpace
from flexnas.search.candidates import CandidateEvaluator
from flexnas.search.config import SearchConfig
from flexnas.search.operators import full_at, stock_spaced
from flexnas.search.placement import refine


KS = (5, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24)  # the fast region's step counts
REFINED_KS = (5, 6, 8, 10, 12)  # where stock spacing was the closest placement measured
SCREEN = 64  # the images refinement scores on: the fidelity goal's search default
MEASURES = ("fid_to_real", "kid_to_real", "paired")


def placements(sp: SearchSpace, k: int) -> dict[str, Plan]:
    u, T = np.linspace(0, 1, k), sp.T

    def at(positions) -> Plan:
        return sp.decode(full_at(sp, np.round(positions)))

    return {"stock (leading)": Plan.teacher(sp.scheduler, k),
            "segment starts": at(np.arange(k) * T / k),
            "even from the top": at(u * (T - 1)),
            "dense at low noise, p=1.5": at((T - 1) * (1 - (1 - u) ** 1.5)),
            "dense at high noise, p=1.5": at((T - 1) * u ** 1.5)}


def refined(cand: CandidateEvaluator, space: SearchSpace, k: int, evals: int) -> tuple[Plan, int]:
    """Stock spacing of ``k`` steps on the grid (the search's ``leading`` seed), refined on ``SCREEN`` images
    as a search scores its candidates."""

    def evaluate(X) -> list[float]:
        return [r["paired"] for r in cand.evaluate_many([space.decode(x) for x in X], SCREEN)]

    x = stock_spaced(space, k)
    x, _, spent = refine(space, evaluate, x, evaluate([x])[0], evals)
    return space.decode(x), spent


def run(images: int, ks: tuple[int, ...], evals: int) -> dict:
    cand = CandidateEvaluator.get(SearchConfig(images=SCREEN, overrides=Settings().problem_overrides()).validate())
    p = cand.loaded.problem
    teacher = cand.store.features(p.teacher_plan(), images)
    space = SearchSpace.build(p.scheduler, p.T, len(cand.loaded.branches), null_mode=p.null_mode, skip=True)
    rows = []
    for k in ks:
        plans = placements(space, k)
        spent = {}
        if evals and k in REFINED_KS:
            name = f"stock refined (budget {evals} @{SCREEN})"
            plans[name], spent[name] = refined(cand, space, k, evals)
        for name, plan in plans.items():
            r = score(MEASURES, cand.store.features(plan, images), teacher, cand.real)
            rows.append({"k": k, "placement": name, "full": plan.counts()["full"], "steps": plan.active_indices(),
                         "evals": spent.get(name, 0), **r})
            print(f"k={k} {name}: paired {r['paired']:.3f}", flush=True)
    return {"images": images, "evals": evals, "rows": rows, "machine": machine()}


def render(out: dict) -> str:
    lines = ["## Step placement: stock spacing against grid placements", "",
             f"Command: `python -m benchmarks.placement` · {out['images']} images per plan (one store with "
             f"`benchmarks.compare`) · machine: {out['machine']}", "",
             "Bold: the best placement of each k by that measure (lower is better for all three).", "",
             "| k | placement | FID to real | KID to real x1000 | paired distance to the teacher |", "|---|---|---|---|---|"]
    best = {(r["k"], m): min(x[m] for x in out["rows"] if x["k"] == r["k"]) for r in out["rows"] for m in MEASURES}

    def cell(r: dict, m: str, fmt: str) -> str:
        v = format(r[m], fmt)
        return f"**{v}**" if r[m] == best[r["k"], m] else v

    lines += [f"| {r['k']} | {r['placement']} | {cell(r, 'fid_to_real', '.3f')} | {cell(r, 'kid_to_real', '.0f')} | "
              f"{cell(r, 'paired', '.3f')} |" for r in out["rows"]]
    fixed = [r for r in out["rows"] if not r.get("evals")]
    stock_wins = [r["k"] for r in fixed if r["placement"] == "stock (leading)"
                  and r["paired"] == min(x["paired"] for x in fixed if x["k"] == r["k"])]
    lines += ["", f"Fidelity: of the fixed placements, stock spacing is the closest to the teacher at k = "
              f"{', '.join(map(str, stock_wins)) or 'none'}; a grid placement elsewhere."]
    stock = {r["k"]: r for r in fixed if r["placement"] == "stock (leading)"}
    lines += [f"Refined from stock spacing rounded to the base grid at k = {r['k']} ({r['evals']} evaluations on the "
              f"first {SCREEN} of these images): paired "
              f"{r['paired']:.3f} against stock's {stock[r['k']]['paired']:.3f}, FID to real {r['fid_to_real']:.3f} "
              f"against {stock[r['k']]['fid_to_real']:.3f}; base steps {r['steps']}."
              for r in out["rows"] if r.get("evals")]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", type=int, default=256)
        p.add_argument("--refine-evals", type=int, default=180, help="evaluations per refined row (0: none)")

    args = parse(__doc__, argv, options)

    def go() -> int:
        out = run(args.images, KS, args.refine_evals)
        return publish("placement", out, render(out), Path(args.results), Path(args.report))

    return report_errors(go, prog="placement")


if __name__ == "__main__":
    sys.exit(main())
