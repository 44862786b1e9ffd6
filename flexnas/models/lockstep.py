"""Latents of several plans of one loaded problem, sampled together (``flexnas.engine.lockstep``).

The candidates of one search generation arrive together; batch by batch, the plans that share
the problem's DDIM base schedule and null mode advance in lockstep from the same noise, resuming
from the prefix store where an earlier plan left a state, and leaving theirs for later plans.
Problems sampled by their pipeline's call (image inputs) and other schedulers run one by one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from flexnas.engine.controlnet import check_controlnet_reuse
from flexnas.engine.lockstep import Node, sample_lockstep
from flexnas.engine.steps import StepCounter, is_ddim
from flexnas.errors import FlexnasError
from flexnas.plan.plan import Plan

if TYPE_CHECKING:
    from flexnas.models.loaded import LoadedModel


def lockstep_default(device: torch.device) -> bool:
    """Whether candidates batch into shared U-Net calls when the problem does not say: on a GPU one
    bigger batch costs about what a small one does; on CPU cores it does not pay (benchmarks/REPORT.md,
    throughput)."""
    return device.type == "cuda"


@torch.no_grad()
def latents_many(loaded: "LoadedModel", plans: list[Plan], n: int | None = None, seed: int | None = None,
                 counters: list[StepCounter] | None = None, prefixes: Any = None, start: int = 0,
                 batch: bool = True) -> list[torch.Tensor]:
    """``loaded.latents`` of each of ``plans`` (images ``start..n``): equal to sampling each alone, bit
    for bit where plans only share a prefix, within 1e-5 where ``batch`` put them in one U-Net call."""
    p = loaded.problem
    n = p.num_images if n is None else n
    seed = p.seed if seed is None else seed
    counters = counters or [StepCounter() for _ in plans]
    if p.inputs is not None or not is_ddim(loaded.scheduler):
        return [loaded.latents(q, n, seed, c, prefixes, start) for q, c in zip(plans, counters)]
    if n < 1 or start % p.batch_size:
        raise FlexnasError(f"images {start}..{n} are not whole batches of {p.batch_size}")
    for q in plans:
        check_controlnet_reuse(q, loaded.controlnet, f"problem {p.name}")
    out: list[list[torch.Tensor]] = [[] for _ in plans]
    groups: dict[tuple, list[int]] = {}
    for j, q in enumerate(plans):
        groups.setdefault((q.T, q.null_mode), []).append(j)
    for first, stop in loaded.batches(n):
        if first < start:
            continue
        for idx in groups.values():
            noise, g = loaded.noise(first, stop, seed)
            key, qs = (seed, first, stop), [plans[j] for j in idx]
            starts = [_resume(prefixes, q, key) for q in qs]

            def keep(i: int, j: int, node: Node, key: tuple = key, qs: list = qs) -> None:
                if prefixes is not None:
                    prefixes.put(qs[j], i, key, node.x, node.generator.get_state(), node.cache)

            xs = sample_lockstep(loaded.unet, loaded.scheduler, qs, noise, generator=g,
                                 cond=loaded.conditioning(first, stop), eta=p.eta, batch=batch,
                                 forward=loaded.forward, counters=[counters[j] for j in idx], on_step=keep,
                                 starts=starts)
            for j, x in zip(idx, xs):
                out[j].append(x)
    return [torch.cat(x) for x in out]


def _resume(prefixes: Any, plan: Plan, key: tuple) -> tuple[int, Node] | None:
    hit = prefixes.longest(plan, key) if prefixes is not None else None
    if hit is None:
        return None
    i, x, g_state, cache = hit
    g = torch.Generator("cpu")
    g.set_state(g_state)
    return i, Node([], x, cache, None, g)
