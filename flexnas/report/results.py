"""What a search leaves in its run folder (docs/DESIGN.md, section 8)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from flexnas.metrics.measures import GROUND_TRUTH, MEASURES
from flexnas.plan.plan import Plan
from flexnas.report.plots import plan_family, plot_pareto, save_grid, side_by_side

BASE_FIELDS = ("key", "generation", "family", "N", "strip", "macs", "macs_ratio")
# what varies from run to run (timings, calls made, and the generation of a record evaluated again after a
# damaged evaluations.jsonl): kept out of the files that describe the result
COST_FIELDS = ("eval_s", "sample_s", "calls", "wall_s", "teacher_wall_s", "round_ratios", "wall_ratio", "generation")
TAIL_FIELDS = (*COST_FIELDS, "naive_calls", "genome")


def csv_fields(records: list[dict]) -> list[str]:
    """Base columns, then every measure present (low fidelity, then ``hi_`` re-scored), then costs."""
    present = {k for r in records for k in r}
    measures = [m for m in MEASURES if m in present]
    extra = []
    for tag in ("promoted", "hi"):  # scored on more images: during the search, after it
        if f"{tag}_images" in present:
            extra += [f"{tag}_images", *(["hi_front"] if tag == "hi" else []),
                      *(f"{tag}_{m}" for m in MEASURES if f"{tag}_{m}" in present)]
    return [*BASE_FIELDS, *measures, *extra, *(f for f in TAIL_FIELDS if f in present)]


def write_records(records: list[dict], stem: Path, costs: bool = True) -> None:
    """``stem``.json (full records) and ``stem``.csv (one row each); ``costs=False`` leaves out timings and
    calls made, so the files depend on the seed alone (the same seed: byte-identical files, resumed or not)."""
    if not costs:
        records = [{k: v for k, v in r.items() if k not in COST_FIELDS} for r in records]
    fields = [f for f in csv_fields(records) if costs or f not in COST_FIELDS]
    stem.with_suffix(".json").write_text(json.dumps(records, indent=1, default=str))
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({**r, "N": r["plan"]["N"], "family": plan_family(r["plan"]) or "searched",
                        "genome": " ".join(map(str, r.get("genome", [])))})


def front_records(res, problem) -> list[dict]:
    """Records of the algorithm's final optimum (NSGA-II front, GA best), by MACs ratio; a promoted plan's
    record carries its ``promoted_`` score."""
    opt = res.algorithm.opt
    keys = list(dict.fromkeys(problem.keys(opt.get("X"))))
    obj = problem.config.objective
    recs = []
    for key, r in zip(keys, problem.records(keys)):
        p = problem.promoted.get(key)
        recs.append({**r, "promoted_images": p["images"], f"promoted_{obj}": p[obj]} if p else r)
    return sorted(recs, key=lambda r: (r["macs_ratio"], problem.score(r["key"], r)))


def nondominated(records: list[dict], measure: str) -> list[dict]:
    """Records not dominated in (``measure``, MACs ratio), by MACs ratio (pymoo's sorting)."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    ok = [r for r in records if r.get(measure) is not None and np.isfinite(r[measure])]
    if not ok:
        return []
    idx = NonDominatedSorting().do(np.array([[r[measure], r["macs_ratio"]] for r in ok]),
                                   only_non_dominated_front=True)
    return sorted((ok[i] for i in idx), key=lambda r: r["macs_ratio"])


def rescore(candidates, records: list[dict], front: list[dict], n: int, goal: str, limit: int = 8) -> list[dict]:
    """Multi-fidelity step: the front and the non-dominated baselines (up to ``limit`` of each, spread
    by MACs), scored again on ``n`` images.

    Adds ``hi_<measure>`` columns (teacher-referenced measures only for the fidelity goal, or
    when the teacher's ``n`` images are stored already: they cost a full-price sampling) and
    ``hi_front``: whether the plan is non-dominated in (goal's ground truth, MACs ratio).
    """
    obj = candidates.config.objective
    top = max(r["macs_ratio"] for r in front)  # baselines slower than every front plan cannot be rivals
    base = nondominated([r for r in records if plan_family(r["plan"]) and r["macs_ratio"] <= top], obj)
    chosen = {r["key"]: r for r in choose(front, limit) + choose(base, limit)}
    teacher = candidates.loaded.problem.teacher_plan()
    names = [m for m in candidates.measures if MEASURES[m].reference == "real" or goal == "fidelity"
             or candidates.store.has(teacher, n)]
    out = []
    for r in sorted(chosen.values(), key=lambda r: r["macs_ratio"]):
        hi = candidates.evaluate(Plan.from_dict(r["plan"]), n=n, measures=names)
        out.append({**r, "hi_images": n, **{f"hi_{m}": hi[m] for m in names}})
    gt = f"hi_{GROUND_TRUTH[goal]}"
    on_front = {r["key"] for r in nondominated(out, gt)}
    for r in out:
        r["hi_front"] = r["key"] in on_front
    return out


def choose(front: list[dict], k: int) -> list[dict]:
    """Up to ``k`` plans spread evenly along the front."""
    if len(front) <= k:
        return list(front)
    idx = np.unique(np.round(np.linspace(0, len(front) - 1, k)).astype(int))
    return [front[i] for i in idx]


def best_record(front: list[dict], cfg) -> dict | None:
    """The front's best plan by the search objective; for GA, whether it meets the MACs budget (and floor)."""
    if not front:
        return None
    r = min(front, key=lambda r: r.get(cfg.objective, np.inf))
    best = {k: r.get(k) for k in (cfg.objective, "macs_ratio", "strip")}
    if cfg.algorithm == "ga":
        best["feasible"] = cfg.feasible(r["macs_ratio"])
    return best


def rival(record: dict, pool: list[dict], measure: str) -> dict | None:
    """The best baseline in ``pool`` at least as fast (MACs) as ``record``, by ``measure``."""
    fast = [b for b in pool if plan_family(b["plan"]) and b["macs_ratio"] <= record["macs_ratio"] + 1e-12
            and b.get(measure) is not None]
    return min(fast, key=lambda b: b[measure]) if fast else None


def write_run_outputs(res, problem, out: Path, candidates, n_choose: int = 5, wall_images: int = 16,
                      grid_images: int = 16, started: float | None = None, log=None) -> dict[str, Any]:
    """Candidates, front, re-scored front, chosen plans (JSON + grids + wall-clock), Pareto plot and summary.

    ``log(text)`` hears each slow stage as it starts (re-scoring, wall-clock timing, grids).
    """
    out = Path(out)
    log = log or (lambda text: None)
    evaluator, cfg = candidates.evaluator, problem.config
    records = sorted(problem.cache.records.values(), key=lambda r: (r["generation"], r["key"]))
    front = front_records(res, problem)
    write_records(records, out / "candidates")
    write_records(front, out / "front", costs=False)
    measure, pool = cfg.objective, front
    if cfg.rescore_images:
        log(f"re-scoring the front and the baselines on {cfg.rescore_images} images (images already sampled are reused)")
        rescored = rescore(candidates, records, front, cfg.rescore_images, cfg.goal)
        write_records(rescored, out / "rescored", costs=False)
        measure = f"hi_{GROUND_TRUTH[cfg.goal]}"
        pool = [r for r in rescored if r["hi_front"]]
    plot_pareto(records, front, out / "pareto.png", cfg.objective,
                title=f"{cfg.problem} {cfg.algorithm} pop {cfg.pop} gens {cfg.gens} seed {cfg.seed}",
                rescored=rescored if cfg.rescore_images else None, rescored_measure=measure)

    (out / "plans").mkdir(exist_ok=True)
    (out / "grids").mkdir(exist_ok=True)
    for old in [*(out / "plans").glob("plan_*.json"), *(out / "grids").glob("plan_*.png")]:
        old.unlink()  # this run's own outputs of an earlier finish (resume): replaced, not mixed
    loaded = evaluator.loaded
    if wall_images or grid_images:
        log(f"timing the chosen plans on {wall_images} images and drawing their grids")
    teacher_imgs = loaded.images(None, n=grid_images) if grid_images else None
    if teacher_imgs is not None:
        save_grid(teacher_imgs, out / "grids" / "teacher.png")
    searched = [r for r in pool if not plan_family(r["plan"])]
    chosen = choose(searched or pool, n_choose)
    plans = [Plan.from_dict(r["plan"]) for r in chosen]
    for r, t in zip(chosen, evaluator.wall_ratios(plans, wall_images) if wall_images else []):
        r.update(t)
    everything = rescored if cfg.rescore_images else records
    for i, (r, plan) in enumerate(zip(chosen, plans)):
        extra: dict[str, Any] = {k: r[k] for k in (cfg.objective, measure, "macs_ratio") if k in r}
        r["seed"] = r["generation"] == 1  # first evaluated in the initial population: started from, not found
        best = rival(r, everything, measure)
        r["rival"] = None if best is None else {"strip": best["strip"], measure: best[measure],
                                                "macs_ratio": best["macs_ratio"]}
        plan.with_meta(problem=cfg.problem, name=f"plan_{i}", **extra).save(out / "plans" / f"plan_{i}.json")
        if teacher_imgs is not None:
            side_by_side(teacher_imgs, loaded.images(plan, n=grid_images), out / "grids" / f"plan_{i}.png",
                         ("teacher", f"plan_{i}: MACs x{1 / r['macs_ratio']:.2f}, {measure} {r[measure]:.3g}"))
    write_records(chosen, out / "chosen", costs=False)
    timings = [{"file": f"plans/plan_{i}.json", **{k: r[k] for k in COST_FIELDS if k in r}} for i, r in enumerate(chosen)]
    (out / "timings.json").write_text(json.dumps(timings, indent=1))

    calls = sum(r["calls"] for r in records) + sum(p["calls"] for p in problem.promoted.values())
    elapsed = time.time() - started if started else None
    summary = {
        "evaluated": len(records),
        "requested": problem.requested_total,
        "cache_hits": problem.requested_total - len(records),
        "denoiser_calls_made": calls,
        "denoiser_calls_naive": problem.naive_total,
        "calls_saved_ratio": 1 - calls / problem.naive_total if problem.naive_total else 0.0,
        "elapsed_s": elapsed,
        "evaluations_per_minute": len(records) / (elapsed / 60) if elapsed else None,
        "front_size": len(front),
        "decode_macs": evaluator.macs.decode,  # VAE/VQ decode per image (latent models), outside the MACs ratios
        "chosen": [f"plans/plan_{i}.json" for i in range(len(chosen))],
        "goal": cfg.goal,
        "objective": cfg.objective,
        "measure": measure,  # what the chosen plans were picked and reported by
        "best": best_record(front, cfg),
        "chosen_plans": [{k: r.get(k) for k in (measure, "macs_ratio", "wall_ratio", "strip", "seed", "rival")}
                         for r in chosen],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
