"""Lockstep sampling of a generation: equal to sampling each plan alone, bit for bit where plans only
share a prefix, within 1e-5 (images in [0, 1]) where they batch into one U-Net call; calls made once
per shared prefix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from flexnas.engine.steps import StepCounter, executed_steps
from flexnas.errors import FlexnasError
from flexnas.metrics.store import PrefixStore
from flexnas.models.lockstep import latents_many
from flexnas.models.registry import get_problem
from flexnas.plan.plan import Plan
from flexnas.plan.space import SearchSpace

T = 20


def population(mode: str, branches: int) -> list[Plan]:
    """Teacher, DeepCache, step reduction, random plans of the skip space, a repeat, and a plan that
    shares a long prefix with another."""
    sch = "DDIMScheduler"
    space = SearchSpace.build(sch, T, branches, skip=True, null_mode=mode)
    rng = np.random.default_rng(3)
    randoms = [space.decode(space.random(rng)) for _ in range(4)]
    plans = [Plan.teacher(sch, T, mode), Plan.deepcache(sch, T, 5, 0, mode), Plan.deepcache(sch, T, 4, 1, mode),
             Plan.step_reduction(sch, T, 4, mode), Plan.step_reduction(sch, T, 5, mode), *randoms,
             Plan.deepcache(sch, T, 5, 0, mode),
             Plan(sch, T, [(5, 0)] * 3 + [(2, 1)], null_mode=mode)]  # = DeepCache N=5 b0 for 15 steps
    return plans


def shared_calls(plans: list[Plan]) -> int:
    """Network calls of one batch when every distinct prefix ending in an active step runs once."""
    return len({tuple(executed_steps(p)[:i + 1]) for p in plans for i in p.active_indices()})


@pytest.fixture(scope="module")
def loaded(tiny_sd_folder):
    """``loaded(which, mode)``: the embedded model (``embedded-eta``: stochastic DDIM, eta 0.5), or the
    tiny Stable Diffusion pipeline with classifier-free guidance (the U-Net sees both halves), in null
    mode ``mode`` (loaded once)."""
    cache = {}

    def get(which: str, mode: str):
        if (which, mode) not in cache:
            kw = dict(T=T, null_mode=mode, **({"eta": 0.5} if which == "embedded-eta" else {}))
            cache[which, mode] = (get_problem("fashion-mnist", batch_size=4, num_images=8, **kw) if "embedded" in which
                                  else get_problem(str(tiny_sd_folder), scheduler="DDIMScheduler", num_images=4,
                                                   batch_size=2, guidance_scale=3.0, prompts=["abc", "xyz cat"],
                                                   device="cpu", **kw)).load()
        return cache[which, mode]

    return get


@pytest.fixture(scope="module", params=["drop", "reuse"])
def embedded(request, loaded):
    return loaded("embedded", request.param)


@pytest.mark.parametrize("mode", ["drop", "reuse"])
@pytest.mark.parametrize("which", ["embedded", "embedded-eta", "sd_cfg"])
def test_lockstep_equals_one_by_one(which, mode, loaded):
    loaded = loaded(which, mode)
    calls = []
    hook = loaded.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        check_population(loaded, population(mode, len(loaded.branches)), calls)
    finally:
        hook.remove()


def check_population(loaded, plans, calls):
    """Unbatched lockstep == each plan alone, bit for bit, with one U-Net call per shared prefix;
    batched: fewer calls, images within 1e-5."""
    alone = [loaded.latents(p, n=loaded.problem.num_images) for p in plans]
    counters = [StepCounter() for _ in plans]
    calls.clear()
    shared = latents_many(loaded, plans, counters=counters, batch=False)
    for a, b in zip(alone, shared):
        assert torch.equal(a, b)  # only prefixes shared: the same calls, bit for bit
    batches = len(loaded.batches(loaded.problem.num_images))
    assert sum(c.calls for c in counters) == len(calls) == batches * shared_calls(plans) < batches * sum(
        len(p.active_indices()) for p in plans)
    unbatched, calls[:] = len(calls), []
    batched = latents_many(loaded, plans, batch=True)
    assert len(calls) < unbatched  # step kinds ran together
    for p, a, b in zip(plans, alone, batched):  # images in [0, 1] (the tiny SD's latents reach 20)
        assert (loaded.decode(a) - loaded.decode(b)).abs().max() <= 1e-5, p.strip()


def test_eta_reaches_the_steps_of_a_dropping_plan(loaded):
    """Stochastic DDIM (eta > 0) in drop mode: the jumps over NULL steps draw their noise as the
    stock steps do (the patched step keeps the stock signature, which callers read for eta)."""
    plan = Plan.step_reduction("DDIMScheduler", T, 4, "drop")
    noisy = loaded("embedded-eta", "drop").latents(plan, n=4)
    assert not torch.equal(noisy, loaded("embedded", "drop").latents(plan, n=4))
    assert torch.equal(noisy, latents_many(loaded("embedded-eta", "drop"), [plan], n=4, batch=False)[0])


def test_lockstep_resumes_from_the_prefix_store(embedded):
    """Plans resume where an earlier generation left a state, and leave theirs: images unchanged."""
    plans = population(embedded.problem.null_mode, len(embedded.branches))
    prefixes = PrefixStore()
    first = latents_many(embedded, plans[:5], prefixes=prefixes, batch=False)
    hits = prefixes.hits
    counters = [StepCounter() for _ in plans]
    again = latents_many(embedded, plans, prefixes=prefixes, counters=counters, batch=False)
    assert prefixes.hits > hits
    for a, b in zip(first, again[:5]):
        assert torch.equal(a, b)
    for p, b in zip(plans[5:], again[5:]):
        assert torch.equal(embedded.latents(p, n=8), b)
    # the first five resume from the state stored before their last active step: one call per batch each
    assert sum(c.calls for c in counters[:5]) == 5 * len(embedded.batches(8))


def test_lockstep_mixed_base_schedules_and_bad_input(embedded):
    """Plans of other base schedules (stock k-step runs) sample in their own lockstep group."""
    mode = embedded.problem.null_mode
    plans = [Plan.teacher("DDIMScheduler", 7, mode), Plan.deepcache("DDIMScheduler", T, 5, 0, mode),
             Plan.teacher("DDIMScheduler", 7, mode)]
    out = latents_many(embedded, plans, n=4)
    assert torch.equal(out[0], out[2]) and torch.equal(out[0], embedded.latents(plans[0], n=4))
    assert torch.equal(out[1], embedded.latents(plans[1], n=4))  # alone in its group
    with pytest.raises(FlexnasError, match="not whole batches"):
        latents_many(embedded, plans, n=8, start=2)
