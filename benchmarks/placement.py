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
from flexnas.plan.plan import Plan, Segment
from flexnas.search.candidates import CandidateEvaluator
from flexnas.search.config import SearchConfig


KS = (5, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24)  # the fast region's step counts
MEASURES = ("fid_to_real", "kid_to_real", "paired")


def on_grid(sch: str, T: int, positions) -> Plan:
    pos = {int(p) for p in positions}
    return Plan(sch, T, tuple(Segment(1) if i in pos else Segment(0) for i in range(T)))


def placements(sch: str, T: int, k: int) -> dict[str, Plan]:
    u = np.linspace(0, 1, k)
    return {"stock (leading)": Plan.teacher(sch, k),
            "segment starts": on_grid(sch, T, np.round(np.arange(k) * T / k)),
            "even from the top": on_grid(sch, T, np.round(u * (T - 1))),
            "dense at low noise, p=1.5": on_grid(sch, T, np.round((T - 1) * (1 - (1 - u) ** 1.5))),
            "dense at high noise, p=1.5": on_grid(sch, T, np.round((T - 1) * u ** 1.5))}


def run(images: int, ks: tuple[int, ...]) -> dict:
    cand = CandidateEvaluator.get(SearchConfig(images=64, overrides=Settings().problem_overrides()).validate())
    p = cand.loaded.problem
    teacher = cand.store.features(p.teacher_plan(), images)
    rows = []
    for k in ks:
        for name, plan in placements(p.scheduler, p.T, k).items():
            r = score(MEASURES, cand.store.features(plan, images), teacher, cand.real)
            rows.append({"k": k, "placement": name, "full": plan.counts()["full"], **r})
    return {"images": images, "rows": rows, "machine": machine()}


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
    stock_wins = [r["k"] for r in out["rows"] if r["placement"] == "stock (leading)" and r["paired"] == best[r["k"], "paired"]]
    lines += ["", f"Fidelity: stock spacing is the closest to the teacher at k = {', '.join(map(str, stock_wins)) or 'none'}; "
              "a grid placement elsewhere."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--images", type=int, default=256)

    args = parse(__doc__, argv, options)

    def go() -> int:
        out = run(args.images, KS)
        return publish("placement", out, render(out), Path(args.results), Path(args.report))

    return report_errors(go, prog="placement")


if __name__ == "__main__":
    sys.exit(main())
