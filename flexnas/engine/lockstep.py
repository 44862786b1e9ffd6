"""Whole-generation lockstep sampling: several plans advance together through one base schedule.

Plans that agree so far share one sampler state: the states form a prefix tree over the plans'
executed steps, and a node splits where its plans' steps part (in "drop" mode also, after the
shared call, where their next kept timesteps do, since a DDIM step lands on it). At each base
step the nodes that run the same kind of step (FULL, or PARTIAL at one branch) batch into one
U-Net call (``batch=True``; at most ``MAX_CALL_ROWS`` batch rows a call): latents, conditioning
and the cached deep features are concatenated along the batch and split after. A node alone in
its kind makes exactly the call that sampling its plan alone makes, so plans that only share a
prefix get bit-identical images; batching changes float summation order only (within 1e-5).
DDIM only, as the prefix store (its steps are stateless); docs/DESIGN.md, section 7.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from flexnas.engine.controller import ddim_step_to
from flexnas.engine.partial import PartialUNet
from flexnas.engine.sampler import Conditioning, step_kwargs
from flexnas.engine.steps import StepCounter, executed_steps, is_ddim, timestep_key
from flexnas.errors import FlexnasError
from flexnas.plan.plan import Plan, StepKind

MAX_CALL_ROWS = 512  # U-Net batch rows (guidance halves included) of one batched call: bounds its memory


@dataclass
class Node:
    """The shared state of the plans ``members`` (indices into the plans) before the current step."""

    members: list[int]
    x: torch.Tensor
    cache: dict
    last: Any = None  # the last raw U-Net output ("reuse" mode NULL steps return it)
    generator: torch.Generator | None = None

    def fork(self, members: list[int]) -> "Node":
        g = None
        if self.generator is not None:
            g = torch.Generator(self.generator.device)
            g.set_state(self.generator.get_state())
        return Node(members, self.x, dict(self.cache), self.last, g)


def cat(items: list[Any]) -> Any:
    """Concatenate module outputs (tensors, or tuples / dicts of them) along the batch."""
    first = items[0]
    if torch.is_tensor(first):
        return torch.cat(items)
    if isinstance(first, (tuple, list)):
        return type(first)(cat([it[k] for it in items]) for k in range(len(first)))
    if isinstance(first, dict):
        return {k: cat([it[k] for it in items]) for k in first}
    return first


def split(obj: Any, sizes: list[int]) -> list[Any]:
    """The inverse of ``cat``: ``obj`` cut along the batch into parts of ``sizes``."""
    if torch.is_tensor(obj):
        return list(obj.split(sizes))
    if isinstance(obj, (tuple, list)):
        parts = [split(o, sizes) for o in obj]
        return [type(obj)(p[g] for p in parts) for g in range(len(sizes))]
    if isinstance(obj, dict):
        parts = {k: split(v, sizes) for k, v in obj.items()}
        return [{k: v[g] for k, v in parts.items()} for g in range(len(sizes))]
    return [obj] * len(sizes)


def check_lockstep(plans: list[Plan], scheduler: Any) -> None:
    name = type(scheduler).__name__
    if not is_ddim(scheduler):
        raise FlexnasError(f"lockstep sampling needs DDIM (stateless steps), not {name}: sample the plans one by one")
    if len({(p.scheduler, p.T, p.null_mode) for p in plans}) != 1:
        raise FlexnasError("lockstep sampling needs one scheduler, base schedule T and null mode for all plans")
    if plans[0].scheduler != name:
        raise FlexnasError(f"plans were made for {plans[0].scheduler} but the scheduler is {name}: use "
                           f"{plans[0].scheduler}.from_config(scheduler.config)")


@torch.no_grad()
def sample_lockstep(unet: torch.nn.Module, scheduler: Any, plans: list[Plan], noise: torch.Tensor, *,
                    generator: torch.Generator | None = None, cond: Conditioning | None = None, eta: float = 0.0,
                    batch: bool = True, forward: Callable | None = None, counters: list[StepCounter] | None = None,
                    on_step: Callable[[int, int, Node], None] | None = None,
                    starts: list[tuple[int, Node] | None] | None = None) -> list[torch.Tensor]:
    """Final latents of each of ``plans`` from the same ``noise`` (and ``generator`` state after it).

    ``counters[j]`` counts the network calls made for plan ``j`` (a shared call counts for the
    first plan of its node only). ``on_step(i, j, node)`` sees each node before its active step
    ``i`` (``j``: one of its plans); ``starts[j]``, a (step, node) stored there, resumes plan ``j``.
    """
    check_lockstep(plans, scheduler)
    cond = cond or Conditioning()
    partial = PartialUNet.use(unet)
    try:
        for p in plans:
            p.validate(partial.num_branches)
        return _run(unet, scheduler, plans, noise, generator, cond, eta, batch, forward or unet, partial,
                    counters, on_step, starts or [None] * len(plans))
    finally:
        partial.release()


def _run(unet, scheduler, plans, noise, generator, cond, eta, batch, forward, partial, counters, on_step, starts):
    T, drop = plans[0].T, plans[0].null_mode == "drop"
    steps = [executed_steps(p) for p in plans]
    scheduler.set_timesteps(T)
    ts = [int(timestep_key(t)) for t in scheduler.timesteps]
    # plan -> active step -> the next kept timestep ("drop" mode; -1: the end)
    after = [dict(zip(act, [ts[b] for b in act[1:]] + [-1])) for act in (p.active_indices() for p in plans)]
    base_next = {i: ts[i + 1] if i + 1 < T else -1 for i in range(T)}
    fresh = [j for j, s in enumerate(starts) if s is None]
    nodes = [Node(fresh, noise * scheduler.init_noise_sigma, {}, None, generator)] if fresh else []
    joining: dict[tuple, Node] = {}  # plans resumed from the same stored state join one node
    for j, s in enumerate(starts):
        if s is not None:
            key = (s[0], plans[j].steps[:s[0]])
            joining.setdefault(key, s[1].fork([])).members.append(j)
    kw, out = cond.unet_kwargs(), [None] * len(plans)
    skw = step_kwargs(scheduler, eta, None)  # read once; each node passes its own generator
    for i, t in enumerate(scheduler.timesteps):
        nodes += [n for (k, _), n in joining.items() if k == i]
        nodes = _part(nodes, lambda j, i=i: steps[j][i])
        runs: dict[Any, list[Node]] = {}
        for n in nodes:
            step = steps[n.members[0]][i]
            if step.kind is not StepKind.NULL:
                if on_step is not None:
                    on_step(i, n.members[0], n)
                runs.setdefault(step, []).append(n)
            elif counters is not None:
                for j in n.members:
                    counters[j].null += 1
        for step, group in runs.items():
            per_call = max(1, MAX_CALL_ROWS // (len(noise) * (2 if cond.cfg else 1))) if batch else 1
            for chunk in (group[k:k + per_call] for k in range(0, len(group), per_call)):
                _call(unet, forward, partial, scheduler, step, chunk, t, kw, cond.cfg)
                if counters is not None:
                    for n in chunk:
                        c = counters[n.members[0]]
                        c.full += step.kind is StepKind.FULL
                        c.partial.update([step.branch] if step.kind is StepKind.PARTIAL else [])
        if drop:  # the same call, then DDIM steps to different next kept timesteps
            nodes = _part(nodes, lambda j, i=i: after[j].get(i))
        for n in nodes:
            if drop and steps[n.members[0]][i].kind is StepKind.NULL:
                continue  # a dropped step: the kept step before it jumped over it
            o = n.last
            if cond.cfg:
                uncond, text = o.chunk(2)
                o = uncond + cond.guidance_scale * (text - uncond)
            if "generator" in skw:
                skw["generator"] = n.generator
            nxt = after[n.members[0]][i] if drop else base_next[i]
            n.x = ddim_step_to(scheduler, scheduler.step, nxt, base_next[i], o, t, n.x, **skw, return_dict=False)[0]
    for n in nodes:
        for j in n.members:
            out[j] = n.x
    return out


def _part(nodes: list[Node], key: Callable[[int], Any]) -> list[Node]:
    """Split every node whose plans differ by ``key`` (the first group keeps the node)."""
    out = []
    for n in nodes:
        by: dict[Any, list[int]] = {}
        for j in n.members:
            by.setdefault(key(j), []).append(j)
        groups = list(by.values())
        n.members = groups[0]
        out += [n] + [n.fork(ms) for ms in groups[1:]]
    return out


def _call(unet, forward, partial, scheduler, step, chunk, t, kw, cfg) -> None:
    """One U-Net call for the nodes of ``chunk``, all running ``step``: each node's ``last`` output (and,
    at a FULL step, its feature cache) is set."""
    ins = [torch.cat([n.x] * 2) if cfg else n.x for n in chunk]
    sizes = [len(x) for x in ins]
    model_in = scheduler.scale_model_input(ins[0] if len(ins) == 1 else torch.cat(ins), t)
    if len(chunk) > 1:
        kw = {k: cat([v] * len(chunk)) for k, v in kw.items()}
    partial.clear()
    if step.kind is StepKind.FULL:
        partial.full()
    else:
        partial.state.cache.update(chunk[0].cache if len(chunk) == 1 else cat([n.cache for n in chunk]))
        partial.partial(step.branch)
    try:
        o = forward(model_in, t, **kw, return_dict=False)[0]
    finally:
        partial.off()
    for n, part in zip(chunk, split(o, sizes) if len(chunk) > 1 else [o]):
        n.last = part
    if step.kind is StepKind.FULL:
        caches = split(dict(partial.state.cache), sizes) if len(chunk) > 1 else [dict(partial.state.cache)]
        for n, c in zip(chunk, caches):
            n.cache = c
    partial.clear()
