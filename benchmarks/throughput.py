"""Throughput of each step kind, eager and compiled, and how well partial plans turn MACs into wall-clock.

    python -m benchmarks.throughput [--quick]

Per step kind (FULL, PARTIAL at every branch) on the problem's U-Net with flexnas' hooks:
milliseconds per image-step at the problem's batch size, eager and under ``torch.compile``
(inductor, default mode; dynamo traces through the hooks and keeps one graph per step
kind), with the largest difference between the two outputs. Then, for DeepCache-uniform
plans at every branch, wall-clock speed-up over the teacher divided by MACs speed-up (the
"realisation" of the MACs a plan saves). Then the rate a search evaluates plans at: the same
random plans of the default space (one model load each way, one batch of images per plan, no
feature store), eager, with ``--compile``, and as one generation in lockstep (``--lockstep``:
shared prefixes run once, the rest batched into shared U-Net calls; and sharing prefixes only),
with the compilation time counted apart and in total. Records the device; runs on a GPU when
one is present (``--device``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from benchmarks.common import machine, parse, publish
from flexnas.engine.partial import PartialUNet
from flexnas.errors import report_errors
from flexnas.metrics.evaluator import measure_wall
from flexnas.metrics.macs import MacCounter
from flexnas.models.registry import get_problem
from flexnas.plan.plan import Plan


def per_step(loaded, compiled: bool, repeats: int) -> dict[str, dict]:
    """ms per image-step and output of every step kind (FULL first: it fills the cache PARTIAL reads)."""
    unet, bs = loaded.unet, loaded.problem.batch_size
    x = torch.randn(bs, *loaded.sample_shape, generator=torch.Generator().manual_seed(0)).to(loaded.device, loaded.dtype)
    t = torch.tensor(500, device=loaded.device)
    out = {}
    with PartialUNet.use(unet) as pu, torch.no_grad():
        fwd = torch.compile(unet.forward) if compiled else unet.forward
        kinds = [("full", None)] + [(f"partial b{b.index}", b.index) for b in pu.branches]
        t_compile = time.perf_counter()
        for name, branch in kinds:  # warm-up (and compilation): one call of each kind after a FULL one
            pu.full()
            fwd(x, t, return_dict=False)
            if branch is not None:
                pu.partial(branch)
                fwd(x, t, return_dict=False)
        t_compile = time.perf_counter() - t_compile
        for name, branch in kinds:
            pu.full()
            y = fwd(x, t, return_dict=False)[0]
            if branch is not None:
                pu.partial(branch)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                y = fwd(x, t, return_dict=False)[0]
                if loaded.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            out[name] = {"ms_per_image_step": 1000 * statistics.median(times) / bs, "output": y.float().cpu()}
        pu.off()
    out["_warmup_s"] = t_compile
    return out


def plan_rate(mode: str, plans: list, images: int, overrides: dict) -> dict:
    """Plans per minute over ``plans`` (after a first plan that pays for loading and compilation):
    one by one (``eager``, ``compiled``), or the rest as one generation (``lockstep``, ``prefixes``)."""
    from flexnas.engine.steps import StepCounter
    from flexnas.models.lockstep import latents_many

    t0 = time.perf_counter()
    loaded = get_problem("fashion-mnist", compile=mode == "compiled", **overrides).load()
    loaded.latents(plans[0], n=images)  # compiles every kind the first plan uses
    warm = time.perf_counter() - t0
    t1 = time.perf_counter()
    counters = [StepCounter() for _ in plans[1:]]
    if mode in ("lockstep", "prefixes"):
        outs = latents_many(loaded, plans[1:], n=images, counters=counters, batch=mode == "lockstep")
    else:
        outs = [loaded.latents(p, n=images, counter=c) for p, c in zip(plans[1:], counters)]
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    rest = time.perf_counter() - t1
    naive = sum(len(p.active_indices()) for p in plans[1:]) * len(loaded.batches(images))
    return {"plans_per_min": 60 * len(outs) / rest, "plans_per_min_total": 60 * len(plans) / (warm + rest),
            "first_plan_s": warm, "calls_saved": 1 - sum(c.calls for c in counters) / naive,
            "latents": torch.cat(outs).float().cpu()}


def random_plans(loaded, count: int) -> list:
    import numpy as np

    from flexnas.plan.space import SearchSpace

    p = loaded.problem
    space = SearchSpace.build(p.scheduler, p.T, len(loaded.branches), None, None, p.null_mode, True)
    rng = np.random.default_rng(0)
    return [space.decode(space.random(rng)) for _ in range(count)]


def run(quick: bool, device: str, count: int) -> dict:
    overrides = {"T": 20, "batch_size": 8, "device": device} if quick else {"device": device}
    loaded = get_problem("fashion-mnist", **overrides).load()
    repeats = 2 if quick else 10
    eager = per_step(loaded, False, repeats)
    compiled = per_step(loaded, True, repeats)
    kinds = [k for k in eager if not k.startswith("_")]
    rows = [{"kind": k, "eager_ms": eager[k]["ms_per_image_step"], "compiled_ms": compiled[k]["ms_per_image_step"],
             "max_abs_diff": float((eager[k]["output"] - compiled[k]["output"]).abs().max())} for k in kinds]
    macs = MacCounter.for_problem(loaded)
    sch, T = loaded.problem.scheduler, loaded.problem.T
    images = 4 if quick else 32
    teacher = measure_wall(lambda: loaded.latents(None, n=images), repeats=1 if quick else 3)
    interval = 5 if T % 5 == 0 else 2
    realisation = []
    for b in range(len(loaded.branches)):
        plan = Plan.deepcache(sch, T, interval, b)
        wall = measure_wall(lambda: loaded.latents(plan, n=images), repeats=1 if quick else 3)
        realisation.append({"plan": plan.meta["name"], "macs_speedup": 1 / macs.ratio(plan),
                            "wall_speedup": teacher / wall, "realisation": teacher / wall * macs.ratio(plan)})
    plans = random_plans(loaded, 4 if quick else count)
    n = loaded.problem.batch_size
    rates = {mode: plan_rate(mode, plans, n, overrides) for mode in ("eager", "compiled", "lockstep", "prefixes")}
    base = rates["eager"]["latents"]
    diffs = {m: float((base - r.pop("latents")).abs().max()) for m, r in rates.items()}
    return {"machine": machine(), "device": str(loaded.device), "batch_size": loaded.problem.batch_size,
            "steps": rows, "compile_warmup_s": compiled["_warmup_s"], "eager_warmup_s": eager["_warmup_s"],
            "realisation": realisation, "images": images, "rates": rates, "rate_plans": len(plans),
            "rate_images": n, "rate_max_abs_diff": diffs}


def render(out: dict) -> str:
    lines = ["## Throughput: step kinds, eager and compiled", "",
             f"Command: `python -m benchmarks.throughput` · machine: {out['machine']} · device {out['device']}, "
             f"batch {out['batch_size']}. Compiled = `torch.compile(unet.forward)` (inductor) through flexnas' "
             f"hooks; first calls (compilation of every step kind) took {out['compile_warmup_s']:.0f} s.", "",
             "| step kind | eager ms / image-step | compiled | speed-up | max abs diff |", "|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['eager_ms']:.3f} | {r['compiled_ms']:.3f} | {r['eager_ms'] / r['compiled_ms']:.2f}x | "
              f"{r['max_abs_diff']:.1e} |" for r in out["steps"]]
    lines += ["", f"Wall/MACs realisation of DeepCache plans (eager, {out['images']} images, teacher measured in the "
              "same process):", "", "| plan | MACs speed-up | wall speed-up | realisation |", "|---|---|---|---|"]
    lines += [f"| {r['plan']} | {r['macs_speedup']:.2f}x | {r['wall_speedup']:.2f}x | {r['realisation']:.2f} |"
              for r in out["realisation"]]
    r = out["rates"]
    lines += ["", f"Plan evaluation rate: {out['rate_plans']} random plans of the default space, {out['rate_images']} "
              "images each, one model load per mode, no feature store; lockstep samples all but the first plan as "
              "one generation (shared prefixes run once, the rest batched per step kind), prefixes only shares "
              "the prefixes (bit for bit one by one):", "",
              "| mode | plans / min after the first | first plan (load + compile) s | plans / min in total | "
              "calls saved | max abs diff to eager |", "|---|---|---|---|---|---|"]
    lines += [f"| {m} | {v['plans_per_min']:.1f} | {v['first_plan_s']:.1f} | {v['plans_per_min_total']:.1f} | "
              f"{v.get('calls_saved', 0):.1%} | {out['rate_max_abs_diff'][m]:.1e} |" for m, v in r.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    def options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--quick", action="store_true")
        p.add_argument("--device", default="auto", help="cpu, cuda or auto (cuda when available)")
        p.add_argument("--plans", type=int, default=None, help="random plans for the rate (default: 17 on CPU, "
                       "65 on a GPU: a generation of 64 after the first)")

    args = parse(__doc__, argv, options)

    def go() -> int:
        from pathlib import Path

        from flexnas.models.device import resolve_device

        device = resolve_device(args.device)
        out = run(args.quick, str(device), args.plans or (65 if device.type == "cuda" else 17))
        return publish("throughput", out, render(out), Path(args.results), Path(args.report))

    return report_errors(go, prog="throughput")


if __name__ == "__main__":
    sys.exit(main())
