"""Does README command 1 win? Its chosen plans against every baseline at least as fast, on 1,000 images.

    python -m benchmarks.default_search [--run RUN_FOLDER] [--images 1000]

Without ``--run`` it runs README command 1 (``flexnas search --problem fashion-mnist --macs-budget
0.2 --macs-floor 0.05 --gens 4 --images 32``) into ``results/runs/default-search`` (resumed when a
stopped run is there). The rivals are the baselines of ``benchmarks.compare`` (stock
``num_inference_steps=k``, DeepCache uniform at every interval and branch), not only the seeds the
search knew: those with at least ``MACS_MARGIN`` of a chosen plan's MACs speed-up are timed with the
chosen plans (``benchmarks.compare.walls``), the ones at least as fast in wall-clock are screened on
256 images (``Settings.mid_images``; the ground truths there have Kendall tau 0.97-0.99 against
2,000 images in the objective study), and the best ``--finalists`` go to ``--images`` with the plan,
judged on the run's goal's ground truth (paired distance to the teacher for fidelity, FID to real
for quality). A chosen plan counts as a seed when it was in the search's initial population. Every
image comes from the store ``benchmarks.compare`` uses (sampled compiled).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, machine, parse, publish
from benchmarks.compare import MACS_MARGIN, Bench, Settings, baseline_plans, speed, walls
from flexnas.errors import FlexnasError, report_errors
from flexnas.metrics.measures import GROUND_TRUTH
from flexnas.plan.plan import Plan
from flexnas.report.plots import plan_family

COMMAND = ["search", "--problem", "fashion-mnist", "--macs-budget", "0.2", "--macs-floor", "0.05",
           "--gens", "4", "--images", "32"]  # README command 1
LABEL = {"quality": "FID to real", "fidelity": "paired distance to the teacher"}  # each goal's ground truth


def chosen_plans(run: Path | None) -> tuple[Path, str, list[dict]]:
    """The run folder, its goal and its chosen plans; README command 1 run (or resumed) first when no folder
    is given."""
    if run is None:
        from flexnas.cli import main as flexnas

        run = RESULTS / "runs" / "default-search"
        if not (run / "chosen.json").is_file():
            resume = ["--resume"] if (run / "checkpoint.pkl").is_file() else []
            if flexnas([*COMMAND, "--out", str(run), *resume]):
                raise FlexnasError(f"README command 1 failed in {run}: see its message above")
    if not (run / "chosen.json").is_file():
        raise FlexnasError(f"{run} has no chosen.json: pass the folder of a finished `flexnas search`")
    goal = json.loads((run / "summary.json").read_text())["goal"]
    return run, goal, json.loads((run / "chosen.json").read_text())


def run(run_dir: Path | None, images: int, finalists: int, s: Settings) -> dict:
    t0 = time.time()
    run_dir, goal, chosen = chosen_plans(run_dir)
    b = Bench(s)
    q = GROUND_TRUTH[goal]
    mine = [b.record(Plan.from_dict(c["plan"]), plan_family(c["plan"]) or "searched", f"plan_{i}", s.mid_images)
            for i, c in enumerate(chosen)]
    slowest = min(speed(m, "macs") for m in mine)
    rivals = [b.record(p, f, nm, s.mid_images) for p, f, nm in baseline_plans(b)
              if f != "teacher" and 1 / b.cand.evaluator.macs.ratio(p, b.T) >= MACS_MARGIN * slowest]
    walls(b, mine + rivals)
    rows = []
    for m, c in zip(mine, chosen):
        faster = sorted((x for x in rivals if x["wall_speedup"] >= m["wall_speedup"]), key=lambda x: x[q])
        best = min((b.rescore(x, images) for x in faster[:finalists]), key=lambda x: x[q], default=None)
        own = b.rescore(m, images)
        rows.append({**own, "seed": c["seed"],  # in the search's initial population
                     "rivals_faster": len(faster), "best_rival": best,
                     "wins": best is not None and own[q] < best[q]})  # faster than every baseline is no win
    return {"run": str(run_dir), "goal": goal, "images": images, "screen_images": s.mid_images, "finalists": finalists,
            "wall": f"{s.wall_images} images, {s.wall_repeats} interleaved rounds, speed-ups modelled per step kind "
                    "as in benchmarks.compare", "wall_fit": b.wall_fit, "rows": rows,
            "total_s": time.time() - t0, "machine": machine()}


def render(out: dict) -> str:
    q, n, label = GROUND_TRUTH[out["goal"]], out["images"], LABEL[out["goal"]]
    won = [r["name"] for r in out["rows"] if r["wins"] and not r["seed"]]
    lines = ["## README command 1: chosen plans against every baseline at least as fast", "",
             f"Command: `python -m benchmarks.default_search` · chosen plans of `{out['run']}` (goal "
             f"{out['goal']}) · rivals: stock `num_inference_steps=k` and DeepCache uniform at every interval and "
             f"branch, at least as fast in wall-clock ({out['wall']}), screened on {out['screen_images']} images, "
             f"the best {out['finalists']} scored on {n} with the plan · {out['total_s'] / 60:.0f} min · machine: "
             f"{out['machine']}", "",
             f"**Target (a chosen plan, not a seed, beats every baseline at least as fast on {label} at {n} "
             f"images; a plan faster than every baseline beats none): "
             f"{'met by ' + ', '.join(won) if won else 'not met'}.**", "",
             f"| plan | seed (initial population) | family | MACs speed-up | wall speed-up | {label} @{n} | best "
             f"baseline at least as fast (@{n}) | its wall speed-up | its {q} | beats it | strip |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in out["rows"]:
        x = r["best_rival"]
        rival = f"{x['name']} | {x['wall_speedup']:.2f}x | {x[q]:.3f}" if x else "none this fast | — | —"
        lines.append(f"| {r['name']} | {'yes' if r['seed'] else 'no'} | {r['family']} | "
                     f"{1 / r['macs_ratio']:.2f}x | {r['wall_speedup']:.2f}x | {r[q]:.3f} | {rival} | "
                     f"{'yes' if r['wins'] else 'no'} | `{r['strip'][:48]}` |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--run", type=Path, default=None, help="a finished search's folder (default: run command 1)")
        p.add_argument("--images", type=int, default=1000)
        p.add_argument("--finalists", type=int, default=3, help="rivals per plan scored on --images")
        p.add_argument("--quick", action="store_true", help="benchmarks.compare's tiny settings (T=20): with --run only")

    args = parse(__doc__, argv, options)

    def go() -> int:
        if args.quick and args.run is None:
            raise FlexnasError("--quick needs --run: README command 1 searches the full problem (T=100)")
        s = Settings.quick("fashion-mnist") if args.quick else Settings()
        out = run(args.run, args.images, args.finalists, s)
        return publish("default_search", out, render(out), Path(args.results), Path(args.report))

    return report_errors(go, prog="default_search")


if __name__ == "__main__":
    sys.exit(main())
