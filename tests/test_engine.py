"""Plan controller and sampler: exactness against stock diffusers pipelines, null modes, counting."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMPipeline,
    DDIMScheduler,
    DDPMPipeline,
    DPMSolverMultistepScheduler,
    PNDMPipeline,
    PNDMScheduler,
)

import flexnas
from flexnas.engine.controller import PlanController
from flexnas.engine.sampler import Conditioning, sample, to_images
from flexnas.engine.steps import StepCounter
from flexnas.errors import FlexnasError
from flexnas.plan.plan import Plan, Segment

T = 10
B = 2
SHAPE = (B, 1, 28, 28)

SCHEDULERS = {
    "DDIMScheduler": lambda cfg: DDIMScheduler.from_config(cfg),
    "PNDMScheduler": lambda cfg: PNDMScheduler.from_config(cfg, skip_prk_steps=True),  # PLMS
    "DPMSolverMultistepScheduler": lambda cfg: DPMSolverMultistepScheduler.from_config(cfg),  # DPM-Solver++
}


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def as_tensor(images) -> torch.Tensor:
    """Pipeline images (pt [B,C,H,W] or np [B,H,W,C]) as a [B,C,H,W] tensor."""
    if isinstance(images, np.ndarray):
        return torch.from_numpy(images).permute(0, 3, 1, 2)
    return images


def maxdiff(a, b) -> float:
    return (as_tensor(a).float() - as_tensor(b).float()).abs().max().item()


def mixed_plan(scheduler="DDIMScheduler", null_mode="drop"):
    """Partial and null steps, ending on a NULL step."""
    plan = Plan(scheduler, T, (Segment(2, 1), Segment(1), Segment(2, 3), Segment(1), Segment(1)), null_mode)
    assert plan.strip() == "F p1 F . F p3 F . F ."
    return plan


def uniform_plan(scheduler="DDIMScheduler", null_mode="drop"):
    return Plan.uniform(scheduler, T, 2, 3, 2, null_mode)  # F p2 p2 . . F p2 p2 . .


# ----------------------------------------------------------------------------- teacher == stock pipeline
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_teacher_matches_ddim_pipeline(embedded_unet, scheduler_config, eta):
    pipe = DDIMPipeline(embedded_unet, DDIMScheduler.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=B, generator=gen(0), eta=eta, num_inference_steps=T, output_type="pt").images
    x = sample(embedded_unet, DDIMScheduler.from_config(scheduler_config), T, SHAPE,
               plan=Plan.teacher("DDIMScheduler", T), generator=gen(0), eta=eta)
    assert ref.shape == SHAPE
    assert maxdiff(to_images(x), ref) <= 1e-5
    # and the stock loop without a plan is the same
    x0 = sample(embedded_unet, DDIMScheduler.from_config(scheduler_config), T, SHAPE, generator=gen(0), eta=eta)
    assert maxdiff(x0, x) <= 1e-6


def test_eta_changes_ddim_output(embedded_unet, scheduler_config):
    """Sanity: with eta > 0 the step noise matters, so the eta=0.5 match above is not vacuous."""
    plan = Plan.teacher("DDIMScheduler", T)
    a = sample(embedded_unet, DDIMScheduler.from_config(scheduler_config), T, SHAPE, plan=plan, generator=gen(0))
    b = sample(embedded_unet, DDIMScheduler.from_config(scheduler_config), T, SHAPE, plan=plan, generator=gen(0),
               eta=0.5)
    c = sample(embedded_unet, DDIMScheduler.from_config(scheduler_config), T, SHAPE, plan=plan, generator=gen(0),
               eta=0.5, noise=torch.randn(SHAPE, generator=gen(0)))  # same start, other step noise
    assert maxdiff(a, b) > 1e-3 and maxdiff(b, c) > 1e-3


def test_teacher_matches_plms_pipeline(embedded_unet, scheduler_config):
    pipe = PNDMPipeline(embedded_unet, SCHEDULERS["PNDMScheduler"](scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.skip_prk_steps
    ref = pipe(batch_size=B, generator=gen(0), num_inference_steps=T, output_type="np").images
    x = sample(embedded_unet, SCHEDULERS["PNDMScheduler"](scheduler_config), T, SHAPE,
               plan=Plan.teacher("PNDMScheduler", T), generator=gen(0))
    assert maxdiff(to_images(x), ref) <= 1e-5


def test_teacher_matches_dpmsolver_pipeline(embedded_unet, scheduler_config):
    pipe = DDPMPipeline(embedded_unet, SCHEDULERS["DPMSolverMultistepScheduler"](scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    ref = pipe(batch_size=B, generator=gen(0), num_inference_steps=T, output_type="np").images
    x = sample(embedded_unet, SCHEDULERS["DPMSolverMultistepScheduler"](scheduler_config), T, SHAPE,
               plan=Plan.teacher("DPMSolverMultistepScheduler", T), generator=gen(0))
    assert maxdiff(to_images(x), ref) <= 1e-5


# ----------------------------------------------------------------------------- tiny Stable Diffusion
@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_teacher_matches_stable_diffusion_pipeline(tiny_sd, name):
    pipe = tiny_sd
    assert pipe.safety_checker is None
    make = {"DDIMScheduler": lambda c: DDIMScheduler.from_config(c),
            "PNDMScheduler": lambda c: PNDMScheduler.from_config(c, skip_prk_steps=True),
            "DPMSolverMultistepScheduler": lambda c: DPMSolverMultistepScheduler.from_config(c)}[name]
    config = pipe.scheduler.config
    pipe.scheduler = make(config)
    prompt = "abc xyz cat"
    ref = pipe(prompt, num_inference_steps=T, guidance_scale=7.5, generator=gen(0), output_type="latent").images

    prompt_embeds, negative_prompt_embeds = pipe.encode_prompt(prompt, torch.device("cpu"), 1, True, "")
    unet = pipe.unet
    size = unet.config.sample_size
    cond = Conditioning(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_prompt_embeds,
                        guidance_scale=7.5)
    assert cond.cfg
    x = sample(unet, make(config), T, (1, unet.config.in_channels, size, size),
               plan=Plan.teacher(name, T), generator=gen(0), cond=cond)
    assert ref.shape == x.shape == (1, 4, size, size)
    assert maxdiff(x, ref) <= 1e-5
    # guidance matters (the prompt really conditions the tiny model)
    x1 = sample(unet, make(config), T, (1, 4, size, size), plan=Plan.teacher(name, T), generator=gen(0),
                cond=Conditioning(prompt_embeds=prompt_embeds))
    assert maxdiff(x1, ref) > 1e-4


def test_stable_diffusion_partial_plan_runs(tiny_sd):
    """A DeepCache plan on the conditional U-Net with CFG: PARTIAL at every branch runs and differs."""
    pipe = tiny_sd
    pe, ne = pipe.encode_prompt("abc", torch.device("cpu"), 1, True, "")
    cond = Conditioning(prompt_embeds=pe, negative_prompt_embeds=ne, guidance_scale=7.5)
    teacher = sample(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config), T, (1, 4, 8, 8),
                     plan=Plan.teacher("DDIMScheduler", T), generator=gen(0), cond=cond)
    for b in range(4):
        c = StepCounter()
        x = sample(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config), T, (1, 4, 8, 8),
                   plan=Plan.deepcache("DDIMScheduler", T, 5, b), generator=gen(0), cond=cond, counter=c)
        assert torch.isfinite(x).all()
        assert c.as_dict() == {"full": 2, "partial": {b: 8}, "null": 0}
        assert maxdiff(x, teacher) > 0


# ----------------------------------------------------------------------------- null modes
@pytest.mark.parametrize("make_plan", [mixed_plan, uniform_plan, lambda s, m: Plan.step_reduction(s, T, 5, m)])
def test_ddim_drop_equals_reuse(embedded_unet, scheduler_config, make_plan):
    outs = {}
    for mode in ("drop", "reuse"):
        plan = make_plan("DDIMScheduler", mode)
        assert plan.counts()["null"] > 0
        outs[mode] = sample(embedded_unet, DDIMScheduler.from_config(scheduler_config), T, SHAPE, plan=plan,
                            generator=gen(0))
    assert maxdiff(to_images(outs["drop"]), to_images(outs["reuse"])) <= 1e-4
    assert maxdiff(outs["drop"], outs["reuse"]) <= 1e-4
    teacher = sample(embedded_unet, DDIMScheduler.from_config(scheduler_config), T, SHAPE,
                     plan=Plan.teacher("DDIMScheduler", T), generator=gen(0))
    assert maxdiff(outs["drop"], teacher) > 1e-3  # the plan did change something


def test_ddim_drop_restores_scheduler(embedded_unet, scheduler_config):
    sched = DDIMScheduler.from_config(scheduler_config)
    plan = mixed_plan()
    with PlanController(embedded_unet, sched, plan):
        sched.set_timesteps(T)  # the full list stays (image-to-image pipelines index it); dropped steps are no-ops
        assert sched.timesteps.tolist() == list(range(900, -1, -100))  # F p1 F . F p3 F . F .
        x = torch.randn(SHAPE, generator=gen(0))
        assert sched.step(torch.randn(SHAPE), 600, x, return_dict=False)[0] is x  # dropped
        assert sched.step(torch.randn(SHAPE), 600, x).prev_sample is x
        assert not torch.equal(sched.step(torch.randn(SHAPE), 700, x).prev_sample, x)  # kept: jumps to 500
    sched.set_timesteps(T)
    assert sched.timesteps.tolist() == list(range(900, -1, -100))
    assert "step" not in sched.__dict__ and "set_timesteps" not in sched.__dict__


@torch.no_grad()
def by_hand(unet, sched, plan: Plan) -> torch.Tensor:
    """``plan`` run without PlanController: PartialUNet's mode set by hand at every step; NULL steps
    reuse the last output (reuse) or are left out of the scheduler's custom timesteps (drop)."""
    from flexnas.engine.partial import PartialUNet
    from flexnas.plan.plan import StepKind

    sched.set_timesteps(T)
    steps, order = plan.steps, list(range(T))
    if plan.null_mode == "drop":
        order = [i for i in order if steps[i].kind is not StepKind.NULL]
        sched.set_timesteps(timesteps=[int(sched.timesteps[i]) for i in order])
    x, last = torch.randn(SHAPE, generator=gen(0)) * sched.init_noise_sigma, None
    with PartialUNet(unet) as pu:
        for i, t in zip(order, sched.timesteps):
            kind = steps[i].kind
            if kind is not StepKind.NULL:
                pu.full() if kind is StepKind.FULL else pu.partial(steps[i].branch)
                last = unet(sched.scale_model_input(x, t), t).sample
                pu.off()
            x = sched.step(last, t, x).prev_sample
    return x


