"""GA vs NSGA-II vs DeepCache and step-reduction baselines, rFID validity and search cost.

    python -m benchmarks.compare [--problem fashion-mnist] [--quick]

Every plan (baselines and searched) is evaluated by the same code (``flexnas.objectives``)
in the same process, so MACs, wall-clock, rFID and FID to real are comparable. Writes the
``compare`` section of ``benchmarks/REPORT.md``, its figures and ``results/compare.json``.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.common import REPORT, RESULTS, machine, save_json, write_section  # noqa: E402
from flexnas.errors import report_errors  # noqa: E402
from flexnas.objectives import Evaluator  # noqa: E402
from flexnas.plan import Plan, divisors  # noqa: E402
from flexnas.problem import get_problem  # noqa: E402
from flexnas.search import CandidateEvaluator, SearchConfig, run_search  # noqa: E402


@dataclass
class Settings:
    problem: str = "fashion-mnist"
    overrides: dict = field(default_factory=dict)
    images: int | None = None          # rFID images during search and for every plan
    pop: int = 16
    gens: int = 6
    seeds: tuple[int, ...] = (0, 1)
    ga_budgets: tuple[float, ...] = (0.5, 0.3, 0.2)
    ga_seeds: tuple[int, ...] = (0,)
    deepcache_intervals: tuple[int, ...] = (2, 3, 5, 10)
    step_divisors: tuple[int, ...] = (2, 3, 5, 10)
    validity_plans: int = 20
    validity_rfid_images: int = 256
    validity_fid_images: int = 2000
    wall_images: int = 16
    wall_repeats: int = 3
    grid_images: int = 16

    @classmethod
    def quick(cls, problem: str) -> "Settings":
        return cls(problem=problem, overrides={"T": 20, "num_images": 16, "batch_size": 16}, images=16, pop=8,
                   gens=2, seeds=(0,), ga_budgets=(0.5, 0.3, 0.2), ga_seeds=(0,), validity_plans=6,
                   validity_rfid_images=16, validity_fid_images=32, wall_images=2, wall_repeats=1, grid_images=4)


def baseline_plans(scheduler: str, T: int, num_branches: int, s: Settings, null_mode: str) -> tuple[list[Plan], list[str]]:
    """Teacher, DeepCache uniform at every branch, and step reduction; notes on what T rules out."""
    plans, notes = [Plan.teacher(scheduler, T, null_mode)], []
    for k in s.deepcache_intervals:
        if T % k:
            notes.append(f"DeepCache interval {k} does not divide T={T} (equal segments): skipped")
            continue
        plans += [Plan.deepcache(scheduler, T, k, b, null_mode) for b in range(num_branches)]
    for d in s.step_divisors:
        if T % d:
            notes.append(f"step reduction T/{d} is not an integer divisor of T={T}: skipped")
            continue
        plans.append(Plan.step_reduction(scheduler, T, T // d, null_mode))
    return plans, notes


def nondominated(points: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows (pymoo's sorting)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    return NonDominatedSorting().do(points, only_non_dominated_front=True)


def hypervolume(points: np.ndarray, ref: np.ndarray) -> float:
    from pymoo.indicators.hv import HV

    return float(HV(ref_point=ref)(points[nondominated(points)]))


def run(s: Settings, report: Path, results: Path, figures: Path) -> dict:
    from scipy.stats import kendalltau, spearmanr

    from flexnas.report import plot_pareto, side_by_side

    t_start = time.time()
    problem = get_problem(s.problem, **s.overrides)
    base_cfg = SearchConfig(problem=s.problem, images=s.images, overrides=dict(s.overrides))
    cand = CandidateEvaluator.get(base_cfg)
    ev: Evaluator = cand.evaluator
    ev.ensure_teacher()
    loaded = ev.loaded
    T = problem.T

    def record(plan: Plan, kind: str) -> dict:
        r = cand.evaluate(plan)
        return {"kind": kind, "name": plan.meta.get("name", ""), "plan": plan.to_dict(), **r}

    # 1. baselines ------------------------------------------------------------------------
    plans, notes = baseline_plans(problem.scheduler, T, len(loaded.branches), s, problem.null_mode)
    baselines = [record(p, "teacher" if i == 0 else ("deepcache" if "deepcache" in p.meta["name"] else "steps"))
                 for i, p in enumerate(plans)]

    # 2. searches with equal evaluation budgets ------------------------------------------
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        specs = [("nsga2", seed, None) for seed in s.seeds] + \
                [("ga", seed, b) for b in s.ga_budgets for seed in s.ga_seeds]
        for algo, seed, budget in specs:
            cfg = SearchConfig(problem=s.problem, algorithm=algo, pop=s.pop, gens=s.gens, seed=seed,
                               macs_budget=budget, images=s.images, overrides=dict(s.overrides))
            t0 = time.time()
            res, prob = run_search(cfg, Path(tmp) / f"{algo}-{seed}-{budget}", progress=False)
            wall = time.time() - t0
            recs = list(prob.cache.records.values())
            from flexnas.results import front_records

            front = front_records(res, prob)
            calls = sum(r["calls"] for r in recs)
            runs.append({"algorithm": algo, "seed": seed, "budget": budget, "search_s": wall,
                         "evaluated": len(recs), "requested": prob.requested_total, "calls_made": calls,
                         "calls_naive": prob.naive_total, "evals_per_min": len(recs) / (wall / 60),
                         "front": front, "all": recs})

    # 3. hypervolume and per-baseline comparison ----------------------------------------
    finite = lambda v: v is not None and math.isfinite(v)  # noqa: E731
    pts = lambda rs: np.array([[r["rfid"], r["macs_ratio"]] for r in rs if finite(r["rfid"])])  # noqa: E731
    base_pts = pts(baselines)
    nsga = [r for r in runs if r["algorithm"] == "nsga2"]
    every = np.vstack([base_pts] + [pts(r["front"]) for r in runs if r["front"]])
    ref = np.array([float(every[:, 0].max()) * 1.1 + 1e-9, 1.05])
    hv_base = hypervolume(base_pts, ref)
    for r in nsga:
        r["hv"] = hypervolume(pts(r["front"]), ref)
        r["hv_ratio"] = r["hv"] / hv_base if hv_base > 0 else math.inf
    wins = []
    for b in baselines[1:]:
        row = {"name": b["name"], "macs_ratio": b["macs_ratio"], "rfid": b["rfid"]}
        for r in nsga:
            under = [f["rfid"] for f in r["front"] if f["macs_ratio"] <= b["macs_ratio"] + 1e-12]
            row[f"front_rfid_seed{r['seed']}"] = min(under) if under else None
        row["front_lower"] = all(row[f"front_rfid_seed{r['seed']}"] is not None and
                                 row[f"front_rfid_seed{r['seed']}"] < b["rfid"] for r in nsga)
        wins.append(row)

    # 4. wall-clock of front plans and baselines, measured here ----------------------------
    compared = [dict(b) for b in baselines] + [
        {"kind": f"{r['algorithm']}" + (f" b={r['budget']}" if r["budget"] else "") + f" s{r['seed']}",
         "name": f"front {i}", **f} for r in runs for i, f in enumerate(r["front"])]
    tw = ev.teacher_wall(s.wall_images, s.wall_repeats)
    for c in compared:
        plan = Plan.from_dict(c["plan"])
        w = tw if c["kind"] == "teacher" else ev.wall(plan, s.wall_images, s.wall_repeats)
        c.update(wall_s=w, wall_speedup=tw / w, macs_speedup=1 / c["macs_ratio"])

    # 5. rFID validity --------------------------------------------------------------------
    pool = sorted({c["plan"]["strip"]: c for c in compared}.values(), key=lambda c: c["macs_ratio"])
    idx = np.unique(np.round(np.linspace(0, len(pool) - 1, min(s.validity_plans, len(pool)))).astype(int))
    chosen = [pool[i] for i in idx]
    v_ev = Evaluator(loaded, images=s.validity_rfid_images)
    f_ev = Evaluator(loaded, images=s.validity_fid_images)
    t_rfid = t_fid = 0.0
    v_ev.ensure_teacher()  # the teacher's statistics are a one-off cost, not per plan
    validity = []
    for c in chosen:
        plan = Plan.from_dict(c["plan"])
        t0 = time.time()
        rf = v_ev.rfid_of_latents(loaded.latents(plan, n=v_ev.n))
        t_rfid += time.time() - t0
        t0 = time.time()
        fr = f_ev.fid_to_real_of_latents(loaded.latents(plan, n=f_ev.n))
        t_fid += time.time() - t0
        validity.append({"name": f"{c['kind']} {c['name']}", "macs_ratio": c["macs_ratio"], "rfid": rf,
                         "fid_to_real": fr, "strip": c["plan"]["strip"]})
    rf = [v["rfid"] for v in validity]
    fr = [v["fid_to_real"] for v in validity]
    tau, rho = float(kendalltau(rf, fr).statistic), float(spearmanr(rf, fr).statistic)

    # 6. targets --------------------------------------------------------------------------
    teacher_fid = next(v["fid_to_real"] for v in validity if v["macs_ratio"] >= 1.0 - 1e-9) \
        if any(v["macs_ratio"] >= 1 - 1e-9 for v in validity) else f_ev.fid_to_real_of_latents(loaded.latents(None, n=f_ev.n))
    good = [v for v in validity if v["fid_to_real"] <= 1.05 * teacher_fid]
    best_good = min(good, key=lambda v: v["macs_ratio"]) if good else None
    walls = {c["plan"]["strip"]: c for c in compared}
    best_good_wall = walls[best_good["strip"]]["wall_speedup"] if best_good else None
    fronts = [c for c in compared if c["name"].startswith("front") and c["macs_ratio"] < 0.999]
    eff = float(np.median([c["wall_speedup"] / c["macs_speedup"] for c in fronts])) if fronts else None
    hv_ratios = [r["hv_ratio"] for r in nsga]
    targets = [
        ("best plan with FID to real within +5% of the teacher: MACs speed-up >= 4x",
         f"{1 / best_good['macs_ratio']:.2f}x" if best_good else "none", bool(best_good and 1 / best_good["macs_ratio"] >= 4)),
        ("... and wall-clock speed-up >= 3.5x", f"{best_good_wall:.2f}x" if best_good_wall else "none",
         bool(best_good_wall and best_good_wall >= 3.5)),
        ("NSGA-II front lower rFID at every baseline's MACs", f"{sum(w['front_lower'] for w in wins)}/{len(wins)}",
         all(w["front_lower"] for w in wins)),
        ("hypervolume ratio front / baselines >= 1.10", ", ".join(f"{h:.3f}" for h in hv_ratios),
         bool(hv_ratios) and min(hv_ratios) >= 1.10),
        ("Kendall tau(rFID, FID to real) >= 0.8", f"{tau:.3f}", tau >= 0.8),
        ("rFID time <= 10% of FID time", f"{t_rfid / t_fid:.1%}" if t_fid else "n/a", bool(t_fid and t_rfid <= 0.1 * t_fid)),
        ("wall speed-up / MACs speed-up >= 0.85 (median over front plans)", f"{eff:.3f}" if eff else "n/a",
         bool(eff and eff >= 0.85)),
    ]

    # 7. figures --------------------------------------------------------------------------
    figures.mkdir(parents=True, exist_ok=True)
    for r in nsga:
        plot_pareto(r["all"], r["front"], figures / f"pareto_nsga2_seed{r['seed']}.png", "rfid",
                    title=f"{s.problem}: NSGA-II seed {r['seed']} vs baselines", baselines=baselines)
    ga_fronts = [f for r in runs if r["algorithm"] == "ga" for f in r["front"]]
    plot_pareto(baselines + ga_fronts, nondominated_records(baselines + ga_fronts + [f for r in nsga for f in r["front"]]),
                figures / "pareto_all.png", "rfid", title=f"{s.problem}: all fronts, GA bests and baselines",
                baselines=baselines)
    teacher_imgs = loaded.images(None, n=s.grid_images)
    grid_rows = [("best DeepCache", min((b for b in baselines if b["kind"] == "deepcache"), key=lambda b: b["rfid"], default=None)),
                 ("fastest step reduction", min((b for b in baselines if b["kind"] == "steps"), key=lambda b: b["macs_ratio"], default=None))]
    if best_good:
        grid_rows.append(("best plan within +5% FID", walls[best_good["strip"]]))
    for r in runs:
        if r["front"]:
            f = min(r["front"], key=lambda f: f["macs_ratio"])
            grid_rows.append((f"{r['algorithm']} s{r['seed']}" + (f" b={r['budget']}" if r["budget"] else "") + " fastest", f))
    grid_files = []
    for i, (label, c) in enumerate(grid_rows):
        if c is None:
            continue
        path = figures / f"grid_{i}.png"
        side_by_side(teacher_imgs, loaded.images(Plan.from_dict(c["plan"]), n=s.grid_images), path,
                     ("teacher", f"{label}: MACs x{1 / c['macs_ratio']:.2f}, rFID {c['rfid']:.3g}"))
        grid_files.append(path.name)

    total = time.time() - t_start
    out = {"settings": s.__dict__, "T": T, "notes": notes, "reference_point": ref.tolist(), "hv_baselines": hv_base,
           "runs": [{k: v for k, v in r.items() if k not in ("all",)} for r in runs], "wins": wins,
           "compared": compared, "validity": validity, "kendall_tau": tau, "spearman_rho": rho,
           "validity_rfid_s": t_rfid, "validity_fid_s": t_fid, "teacher_fid_to_real": teacher_fid,
           "targets": targets, "total_s": total, "machine": machine()}
    save_json("compare", out, results)
    write_section("compare", render(out, s, figures, grid_files, report), report)
    return out


def nondominated_records(records: list[dict]) -> list[dict]:
    ok = [r for r in records if r["rfid"] is not None and math.isfinite(r["rfid"])]
    return [ok[i] for i in nondominated(np.array([[r["rfid"], r["macs_ratio"]] for r in ok]))]


def render(out: dict, s: Settings, figures: Path, grid_files: list[str], report: Path) -> str:
    rel = os.path.relpath(figures, report.parent)
    fmt = lambda v, p=3: "—" if v is None else (f"{v:.{p}g}" if isinstance(v, float) else str(v))  # noqa: E731
    lines = [f"## Plans vs baselines on `{s.problem}` (T={out['T']})", "",
             f"Command: `python -m benchmarks.compare --problem {s.problem}` · machine: {out['machine']} · "
             f"total {out['total_s'] / 60:.1f} min", "",
             f"rFID on {s.images or 'the problem default'} images per plan; searches: pop {s.pop}, {s.gens} generations "
             f"(equal evaluation budgets), NSGA-II seeds {list(s.seeds)}, GA budgets {list(s.ga_budgets)} "
             f"seeds {list(s.ga_seeds)}; rFID validity on {s.validity_plans} plans; wall-clock on "
             f"{s.wall_images} images, median of {s.wall_repeats} after a warm-up.", ""]
    lines += [f"- {n}" for n in out["notes"]]
    lines += ["", "### Targets", "", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else 'no'} |" for t, m, ok in out["targets"]]
    lines += ["", "### Hypervolume", "",
              f"Reference point (rFID, MACs ratio) = ({out['reference_point'][0]:.4g}, {out['reference_point'][1]}); "
              f"baselines' non-dominated set: HV = {out['hv_baselines']:.4g}.", "",
              "| run | HV | HV / baselines |", "|---|---|---|"]
    lines += [f"| NSGA-II seed {r['seed']} | {r['hv']:.4g} | {r['hv_ratio']:.3f} |" for r in out["runs"] if "hv" in r]
    lines += ["", "### Every plan, measured in this run", "",
              "| plan | kind | MACs ratio | MACs speed-up | wall speed-up | rFID | FID to real | strip |",
              "|---|---|---|---|---|---|---|---|"]
    for c in sorted(out["compared"], key=lambda c: c["macs_ratio"]):
        strip = c["plan"]["strip"]
        lines.append(f"| {c['name']} | {c['kind']} | {c['macs_ratio']:.3f} | {c['macs_speedup']:.2f}x | "
                     f"{c['wall_speedup']:.2f}x | {fmt(c['rfid'], 4)} | {fmt(c['fid_to_real'], 4)} | "
                     f"`{strip[:40]}{'…' if len(strip) > 40 else ''}` |")
    lines += ["", "### At each baseline's MACs: best front rFID with MACs <= the baseline's", "",
              "| baseline | MACs ratio | baseline rFID | " + " | ".join(f"front seed {r['seed']}" for r in out["runs"] if r["algorithm"] == "nsga2") + " | front lower |",
              "|---|---|---|" + "---|" * sum(r["algorithm"] == "nsga2" for r in out["runs"]) + "---|"]
    for w in out["wins"]:
        cols = " | ".join(fmt(w.get(f"front_rfid_seed{r['seed']}"), 4) for r in out["runs"] if r["algorithm"] == "nsga2")
        lines.append(f"| {w['name']} | {w['macs_ratio']:.3f} | {fmt(w['rfid'], 4)} | {cols} | {'yes' if w['front_lower'] else 'no'} |")
    lines += ["", f"### rFID validity ({len(out['validity'])} plans)", "",
              f"rFID on {s.validity_rfid_images} images vs FID to real on {s.validity_fid_images} images: "
              f"Kendall tau = {out['kendall_tau']:.3f}, Spearman rho = {out['spearman_rho']:.3f}. "
              f"Time: rFID {out['validity_rfid_s']:.0f} s, FID to real {out['validity_fid_s']:.0f} s "
              f"(teacher FID to real {out['teacher_fid_to_real']:.4g}).", "",
              "| plan | MACs ratio | rFID | FID to real |", "|---|---|---|---|"]
    lines += [f"| {v['name']} | {v['macs_ratio']:.3f} | {fmt(v['rfid'], 4)} | {fmt(v['fid_to_real'], 4)} |"
              for v in out["validity"]]
    lines += ["", "### Search cost", "",
              "| run | wall time | evaluated | requested | evals / min | denoiser calls made | naive |",
              "|---|---|---|---|---|---|---|"]
    for r in out["runs"]:
        name = f"{r['algorithm']}" + (f" budget {r['budget']}" if r["budget"] else "") + f" seed {r['seed']}"
        lines.append(f"| {name} | {r['search_s'] / 60:.1f} min | {r['evaluated']} | {r['requested']} | "
                     f"{r['evals_per_min']:.1f} | {r['calls_made']} | {r['calls_naive']} |")
    lines += ["", "### Figures", ""]
    lines += [f"![{p.stem}]({rel}/{p.name})" for p in sorted(figures.glob("pareto_*.png"))]
    lines += [f"![{g}]({rel}/{g})" for g in grid_files]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="fashion-mnist")
    p.add_argument("--quick", action="store_true", help="tiny settings: checks the pipeline in a few minutes")
    p.add_argument("--report", default=str(REPORT))
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--figures", default=None, help="default: <report folder>/figures")
    p.add_argument("--threads", type=int, default=2)
    for name, kind in (("images", int), ("pop", int), ("gens", int), ("seeds", str), ("ga_seeds", str),
                       ("ga_budgets", str),
                       ("validity_plans", int), ("validity_rfid_images", int), ("validity_fid_images", int),
                       ("wall_images", int)):
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None,
                       help="override the preset (the report states the settings used)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    s = Settings.quick(args.problem) if args.quick else Settings(problem=args.problem)
    for name in ("images", "pop", "gens", "validity_plans", "validity_rfid_images", "validity_fid_images",
                 "wall_images"):
        if getattr(args, name) is not None:
            if getattr(args, name) < 1:
                print(f"error: --{name.replace('_', '-')} must be positive", file=sys.stderr)
                return 2
            setattr(s, name, getattr(args, name))
    for name, kind in (("seeds", int), ("ga_seeds", int), ("ga_budgets", float)):
        if getattr(args, name) is not None:
            try:
                setattr(s, name, tuple(kind(v) for v in getattr(args, name).split(",") if v.strip()))
            except ValueError:
                print(f"error: --{name.replace('_', '-')} takes comma-separated numbers", file=sys.stderr)
                return 2
    report = Path(args.report)
    figures = Path(args.figures) if args.figures else report.parent / "figures"
    def go() -> int:
        out = run(s, report, Path(args.results), figures)
        for t, m, ok in out["targets"]:
            print(f"{'met ' if ok else 'MISS'} {t}: {m}")
        print(f"wrote {report}")
        return 0

    return report_errors(go, prog="compare")


if __name__ == "__main__":
    sys.exit(main())
