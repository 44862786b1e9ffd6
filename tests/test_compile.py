"""Compiled step kinds: every kind matches eager within 1e-5, and one graph per kind survives plan changes."""

from __future__ import annotations

import pytest
import torch

from flexnas.engine.compiled import compiled_forward
from flexnas.engine.partial import PartialUNet
from flexnas.models.registry import get_problem
from flexnas.plan.plan import Plan


class CountingBackend:
    """A torch.compile backend that runs the captured graph eagerly and counts captures."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def kind_outputs(unet, forward, x, t, kw):
    """Output of FULL and of PARTIAL at every branch (each right after a FULL step at another input)."""
    out = {}
    with PartialUNet(unet, keep=True) as pu, torch.no_grad():
        fwd = forward(unet, pu.num_branches) if forward else unet.forward
        for b in [None, *range(pu.num_branches)]:
            pu.full()
            y = fwd(x, t, **kw, return_dict=False)[0]
            if b is not None:
                pu.partial(b)
                y = fwd(x * 0.9, t - 10, **kw, return_dict=False)[0]
            out["full" if b is None else b] = y
        pu.remove()
    return out


@pytest.mark.parametrize("which", ["embedded", "cond_cfg"])
def test_compiled_step_kinds_match_eager(which, embedded_unet, cond_unet):
    """Inductor-compiled FULL and PARTIAL(b) forwards equal eager ones within 1e-5 (CFG: doubled batch)."""
    g = torch.Generator().manual_seed(1)
    if which == "embedded":
        unet, kw = embedded_unet, {}
        x = torch.randn(2, 1, 28, 28, generator=g)
    else:
        unet = cond_unet
        x = torch.randn(4, 4, 8, 8, generator=g)  # two images, unconditional and text halves
        kw = {"encoder_hidden_states": torch.randn(4, 5, 32, generator=g)}
    t = torch.tensor(500)
    eager = kind_outputs(unet, None, x, t, kw)
    compiled = kind_outputs(unet, compiled_forward, x, t, kw)
    assert eager.keys() == compiled.keys() and len(eager) >= 4
    for k in eager:
        assert not torch.equal(eager[k], eager["full"]) or k == "full"  # each kind really differs
        assert (eager[k] - compiled[k]).abs().max() <= 1e-5, k


def test_compiled_problem_latents_and_graph_reuse():
    """A compiled loaded problem gives the eager latents (within 1e-5) for mixed plans, and a
    second plan with the same step kinds reuses the graphs: the kept hooks keep guards valid."""
    backend = CountingBackend()
    eager = get_problem("fashion-mnist", T=10, batch_size=4, compile=False).load()
    comp = get_problem("fashion-mnist", T=10, batch_size=4, compile=True).load()
    assert not eager.compiled and eager.forward is None and comp.compiled
    comp.forward = torch.compile(comp.unet.forward, backend=backend)
    a = Plan.deepcache("DDIMScheduler", 10, 5, 2)
    b = Plan("DDIMScheduler", 10, [(3, 2), (4, 2)])  # (interval, branch): F p p n n F p p p n
    for plan in (a, b, None):
        assert (eager.latents(plan, n=4) - comp.latents(plan, n=4)).abs().max() <= 1e-5
    graphs = backend.graphs
    assert graphs >= 2  # FULL and PARTIAL at branch 2
    comp.latents(Plan.deepcache("DDIMScheduler", 10, 2, 2), n=4)
    assert backend.graphs == graphs
