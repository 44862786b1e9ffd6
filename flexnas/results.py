"""What a search leaves in its run folder (DESIGN.md, section 8)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from flexnas.plan import Plan
from flexnas.report import plot_pareto, save_grid, side_by_side

CSV_FIELDS = ("key", "generation", "N", "strip", "rfid", "fid_to_real", "macs", "macs_ratio", "eval_s", "calls",
              "naive_calls", "genome")


def write_records(records: list[dict], stem: Path) -> None:
    """``stem``.json (full records) and ``stem``.csv (one row each)."""
    stem.with_suffix(".json").write_text(json.dumps(records, indent=1, default=str))
    with stem.with_suffix(".csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for r in records:
            w.writerow({**r, "N": r["plan"]["N"], "genome": " ".join(map(str, r["genome"]))})


def front_records(res, problem) -> list[dict]:
    """Records of the algorithm's final optimum (NSGA-II front, GA best), by MACs ratio."""
    opt = res.algorithm.opt
    keys = []
    for x in opt.get("X"):
        k = ",".join(str(int(v)) for v in problem.space.canonical(x))
        if k not in keys:
            keys.append(k)
    return sorted((problem.cache.records[k] for k in keys), key=lambda r: (r["macs_ratio"], r["rfid"]))


def choose(front: list[dict], k: int) -> list[dict]:
    """Up to ``k`` plans spread evenly along the front."""
    if len(front) <= k:
        return list(front)
    idx = np.unique(np.round(np.linspace(0, len(front) - 1, k)).astype(int))
    return [front[i] for i in idx]


def best_record(front: list[dict], cfg) -> dict | None:
    """The front's best plan by the search objective; for GA, whether it meets the MACs budget."""
    if not front:
        return None
    scores = [r[cfg.objective] if r[cfg.objective] is not None else np.inf for r in front]
    r = front[int(np.argmin(scores))]
    best = {k: r.get(k) for k in ("rfid", "fid_to_real", "macs_ratio", "strip")}
    if cfg.algorithm == "ga":
        best["feasible"] = r["macs_ratio"] <= cfg.macs_budget
    return best


def write_run_outputs(res, problem, out: Path, evaluator, n_choose: int = 5, wall_images: int = 16,
                      grid_images: int = 16, started: float | None = None) -> dict[str, Any]:
    """Candidates, front, chosen plans (JSON + grids + wall-clock), Pareto plot and summary."""
    out = Path(out)
    records = sorted(problem.cache.records.values(), key=lambda r: (r["generation"], r["key"]))
    front = front_records(res, problem)
    write_records(records, out / "candidates")
    write_records(front, out / "front")
    cfg = problem.config
    plot_pareto(records, front, out / "pareto.png", cfg.objective,
                title=f"{cfg.problem} {cfg.algorithm} pop {cfg.pop} gens {cfg.gens} seed {cfg.seed}")

    (out / "plans").mkdir(exist_ok=True)
    (out / "grids").mkdir(exist_ok=True)
    for old in [*(out / "plans").glob("plan_*.json"), *(out / "grids").glob("plan_*.png")]:
        old.unlink()  # this run's own outputs of an earlier finish (resume): replaced, not mixed
    loaded = evaluator.loaded
    teacher_imgs = loaded.images(None, n=grid_images) if grid_images else None
    if teacher_imgs is not None:
        save_grid(teacher_imgs, out / "grids" / "teacher.png")
    chosen = choose(front, n_choose)
    teacher_wall = evaluator.teacher_wall(wall_images) if wall_images else None
    for i, r in enumerate(chosen):
        plan = Plan.from_dict(r["plan"])
        extra: dict[str, Any] = {"rfid": r["rfid"], "fid_to_real": r["fid_to_real"], "macs_ratio": r["macs_ratio"]}
        if wall_images:
            w = evaluator.wall(plan, wall_images)
            extra.update(wall_s=w, teacher_wall_s=teacher_wall, wall_ratio=w / teacher_wall)
            r.update(wall_s=w, wall_ratio=w / teacher_wall)
        plan.with_meta(problem=cfg.problem, name=f"plan_{i}", **extra).save(out / "plans" / f"plan_{i}.json")
        if teacher_imgs is not None:
            side_by_side(teacher_imgs, loaded.images(plan, n=grid_images), out / "grids" / f"plan_{i}.png",
                         ("teacher", f"plan_{i}: MACs x{r['macs_ratio']:.3f}, rFID {r['rfid']:.3g}"))
    write_records(chosen, out / "chosen")

    calls = sum(r["calls"] for r in records)
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
        "objective": cfg.objective,
        "best": best_record(front, cfg),
        "chosen_plans": [{k: r.get(k) for k in ("rfid", "fid_to_real", "macs_ratio", "wall_ratio")} for r in chosen],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary

