"""The benchmark pipeline in --quick mode writes the report, its figures and results (machinery, not numbers)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import kendalltau, spearmanr


def test_quick_benchmark_writes_report_and_figures(tmp_path, monkeypatch):
    from benchmarks import run

    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path / "cache"))
    report, results = tmp_path / "REPORT.md", tmp_path / "results"
    assert run.main(["--quick", "--report", str(report), "--results", str(results), "--threads", "1"]) == 0
    text = report.read_text()
    for heading in ("Teacher quality", "### Fastest plan of each family", "### Targets", "### Hypervolume",
                    "### Objective study", "### Searches", "### Every re-scored plan"):
        assert heading in text
    figures = tmp_path / "figures"
    assert (figures / "quality_vs_speedup.png").is_file() and (figures / "fidelity_vs_speedup.png").is_file()
    data = json.loads((results / "compare.json").read_text())
    fams = {r["family"] for r in data["hi"]}
    assert {"teacher", "steps", "deepcache", "random"} <= fams
    runs = {(r["goal"], r["algorithm"], r["skip"]) for r in data["runs"]}
    assert {("quality", "nsga2", True), ("quality", "ga", True), ("quality", "nsga2", False),
            ("fidelity", "nsga2", True)} <= runs
    # the front plans re-scored on mid_images are saved, and every one sent to hi_images came from them
    mid_strips = {(r["family"], r["strip"]) for r in data["fronts_mid"]}
    assert all(r["images"] == data["settings"]["mid_images"] for r in data["fronts_mid"])
    assert {(r["family"], r["strip"]) for r in data["hi"] if "front" in r["name"]} <= mid_strips
    # NSGA-II fronts keep their feasible plans between the fastest baseline's MACs and the fast region
    st = data["settings"]
    for r in data["runs"]:
        assert r["feasible_front"] and r["evaluated"] >= st["pop"][r["goal"]]
        if r["algorithm"] == "nsga2":
            assert all(min(st["step_counts"]) / data["T"] <= f["macs_ratio"] <= st["fast_region"]
                       for f in r["feasible_front"])
    # a front plan of a baseline shape (a kept seed) is filed under its baseline family, not as searched
    from flexnas.report.plots import plan_family

    assert all(plan_family(r["plan"]) in (None, r["family"]) for r in data["hi"] if "front" in r["name"])
    teacher = data["teacher"]
    assert teacher["paired"] == 0 and teacher["rfid"] <= 1e-6 and teacher["macs_ratio"] == 1.0
    hi = data["settings"]["hi_images"]
    assert all(r["images"] == hi for r in data["hi"])
    # stock step reduction at a step count that does not divide T is a baseline (num_inference_steps=k)
    assert any(r["family"] == "steps" and data["T"] % r["plan"]["T"] for r in data["baselines_screened"])
    # every study row names a measure, an image count below the ground truth's, and a tau in [-1, 1]
    rows = data["study"]["rows"]
    assert {r["images"] for r in rows} == {data["settings"]["screen_images"], data["settings"]["mid_images"], hi}
    values = data["study"]["values"]  # each row's tau/rho: its measure against its goal's truth, plan by plan
    for r in rows:
        x, y = values[f"{r['measure']}@{r['images']}"], values[r["truth"]]
        assert len(x) == len(y) == data["study"]["plans"]
        x, y = zip(*[(a, b) for a, b in zip(x, y) if math.isfinite(a) and math.isfinite(b)])
        tau, rho = (kendalltau(x, y).statistic, spearmanr(x, y).statistic) if len(x) >= 3 else (math.nan, math.nan)
        assert (r["tau"], r["rho"]) == pytest.approx((tau, rho), nan_ok=True)
    assert {t["target"].split(":")[0] for t in data["targets"]} >= {"fidelity", "quality +1%", "quality"}
    # headroom: per level, the quality searches' plans with at least 1.25x the fastest baseline's speed-up
    points = [pt for r in data["runs"] if r["goal"] == "quality" for pt in r["points"]]
    assert len(points) == sum(r["evaluated"] for r in data["runs"] if r["goal"] == "quality")
    timed = [r for r in data["baselines_mid"] + data["hi"] if "wall_speedup" in r and r["family"] != "teacher"]
    most = max(r["wall_speedup"] * r["macs_ratio"] for r in timed)
    assert data["tables"]["realised"] == pytest.approx(most)
    for h in data["tables"]["headroom"]:
        fast = [v for m, v in points if 1 / m >= h["need_macs_speedup"]]
        assert h["plans"] == len(fast) and h["best"] == (min(fast) if fast else None)
        # the best of them, re-scored on hi_images against the level of the teacher's there
        heads = [r for r in data["headroom"] if 1 / r["macs_ratio"] >= h["need_macs_speedup"]]
        assert all(r["images"] == hi and r["family"] == "headroom" for r in heads)
        assert bool(fast) == bool(heads) and (not fast or min(r["screened"]["fid_to_real"] for r in heads) == min(fast))
        if heads:
            best = min(heads, key=lambda r: r["fid_to_real"])
            assert (h["hi"]["strip"], h["hi"]["fid_to_real"]) == (best["strip"], best["fid_to_real"])
            assert h["hi"]["bound"] == pytest.approx(teacher["fid_to_real"] * (1 + h["level"]))
    fid_points = [pt for r in data["runs"] if r["goal"] == "fidelity" and r["measure"] == "paired" for pt in r["points"]]
    for row in data["tables"]["fidelity"]:  # the lowest paired any fidelity search screened at the baseline's speed
        fast = [v for m, v in fid_points if most / m >= row["wall_speedup"]]
        assert row["screened"]["best_evaluated"] == (min(fast) if fast else None)
    # the report links figures that exist
    for line in text.splitlines():
        if line.startswith("![") and "figures/" in line:
            assert (tmp_path / line.split("(")[1].rstrip(")")).is_file()
    tq = json.loads((results / "teacher_quality.json").read_text())
    assert tq["samples"] == 100 and len(tq["class_histogram"]) == 10
    # the section again from the saved results: the same text; without results, one line and nothing written
    from benchmarks import compare

    before = report.read_text()
    argv = ["--render-only", "--report", str(report), "--results", str(results), "--figures", str(figures)]
    assert compare.main(argv) == 0 and report.read_text() == before
    assert compare.main(["--render-only", "--report", str(tmp_path / "R2.md"), "--results", str(tmp_path / "no")]) == 2
    assert not (tmp_path / "R2.md").exists()


def test_headroom_rescores_the_best_screened_plan_at_each_needed_speed():
    """Per headroom row, the quality searches' plan with the lowest screening FID among those with the needed
    MACs speed-up goes to hi_images once; the table then reads it against the teacher's FID there."""
    from types import SimpleNamespace

    from benchmarks.compare import headroom_hi
    from benchmarks.render import headroom
    from flexnas.plan.plan import Plan

    plans = {k: Plan.teacher("DDIMScheduler", k) for k in (5, 8, 10)}
    screened = {5: 20.0, 8: 8.4, 10: 6.6}  # FID to real on 64 images
    on_hi = {5: 17.0, 8: 8.3, 10: 6.3}
    evaluated = [{"plan": p.to_dict(), "strip": p.strip(), "macs_ratio": k / 100, "fid_to_real": screened[k],
                  "images": 64} for k, p in plans.items()]
    asked = []

    def record(plan, family, name, n):
        asked.append((plan.T, n))
        return {"family": family, "name": name, "strip": plan.strip(), "images": n, "macs_ratio": plan.T / 100,
                "fid_to_real": on_hi[plan.T]}

    b = SimpleNamespace(evaluated={"quality": evaluated}, s=SimpleNamespace(hi_images=2000), record=record)
    heads = headroom_hi(b, [{"need_macs_speedup": 12.0}, {"need_macs_speedup": 9.5}, {"need_macs_speedup": 11.0}])
    assert asked == [(8, 2000), (10, 2000)]  # 12x and 11x share DDIM-8's plan; at 9.5x DDIM-10 screens best
    assert [h["screened"] for h in heads] == [{"images": 64, "fid_to_real": 8.4}, {"images": 64, "fid_to_real": 6.6}]
    assert headroom_hi(SimpleNamespace(evaluated={}, s=b.s, record=record), [{"need_macs_speedup": 12.0}]) == []

    out = {"baselines_screened": [{"family": "teacher", "fid_to_real": 8.2, "images": 64}],
           "runs": [{"goal": "quality", "measure": "fid_to_real", "points": [[r["macs_ratio"], r["fid_to_real"]]
                                                                           for r in evaluated]}],
           "teacher": {"fid_to_real": 6.4}, "headroom": heads}
    rows = headroom(out, [{"level": 0.1, "steps": {"wall_speedup": 9.6}}, {"level": 0.05, "steps": None}], 1.0)
    (row,) = rows  # no baseline within +5%: no row
    assert (row["need_macs_speedup"], row["plans"], row["best"]) == (pytest.approx(12.0), 2, 8.4)
    assert row["bound"] == pytest.approx(8.2 * 1.1)
    assert row["hi"] == {"name": heads[0]["name"], "strip": plans[8].strip(), "fid_to_real": 8.3, "images": 2000,
                         "bound": pytest.approx(6.4 * 1.1)}


def test_fidelity_seeds_marks_a_baseline_beaten_only_by_a_faster_closer_plan():
    from benchmarks.fidelity_seeds import mark_beaten, render

    def row(name, kind, wall, paired):
        return {"name": name, "kind": kind, "wall_speedup": wall, "wall_speedup_median": wall + 0.25,
                "macs_speedup": wall, "paired": paired, "strip": "F"}

    rows = [row("fast close", "searched", 4.0, 1.2), row("faster", "searched", 5.0, 1.5),
            row("slow base", "baseline", 3.0, 1.3),  # both searched plans are faster; only one is closer
            row("close base", "baseline", 3.5, 1.1),  # nothing closer
            row("fast base", "baseline", 6.0, 2.0)]  # nothing as fast
    mark_beaten(rows)
    assert [r.get("beaten_by") for r in rows] == [None, None, "fast close", None, None]
    text = render({"rows": rows, "seed": 0, "images": 256, "total_s": 60, "machine": "m", "pop": 16, "gens": 4,
                   "floor": 0.05, "budget": 0.35, "screen_images": 64, "wall_fit": {"median_gap": 0.02, "max_gap": 0.1}})
    assert "**1 of 3 fast-region baselines beaten**" in text and "| slow base | baseline | 3.00x (3.25x) |" in text
    assert "population 16, 4 generations, paired on 64 images, MACs ratio between 0.05 and 0.35" in text