def test_dpmsolver_drop_runs(embedded_unet, scheduler_config):
    plan = mixed_plan("DPMSolverMultistepScheduler", "drop")
    c = StepCounter()
    calls = []
    h = embedded_unet.register_forward_hook(lambda m, i, o: calls.append(1))
    try:
        x = sample(embedded_unet, SCHEDULERS["DPMSolverMultistepScheduler"](scheduler_config), T, SHAPE, plan=plan,
                   generator=gen(0), counter=c)
    finally:
        h.remove()
    assert torch.isfinite(x).all()
    assert c.as_dict() == plan.counts()
    assert len(calls) == len(plan.active_indices())
    ref = by_hand(embedded_unet, SCHEDULERS["DPMSolverMultistepScheduler"](scheduler_config), plan)
    assert maxdiff(x, ref) <= 1e-6


def test_dpmsolver_drop_step_reduction_equals_custom_timesteps(embedded_unet, scheduler_config):
    """Dropping NULL steps of an all-FULL plan == DPM-Solver++ run on the kept timesteps only."""
    plan = Plan.step_reduction("DPMSolverMultistepScheduler", T, 5, "drop")
    x = sample(embedded_unet, SCHEDULERS["DPMSolverMultistepScheduler"](scheduler_config), T, SHAPE, plan=plan,
               generator=gen(0))
    sched = SCHEDULERS["DPMSolverMultistepScheduler"](scheduler_config)
    sched.set_timesteps(T)
    kept = [int(t) for t in sched.timesteps[::2]]
    sched.set_timesteps(timesteps=kept)
    ref = torch.randn(SHAPE, generator=gen(0)) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            ref = sched.step(embedded_unet(sched.scale_model_input(ref, t), t).sample, t, ref).prev_sample
    assert maxdiff(x, ref) <= 1e-5


