"""The objective study: how well each cheap measure ranks plans like each goal's ground truth.

For plans scored on ``hi_images`` (the ground truth: FID to real for quality, paired distance
to the teacher for fidelity), every measure is computed again on the first 64 and 256 of
the same images (the store's prefix property: no new sampling) and compared with the ground
truth by Kendall tau and Spearman rho (scipy). A measure's time is its own sampling, feature
and metric seconds, relative to the ground truth's on ``hi_images``.
"""

from __future__ import annotations

import math
import time

import numpy as np

from flexnas.metrics.measures import GROUND_TRUTH, MEASURES, score
from flexnas.plan.plan import Plan


def rank_agreement(x: list[float], y: list[float]) -> tuple[float, float]:
    """(Kendall tau, Spearman rho) of two score lists (scipy), NaN-free pairs only."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(a, c) for a, c in zip(x, y) if math.isfinite(a) and math.isfinite(c)]
    if len(pairs) < 3:
        return math.nan, math.nan
    a, c = zip(*pairs)
    return float(kendalltau(a, c).statistic), float(spearmanr(a, c).statistic)


def objective_study(b, records: list[dict]) -> dict:
    """tau/rho and time of every measure at the screening and mid image counts, against both ground truths."""
    s, store, real = b.s, b.cand.store, b.cand.real
    names = b.cand.measures
    hi = s.hi_images
    teacher_plan = b.loaded.problem.teacher_plan()
    teacher = store.features(teacher_plan, hi)
    plans = {r["strip"]: Plan.from_dict(r["plan"]) for r in records if r["family"] != "teacher"}
    counts = sorted({s.screen_images, s.mid_images, hi})
    values: dict[tuple[str, int], list[float]] = {}
    seconds: dict[tuple[str, int], list[float]] = {}
    for plan in plans.values():
        feats = store.features(plan, hi)
        for n in counts:
            cost = store.cost(plan, n)
            for m in names:
                t0 = time.perf_counter()
                v = score([m], feats[:n], teacher[:n], real)[m]
                dt = time.perf_counter() - t0
                values.setdefault((m, n), []).append(v)
                seconds.setdefault((m, n), []).append(cost["sample_s"] + cost["feature_s"] + dt)
    rows = []
    for goal, gt in GROUND_TRUTH.items():
        truth, t_truth = values[(gt, hi)], np.sum(seconds[(gt, hi)])
        for (m, n), v in values.items():
            if (m, n) == (gt, hi):
                continue
            tau, rho = rank_agreement(v, truth)
            rows.append({"goal": goal, "truth": f"{gt}@{hi}", "measure": m, "images": n, "tau": tau, "rho": rho,
                         "time_ratio": float(np.sum(seconds[(m, n)]) / t_truth), "measure_goal": MEASURES[m].goal})
    return {"plans": len(plans), "families": sorted({r["family"] for r in records}), "rows": rows,
            "values": {f"{m}@{n}": v for (m, n), v in values.items()}}


def choose_measures(study: dict, s) -> dict[str, dict]:
    """Each goal's search measure: the highest tau against its ground truth on the screening image count
    (the search screens there; its front is re-scored on more images afterwards)."""
    out = {}
    for goal in GROUND_TRUTH:
        ok = [r for r in study["rows"] if r["goal"] == goal and math.isfinite(r["tau"]) and r["images"] == s.screen_images]
        best = max(ok, key=lambda r: (r["tau"], -r["images"]))
        out[goal] = {"measure": best["measure"], "images": best["images"], "tau": best["tau"],
                     "time_ratio": best["time_ratio"]}
    return out