def test_fronts_are_rescored_where_they_can_beat_a_baseline():
    """A front plan is re-scored when some baseline on the same images has at least its MACs and a
    worse score; the front's near-empty end (cheapest, worst) is not, unless nothing can matter."""
    from benchmarks.compare import can_matter

    base = [{"images": 64, "macs_ratio": 0.3, "paired": 1.6}, {"images": 64, "macs_ratio": 0.1, "paired": 2.1},
            {"images": 256, "macs_ratio": 0.5, "paired": 9.0}]  # other images: not comparable
    front = [{"macs_ratio": 0.01, "paired": 8.7}, {"macs_ratio": 0.26, "paired": 1.25},
             {"macs_ratio": 0.3, "paired": 1.6}, {"macs_ratio": 0.08, "paired": 2.0}]
    assert can_matter(front, base, "paired", 64) == [front[1], front[3]]
    assert can_matter(front[:1], base, "paired", 64) == front[:1]


def test_cover_picks_the_fewest_plans_that_beat_the_most_baselines():
    from benchmarks.compare import cover

    base = [{"images": 64, "macs_ratio": m, "paired": p} for m, p in [(0.3, 1.5), (0.25, 1.6), (0.1, 2.0), (0.1, 9.0)]]
    front = [{"macs_ratio": 0.2, "paired": 1.4},  # beats the first two
             {"macs_ratio": 0.09, "paired": 1.45},  # beats all four
             {"macs_ratio": 0.05, "paired": 8.0}]  # beats the last only
    assert cover(front, base, "paired", 64, 3) == [front[1]]  # nothing left to beat after the first
    assert cover(front[::2], base, "paired", 64, 1) == [front[0]]
    assert cover(front[::2], base, "paired", 64, 2) == [front[0], front[2]]
    assert cover(front, base, "paired", 256, 2) == []  # no baseline on those images
    # counted in wall-clock: the second plan realises little of its MACs speed-up and is now slower than all
    for r, w in zip(base + front, [3.0, 3.5, 8.0, 8.0, 4.0, 2.5, 12.0]):
        r["wall_speedup"] = w
    assert cover(front, base, "paired", 64, 3, by="wall") == [front[0], front[2]]
    # with slack, a plan up to that share slower still counts (it may be as fast once timed)
    slower = [{"macs_ratio": 0.32, "paired": 1.4}]  # 3.13x against the first baseline's 3.33x
    assert cover(slower, base, "paired", 64, 1) == [] and cover(slower, base, "paired", 64, 1, slack=0.9) == slower
    assert cover(slower, base, "paired", 64, 1, slack=0.95) == []