def test_pndm_drop_needs_reuse(embedded_unet, scheduler_config):
    sched = SCHEDULERS["PNDMScheduler"](scheduler_config)
    clone = copy.deepcopy(embedded_unet)
    with pytest.raises(FlexnasError, match="reuse"):
        PlanController(embedded_unet, sched, mixed_plan("PNDMScheduler", "drop"))
    with pytest.raises(FlexnasError, match="reuse"):
        sample(embedded_unet, sched, T, SHAPE, plan=uniform_plan("PNDMScheduler", "drop"), generator=gen(0))
    # an all-FULL drop plan drops nothing, so PNDM accepts it
    PlanController(embedded_unet, sched, Plan.teacher("PNDMScheduler", T)).remove()
    # reuse works
    c = StepCounter()
    x = sample(embedded_unet, sched, T, SHAPE, plan=mixed_plan("PNDMScheduler", "reuse"), generator=gen(0),
               counter=c)
    assert torch.isfinite(x).all()
    assert c.full + sum(c.partial.values()) >= len(mixed_plan().active_indices())
    # nothing is left hooked
    xin = torch.randn(SHAPE, generator=gen(5))
    with torch.no_grad():
        assert torch.equal(embedded_unet(xin, 300).sample, clone(xin, 300).sample)


def test_pndm_with_prk_steps_is_refused(embedded_unet, scheduler_config):
    sched = PNDMScheduler.from_config(scheduler_config)  # PRK warm-up visits extra timesteps
    with pytest.raises(FlexnasError, match="skip_prk_steps=True"):
        sample(embedded_unet, sched, T, SHAPE, plan=Plan.teacher("PNDMScheduler", T, "reuse"), generator=gen(0))