def test_fronts_mid_sends_the_plans_that_beat_most_baselines_then_spreads_the_rest():
    """The 256-image slots go first to the front plans that together beat the most baselines on the screening
    images, then by MACs over the other plans that beat some; a seed's shape and plans that beat none stay."""
    from types import SimpleNamespace

    from benchmarks.compare import fronts_mid
    from flexnas.plan.plan import Plan, Segment

    def plan(*kinds):
        return Plan("DDIMScheduler", 20, tuple(Segment(*k) for k in kinds)).to_dict()

    base = [{"images": 64, "macs_ratio": m, "paired": p} for m, p in [(0.3, 1.5), (0.25, 1.6), (0.1, 2.0), (0.1, 9.0)]]
    front = [{"plan": plan((4, 1), (3, 1), (2, 1), (1,)), "macs_ratio": 0.2, "paired": 1.4},  # beats two
             {"plan": plan((4, 1), (3, 2), (2, 1), (1,)), "macs_ratio": 0.22, "paired": 1.55},  # one, covered
             {"plan": plan((1,), (0,), (2, 1), (0,)), "macs_ratio": 0.05, "paired": 8.0},  # beats the last
             {"plan": plan((1,), (0,), (3, 2), (0,)), "macs_ratio": 0.07, "paired": 9.5},  # beats none
             {"plan": Plan.teacher("DDIMScheduler", 20).to_dict(), "macs_ratio": 1.0, "paired": 0.0}]  # a seed
    sent = []
    b = SimpleNamespace(s=SimpleNamespace(front_mid=2, mid_images=256),
                        record=lambda p, fam, name, n: sent.append(n) or {"plan": p.to_dict()})
    run = {"algorithm": "nsga2", "skip": True, "goal": "fidelity", "name": "f", "measure": "paired", "images": 64,
           "feasible_front": front}
    assert fronts_mid(b, [run], base) == [[{"plan": front[i]["plan"]} for i in (2, 0)]]  # by MACs
    assert sent == [256, 256]
    b.s.front_mid = 3
    assert fronts_mid(b, [run], base) == [[{"plan": front[i]["plan"]} for i in (2, 0, 1)]]


def test_fitted_speedups_recover_step_costs_and_outvote_one_plans_noise():
    """Round ratios made from known costs per step kind (in teacher units) give back those costs and each
    plan's exact speed-up; a plan whose own timings ran 30% slow keeps the model's speed-up, which its
    step counts and everyone else's timings fix."""
    from benchmarks.compare import fitted_speedups, step_kinds
    from flexnas.plan.plan import Plan

    sch, br = "DDIMScheduler", 2
    plans = [Plan.teacher(sch, k) for k in (5, 10, 20, 25)]
    plans += [Plan.deepcache(sch, 100, k, b) for k in (4, 5, 10) for b in range(br)]
    plans += [Plan.step_reduction(sch, 100, k) for k in (10, 20)]
    plans += [Plan.step_reduction(sch, 100, k, "reuse") for k in (5, 10)]  # NULL steps run: a scheduler step
    cost = np.array([0.004, 0.0098, 0.003, 0.005, 0.0001])  # constant, FULL, PARTIAL b0, b1, NULL
    assert step_kinds(plans[-1], br)[-1] == 90 and step_kinds(plans[-3], br)[-1] == 0  # dropped NULL steps: free
    true = [float(step_kinds(p, br) @ cost) for p in plans]
    exact = [[t] * 3 for t in true]
    speed, fit = fitted_speedups(plans, exact, br)
    assert speed == pytest.approx([1 / t for t in true], rel=1e-9)
    assert list(fit["costs"].values()) == pytest.approx(cost.tolist(), rel=1e-6, abs=1e-9)
    assert fit["max_gap"] == pytest.approx(0, abs=1e-9)
    noisy = [list(r) for r in exact]
    noisy[1] = [true[1] * 1.3] * 3  # DDIM-10 timed 30% slow in every round
    speed, fit = fitted_speedups(plans, noisy, br)
    assert abs(speed[1] * true[1] - 1) < 0.1 < abs(1 / float(np.median(noisy[1])) * true[1] - 1)
    assert fit["max_gap"] > 0.15 and fit["median_gap"] < 0.05


def test_promotion_benchmark_runs_every_arm_and_judges_on_other_noise(tmp_path, monkeypatch):
    from benchmarks import promotion

    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path / "cache"))
    report, results = tmp_path / "REPORT.md", tmp_path / "results"
    assert promotion.main(["--quick", "--seeds", "0", "--judge-images", "16", "--report", str(report),
                           "--results", str(results), "--threads", "1"]) == 0
    data = json.loads((results / "promotion.json").read_text())
    rows = {r["arm"]: r for r in data["rows"]}
    assert list(rows) == ["end", "end, 3 gens", "promote every 2", "promote every 1"]
    assert rows["end"]["promoted"] == rows["end, 3 gens"]["promoted"] == 0
    assert rows["promote every 2"]["promoted"] > 0 and rows["promote every 1"]["promoted"] > 0
    assert rows["end, 3 gens"]["cost"] > rows["end"]["cost"]  # a third generation evaluates more plans
    for r in rows.values():  # every front plan judged, none beyond the budget
        assert r["front"] and all(f["macs_ratio"] <= promotion.BUDGET + 1e-12 and f["judged"] > 0 for f in r["front"])
    assert "## Promotion during the search" in report.read_text()


def test_hypervolume_is_the_dominated_area():
    from benchmarks.render import hypervolume

    def recs(*pts):
        return [{"judged": q, "macs_ratio": m} for q, m in pts]

    # rectangles (3-1)x(0.35-0.1) and (3-2)x(0.35-0.05) overlap in (3-2)x(0.35-0.1); the last point is beyond ref
    assert hypervolume(recs((1, 0.1), (2, 0.05), (4, 0.01)), "judged", (3, 0.35)) == pytest.approx(0.5 + 0.3 - 0.25)
    assert hypervolume(recs((4, 0.01), (math.inf, 0.01)), "judged", (3, 0.35)) == 0.0