def test_scheduler_mismatch(embedded_unet, scheduler_config):
    with pytest.raises(FlexnasError, match="plan was made for DDIMScheduler but the scheduler is PNDMScheduler"):
        PlanController(embedded_unet, SCHEDULERS["PNDMScheduler"](scheduler_config), Plan.teacher("DDIMScheduler", T))
    with pytest.raises(FlexnasError, match="DDIMScheduler"):
        sample(embedded_unet, SCHEDULERS["PNDMScheduler"](scheduler_config), T, SHAPE,
               plan=uniform_plan("DDIMScheduler", "reuse"), generator=gen(0))


def test_set_timesteps_with_other_t(embedded_unet, scheduler_config):
    clone = copy.deepcopy(embedded_unet)
    sched = DDIMScheduler.from_config(scheduler_config)
    with PlanController(embedded_unet, sched, uniform_plan()):
        with pytest.raises(FlexnasError, match=r"T=10 steps but the sampler asked for 20"):
            sched.set_timesteps(20)
    with pytest.raises(FlexnasError, match="num_inference_steps=10"):
        sample(embedded_unet, sched, 5, SHAPE, plan=uniform_plan(), generator=gen(0))
    # the failed run unhooked the model and scheduler again
    assert "set_timesteps" not in sched.__dict__
    xin = torch.randn(SHAPE, generator=gen(5))
    with torch.no_grad():
        assert torch.equal(embedded_unet(xin, 300).sample, clone(xin, 300).sample)


def test_branch_beyond_model_is_refused(embedded_unet, scheduler_config):
    clone = copy.deepcopy(embedded_unet)
    with pytest.raises(FlexnasError, match="branch 6 does not exist"):
        PlanController(embedded_unet, DDIMScheduler.from_config(scheduler_config),
                       Plan.uniform("DDIMScheduler", T, 2, 2, 6))
    # no hook is left behind: the model can be hooked again and runs stock
    PlanController(embedded_unet, DDIMScheduler.from_config(scheduler_config), uniform_plan()).remove()
    xin = torch.randn(SHAPE, generator=gen(5))
    with torch.no_grad():
        assert torch.equal(embedded_unet(xin, 300).sample, clone(xin, 300).sample)