@pytest.mark.parametrize("goal", ["quality", "fidelity"])
def test_default_search_benchmark_judges_chosen_plans_against_every_faster_baseline(tmp_path, monkeypatch, capsys,
                                                                                    goal):
    """Each chosen plan against the best of the stock baselines at least as fast in wall-clock, on the run's
    goal's ground truth: that rival is the best finalist, every finalist is at least as fast, and ``wins``
    compares the plan with it."""
    from benchmarks import default_search
    from benchmarks.compare import Settings
    from flexnas.models.registry import get_problem
    from flexnas.plan.plan import Plan, Segment

    monkeypatch.setenv("FLEXNAS_CACHE", str(tmp_path / "cache"))
    s = Settings.quick("fashion-mnist")
    p = get_problem("fashion-mnist", **s.problem_overrides())
    searched = Plan(p.scheduler, p.T, (Segment(1), Segment(0), Segment(1), Segment(2, 1)), p.null_mode)  # not a seed
    run = tmp_path / "run"
    run.mkdir()
    alone = Plan(p.scheduler, p.T, (Segment(1), Segment(0), Segment(0), Segment(0)), p.null_mode)  # DDIM-1's shape
    (run / "chosen.json").write_text(json.dumps([{"plan": searched.to_dict(), "seed": False},
                                                 {"plan": Plan.deepcache(p.scheduler, p.T, 5, 0).to_dict(), "seed": True},
                                                 {"plan": alone.to_dict(), "seed": False}]))
    (run / "summary.json").write_text(json.dumps({"goal": goal}))
    truth = {"quality": "fid_to_real", "fidelity": "paired"}[goal]
    report, results = tmp_path / "REPORT.md", tmp_path / "results"
    argv = ["--quick", "--run", str(run), "--images", "24", "--finalists", "2", "--report", str(report),
            "--results", str(results), "--threads", "1"]
    assert default_search.main(argv) == 0
    out = json.loads((results / "default_search.json").read_text())
    rows = out["rows"]
    assert out["goal"] == goal and [r["seed"] for r in rows] == [False, True, False] and all(r["images"] == 24 for r in rows)
    assert rows[2]["best_rival"] is None and not rows[2]["wins"]  # faster than every baseline (DDIM-2): no win
    for r in rows[:2]:
        x = r["best_rival"]
        assert x is not None and x["images"] == 24 and x["wall_speedup"] >= r["wall_speedup"]
        assert x["family"] in ("steps", "deepcache") and r["rivals_faster"] >= 1
        assert r["wins"] == (r[truth] < x[truth])
    text = report.read_text()
    assert "## README command 1" in text and {"quality": "FID to real @24", "fidelity": "paired distance to the "
                                              "teacher @24"}[goal] in text
    capsys.readouterr()
    assert default_search.main(["--quick", "--run", str(tmp_path), "--results", str(results)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no chosen.json" in err[0]


def test_benchmark_refuses_to_continue_a_search_made_with_other_settings(tmp_path):
    """``--resume`` keeps a run's own settings; the benchmark must not report that run as its own search."""
    from dataclasses import asdict

    from benchmarks.compare import check_same_search
    from flexnas.errors import FlexnasError
    from flexnas.search.config import SearchConfig

    cfg = SearchConfig(pop=16, gens=4, goal="fidelity", objective="paired", macs_budget=0.35, macs_floor=0.05)
    saved = {**asdict(cfg), "gens": 2, "rescore_images": 256}  # fewer generations done; a value the run filled in
    (tmp_path / "run.json").write_text(json.dumps({"config": saved}))
    check_same_search(cfg, tmp_path)  # the same search: it continues
    (tmp_path / "run.json").write_text(json.dumps({"config": {**saved, "pop": 12, "macs_floor": None}}))
    with pytest.raises(FlexnasError, match=r"other settings \(pop, macs_floor\)"):
        check_same_search(cfg, tmp_path)
    (tmp_path / "run.json").write_text("{")
    with pytest.raises(FlexnasError, match=r"run\.json"):
        check_same_search(cfg, tmp_path)


def test_placement_report_bolds_each_ks_best_and_names_where_stock_is_closest():
    from benchmarks.placement import render

    def row(k, name, fid, kid, paired):
        return {"k": k, "placement": name, "full": k, "fid_to_real": fid, "kid_to_real": kid, "paired": paired}

    rows = [row(10, "stock (leading)", 8.3, 1788, 2.04), row(10, "segment starts", 8.9, 1900, 2.09),
            row(20, "stock (leading)", 5.0, 1200, 1.88), row(20, "segment starts", 5.2, 1150, 1.80),
            {**row(10, "stock refined (9 evals @64)", 8.0, 1700, 1.84), "evals": 9, "steps": [14, 24, 97]}]
    text = render({"images": 256, "rows": rows, "machine": "m"})
    assert "| 10 | stock (leading) | 8.300 | 1788 | 2.040 |" in text
    assert "| 10 | stock refined (9 evals @64) | **8.000** | **1700** | **1.840** |" in text
    assert "| 20 | segment starts | 5.200 | **1150** | **1.800** |" in text
    assert "of the fixed placements, stock spacing is the closest to the teacher at k = 10;" in text
    assert ("Refined from stock spacing rounded to the base grid at k = 10 (9 evaluations on the first 64 of these "
            "images): paired 1.840 against stock's 2.040, "
            "FID to real 8.000 against 8.300; base steps [14, 24, 97].") in text