# ----------------------------------------------------------------------------- fewer deep evaluations
@pytest.mark.parametrize("null_mode", ["reuse", "drop"])
def test_plan_runs_deep_blocks_less(embedded_unet, scheduler_config, count_calls, null_mode):
    unet = embedded_unet
    counts = count_calls({
        "conv_in": unet.conv_in,
        "mid": unet.mid_block.resnets[0].conv1,
        "up0": unet.up_blocks[0].resnets[0].conv1,        # consumes skip 5
        "up1": unet.up_blocks[1].resnets[1].conv1,        # consumes skip 2
        "up2": unet.up_blocks[2].resnets[0].conv1,        # consumes skip 1
        "conv_out": unet.conv_out,
    })
    sched = DDIMScheduler.from_config(scheduler_config)
    sample(unet, sched, T, SHAPE, plan=Plan.teacher("DDIMScheduler", T, null_mode), generator=gen(0))
    assert counts == dict.fromkeys(counts, T)
    for k in counts:
        counts[k] = 0

    plan = mixed_plan("DDIMScheduler", null_mode)  # F p1 F . F p3 F . F .
    assert plan.counts() == {"full": 5, "partial": {1: 1, 3: 1}, "null": 3}
    c = StepCounter()
    sample(unet, sched, T, SHAPE, plan=plan, generator=gen(0), counter=c)
    assert c.as_dict() == plan.counts()
    assert c.calls == 7
    # mid/up0 run at FULL steps only; up1 (skip 2) also at p3; up2 (skip 1) at every network call
    assert counts == {"conv_in": 7, "mid": 5, "up0": 5, "up1": 6, "up2": 7, "conv_out": 7}
    assert counts["mid"] < T


@pytest.mark.parametrize("null_mode", ["reuse", "drop"])
def test_controller_counter(embedded_unet, scheduler_config, null_mode):
    sched = DDIMScheduler.from_config(scheduler_config)
    plan = uniform_plan("DDIMScheduler", null_mode)
    with PlanController(embedded_unet, sched, plan) as ctl:
        sample(embedded_unet, sched, T, SHAPE, plan=plan, generator=gen(0), controller=ctl)
        assert ctl.counter.as_dict() == plan.counts() == {"full": 2, "partial": {2: 4}, "null": 4}
        # with counter=..., the controller's tally moves into the caller's counter
        c = StepCounter()
        sample(embedded_unet, sched, T, SHAPE, plan=plan, generator=gen(0), controller=ctl, counter=c)
        assert c.as_dict() == {"full": 4, "partial": {2: 8}, "null": 8}
        assert ctl.counter.as_dict() == {"full": 0, "partial": {}, "null": 0}


def test_reused_controller_gives_same_result(embedded_unet, scheduler_config):
    sched = DDIMScheduler.from_config(scheduler_config)
    plan = mixed_plan("DDIMScheduler", "drop")
    fresh = sample(embedded_unet, DDIMScheduler.from_config(scheduler_config), T, SHAPE, plan=plan, generator=gen(0))
    with PlanController(embedded_unet, sched, plan) as ctl:
        for _ in range(2):
            x = sample(embedded_unet, sched, T, SHAPE, plan=plan, generator=gen(0), controller=ctl)
            assert maxdiff(x, fresh) <= 1e-6


# ----------------------------------------------------------------------------- stock pipeline under a plan
@pytest.mark.parametrize("null_mode", ["drop", "reuse"])
def test_controller_on_stock_pipeline(embedded_unet, scheduler_config, null_mode):
    pipe = DDIMPipeline(embedded_unet, DDIMScheduler.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    teacher = pipe(batch_size=B, generator=gen(0), num_inference_steps=T, output_type="pt").images
    plan = mixed_plan("DDIMScheduler", null_mode)

    with PlanController(pipe.unet, pipe.scheduler, plan) as ctl:
        planned = pipe(batch_size=B, generator=gen(0), num_inference_steps=T, output_type="pt").images
        assert ctl.counter.as_dict() == plan.counts()
    ours = sample(embedded_unet, DDIMScheduler.from_config(scheduler_config), T, SHAPE, plan=plan,
                  generator=gen(0))
    assert maxdiff(to_images(ours), planned) <= 1e-5
    assert maxdiff(planned, teacher) > 1e-3

    after = pipe(batch_size=B, generator=gen(0), num_inference_steps=T, output_type="pt").images
    assert maxdiff(after, teacher) <= 1e-6
    # the scheduler is fully restored: other step counts work again
    pipe(batch_size=1, generator=gen(0), num_inference_steps=4, output_type="pt")


def test_controller_on_stock_pipeline_wrong_t(embedded_unet, scheduler_config):
    pipe = DDIMPipeline(embedded_unet, DDIMScheduler.from_config(scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    with PlanController(pipe.unet, pipe.scheduler, uniform_plan()):
        with pytest.raises(FlexnasError, match="num_inference_steps=10"):
            pipe(batch_size=1, generator=gen(0), num_inference_steps=20, output_type="pt")


@pytest.mark.parametrize("name,null_mode", [("DDIMScheduler", "drop"), ("DPMSolverMultistepScheduler", "drop"),
                                            ("DPMSolverMultistepScheduler", "reuse")])
def test_controller_on_stable_diffusion_pipeline(tiny_sd, name, null_mode):
    """The same plan through the stock SD pipeline (CFG, cross-attention) and through sample()."""
    pipe = tiny_sd
    make = {"DDIMScheduler": DDIMScheduler, "DPMSolverMultistepScheduler": DPMSolverMultistepScheduler}[name]
    config = pipe.scheduler.config
    pipe.scheduler = make.from_config(config)
    plan = Plan(name, T, (Segment(2, 2), Segment(1), Segment(2, 1), Segment(2, 3), Segment(1)), null_mode)
    prompt = "xyz cat"
    with PlanController(pipe.unet, pipe.scheduler, plan) as ctl:
        planned = pipe(prompt, num_inference_steps=T, guidance_scale=7.5, generator=gen(1),
                       output_type="latent").images
        assert ctl.counter.as_dict() == plan.counts() == {"full": 5, "partial": {1: 1, 2: 1, 3: 1}, "null": 2}
    pe, ne = pipe.encode_prompt(prompt, torch.device("cpu"), 1, True, "")
    c = StepCounter()
    ours = sample(pipe.unet, make.from_config(config), T, planned.shape, plan=plan, generator=gen(1),
                  cond=Conditioning(prompt_embeds=pe, negative_prompt_embeds=ne, guidance_scale=7.5), counter=c)
    assert c.as_dict() == plan.counts()
    assert maxdiff(ours, planned) <= 1e-5
    teacher = pipe(prompt, num_inference_steps=T, guidance_scale=7.5, generator=gen(1), output_type="latent").images
    assert maxdiff(teacher, planned) > 1e-5


def test_dpmsolver_reuse_runs(embedded_unet, scheduler_config):
    plan = mixed_plan("DPMSolverMultistepScheduler", "reuse")
    c = StepCounter()
    x = sample(embedded_unet, SCHEDULERS["DPMSolverMultistepScheduler"](scheduler_config), T, SHAPE, plan=plan,
               generator=gen(0), counter=c)
    assert torch.isfinite(x).all()
    assert c.as_dict() == plan.counts()
    ref = by_hand(embedded_unet, SCHEDULERS["DPMSolverMultistepScheduler"](scheduler_config), plan)
    assert maxdiff(x, ref) <= 1e-6


def test_ddim_drop_equals_reuse_with_steps_offset(tiny_sd):
    """SD-style DDIM (steps_offset=1, set_alpha_to_one=False, CFG): dropping NULL steps == reusing the output."""
    pipe = tiny_sd
    assert pipe.scheduler.config.steps_offset == 1 and not pipe.scheduler.config.set_alpha_to_one
    pe, ne = pipe.encode_prompt("abc", torch.device("cpu"), 1, True, "")
    cond = Conditioning(prompt_embeds=pe, negative_prompt_embeds=ne, guidance_scale=7.5)
    outs = {}
    for mode in ("drop", "reuse"):
        outs[mode] = sample(pipe.unet, DDIMScheduler.from_config(pipe.scheduler.config), T, (1, 4, 8, 8),
                            plan=uniform_plan("DDIMScheduler", mode), generator=gen(0), cond=cond)
    assert maxdiff(outs["drop"], outs["reuse"]) <= 1e-4


def test_drop_keeps_fractional_timesteps(embedded_unet, scheduler_config):
    """Euler's linspace schedule for T=6 has fractional timesteps (799.2, ...): drop mode must keep them exact."""
    from diffusers import EulerDiscreteScheduler

    sched = EulerDiscreteScheduler.from_config(scheduler_config)
    sched.set_timesteps(6)
    assert sched.timesteps[1].item() != int(sched.timesteps[1].item())
    plan = Plan.step_reduction("EulerDiscreteScheduler", 6, 3, "drop")
    c = StepCounter()
    x = sample(embedded_unet, EulerDiscreteScheduler.from_config(scheduler_config), 6, SHAPE, plan=plan,
               generator=gen(0), counter=c)
    assert c.as_dict() == plan.counts() == {"full": 3, "partial": {}, "null": 3}
    kept = [t.item() for t in sched.timesteps[::2]]
    sched.set_timesteps(timesteps=kept)
    ref = torch.randn(SHAPE, generator=gen(0)) * sched.init_noise_sigma
    with torch.no_grad():
        for t in sched.timesteps:
            ref = sched.step(embedded_unet(sched.scale_model_input(ref, t), t).sample, t, ref).prev_sample
    assert maxdiff(x, ref) <= 1e-4 * ref.abs().max().item()
    # a plan with PARTIAL steps runs too
    plan = Plan("EulerDiscreteScheduler", 6, (Segment(2, 1), Segment(1), Segment(1)), "drop")
    c = StepCounter()
    sample(embedded_unet, EulerDiscreteScheduler.from_config(scheduler_config), 6, SHAPE, plan=plan,
           generator=gen(0), counter=c)
    assert c.as_dict() == plan.counts()


def img2img_of(tiny_sd, scheduler_name: str):
    import diffusers

    pipe = diffusers.StableDiffusionImg2ImgPipeline(**tiny_sd.components)
    pipe.scheduler = getattr(diffusers, scheduler_name).from_config(tiny_sd.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_img2img(pipe, strength: float):
    image = torch.linspace(0, 1, 3 * 16 * 16).reshape(1, 3, 16, 16)
    return pipe("a cat", image=image, strength=strength, num_inference_steps=10, guidance_scale=3.0,
                generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.mark.parametrize("strength", [0.6, 1.0])
def test_img2img_drop_equals_reuse_and_counts_the_steps_it_runs(tiny_sd, strength):
    """Image-to-image starts inside the base schedule (strength 0.6: at step 4 of 10); the plan applies to
    the steps the pipeline runs, in both null modes, and the counter shows only those."""
    pipe = img2img_of(tiny_sd, "DDIMScheduler")
    out, counts = {}, {}
    for mode in ("drop", "reuse"):
        with flexnas.apply(pipe, Plan.step_reduction("DDIMScheduler", 10, 5, mode)) as ctl:
            out[mode] = run_img2img(pipe, strength)
        counts[mode] = ctl.counter.as_dict()
    assert abs(out["drop"] - out["reuse"]).max() <= 1e-4
    start = 10 - int(10 * strength)  # the pipeline's own t_start
    assert counts["drop"] == counts["reuse"] == {"full": (10 - start + 1) // 2, "partial": {}, "null": (10 - start) // 2}
    assert abs(out["drop"] - run_img2img(pipe, strength)).max() > 1e-3  # the plan changed the images


def test_img2img_drop_with_a_multistep_scheduler_is_refused(tiny_sd):
    pipe = img2img_of(tiny_sd, "DPMSolverMultistepScheduler")
    with flexnas.apply(pipe, Plan.step_reduction("DPMSolverMultistepScheduler", 10, 5, "drop")):
        with pytest.raises(FlexnasError, match="use null mode 'reuse'"):
            run_img2img(pipe, 0.6)
    with flexnas.apply(pipe, Plan.step_reduction("DPMSolverMultistepScheduler", 10, 5, "reuse")):
        assert np.isfinite(run_img2img(pipe, 0.6)).all()


# ----------------------------------------------------------------------------- every common scheduler
COMMON = {
    "DDIMScheduler": {}, "PNDMScheduler": {"skip_prk_steps": True}, "DPMSolverMultistepScheduler": {},
    "DPMSolverMultistepScheduler-sde": {"algorithm_type": "sde-dpmsolver++"}, "UniPCMultistepScheduler": {},
    "EulerDiscreteScheduler": {}, "EulerAncestralDiscreteScheduler": {}, "HeunDiscreteScheduler": {},
    "LCMScheduler": {},
}


@pytest.mark.parametrize("key", list(COMMON))
def test_every_common_scheduler_on_a_stock_pipeline(tiny_sd, key):
    """The teacher plan equals the stock Stable Diffusion call exactly; step reduction runs in every null mode
    the scheduler supports (and drop is refused in one line where it cannot), following the plan."""
    import diffusers

    name = key.split("-")[0]
    pipe = tiny_sd
    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **COMMON[key])
    steps = 6

    def call():
        return pipe("abc xyz", num_inference_steps=steps, guidance_scale=3.0, generator=gen(0),
                    output_type="latent").images

    stock = call()
    with flexnas.apply(pipe, Plan.teacher(name, steps)):
        assert maxdiff(call(), stock) == 0
    cannot_drop = name in ("PNDMScheduler", "UniPCMultistepScheduler", "EulerAncestralDiscreteScheduler")
    for mode in ("drop", "reuse"):
        plan = Plan.step_reduction(name, steps, 3, mode)  # F . F . F .
        if mode == "drop" and cannot_drop:  # no custom timesteps: refused in one line, before sampling
            with pytest.raises(FlexnasError, match="use null mode 'reuse'"):
                flexnas.apply(pipe, plan)
            continue
        with flexnas.apply(pipe, plan) as ctl:
            out = call()
        c = ctl.counter
        assert torch.isfinite(out).all() and maxdiff(out, stock) > 1e-4
        # Heun visits every timestep but the first twice (second order); PLMS visits its second step twice
        expected = {("HeunDiscreteScheduler", "drop"): (5, 3), ("HeunDiscreteScheduler", "reuse"): (5, 6),
                    ("PNDMScheduler", "reuse"): (3, 4)}.get((name, mode), (3, 3))
        assert (c.full, c.null) == expected and c.partial == {}
    assert maxdiff(call(), stock) == 0  # nothing of the plans stayed


@pytest.mark.parametrize("order", ["compile, then apply", "apply, then compile"])
def test_torch_compile_of_the_unet_works_in_either_order(embedded_unet, scheduler_config, order):
    """``pipe.unet = torch.compile(pipe.unet)`` before or after ``flexnas.apply`` gives the planned images
    (dynamo's graph-capturing backend here, to stay quick), and the stock ones again after removal."""
    def fresh():
        p = DDIMPipeline(embedded_unet, DDIMScheduler.from_config(scheduler_config))
        p.set_progress_bar_config(disable=True)
        return p

    def call(p):
        return p(batch_size=B, generator=gen(0), num_inference_steps=T, output_type="pt").images

    plan = mixed_plan("DDIMScheduler", "drop")
    pipe = fresh()
    stock = call(pipe)
    with flexnas.apply(pipe, plan):
        planned = call(pipe)
    pipe = fresh()
    if order.startswith("compile"):
        pipe.unet = torch.compile(pipe.unet, backend="eager")
        assert maxdiff(call(pipe), stock) == 0
    with flexnas.apply(pipe, plan) as ctl:
        if order.startswith("apply"):
            pipe.unet = torch.compile(pipe.unet, backend="eager")
        assert maxdiff(call(pipe), planned) == 0
        assert ctl.counter.as_dict() == plan.counts()
    assert maxdiff(call(pipe), stock) == 0


def test_half_precision_vae_with_force_upcast_decodes_in_float32():
    """SDXL's VAE overflows in fp16, so its config says ``force_upcast`` and the stock pipelines decode in
    float32: ``to_images`` does the same (equal to a float32 copy of the fp16 weights) and casts it back."""
    import copy

    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8,
                        sample_size=16, force_upcast=True).eval()
    torch.nn.Module.to(vae, torch.float16)
    z = torch.randn(2, 4, 8, 8).half()
    ref_vae = torch.nn.Module.to(copy.deepcopy(vae), torch.float32)
    with torch.no_grad():
        ref = (ref_vae.decode(z.float() / ref_vae.config.scaling_factor, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    out = to_images(z, vae)
    assert out.dtype == torch.float32 and torch.equal(out, ref) and vae.dtype == torch.float16
