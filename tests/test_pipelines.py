"""flexnas.apply on the pipelines users run beyond text-to-image: inpainting, ControlNet, LoRA, SDXL (tiny, offline)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from tiny_models import save_tiny_sdxl, tiny_controlnet

import flexnas
from flexnas.engine.steps import executed_steps, first_step
from flexnas.errors import FlexnasError
from flexnas.plan.plan import Plan

STEPS = 10


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def image(channels: int = 3) -> torch.Tensor:
    return torch.linspace(0, 1, channels * 16 * 16).reshape(1, channels, 16, 16)


@pytest.fixture
def inpaint(tiny_sd):
    """StableDiffusionInpaintPipeline on the tiny components with a 9-channel U-Net (latents, mask, masked image)."""
    from diffusers import StableDiffusionInpaintPipeline, UNet2DConditionModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel.from_config({**tiny_sd.unet.config, "in_channels": 9}).eval()
    pipe = StableDiffusionInpaintPipeline(**{**tiny_sd.components, "unet": unet})
    pipe.set_progress_bar_config(disable=True)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1

    def call(strength: float = 1.0):
        return pipe("abc xyz", image=image(), mask_image=mask, strength=strength, num_inference_steps=STEPS,
                    guidance_scale=3.0, generator=gen(), output_type="np").images

    return pipe, call


@pytest.fixture
def controlnet(tiny_sd):
    """StableDiffusionControlNetPipeline with a ControlNet made from the tiny U-Net."""
    from diffusers import StableDiffusionControlNetPipeline

    pipe = StableDiffusionControlNetPipeline(**tiny_sd.components, controlnet=tiny_controlnet(tiny_sd.unet))
    pipe.set_progress_bar_config(disable=True)

    def call(cond_scale: float = 1.0):
        return pipe("abc xyz", image=image(), num_inference_steps=STEPS, guidance_scale=3.0, generator=gen(),
                    controlnet_conditioning_scale=cond_scale, output_type="np").images

    return pipe, call


@pytest.mark.parametrize("which", ["inpaint", "controlnet"])
def test_teacher_is_the_stock_call_and_plans_agree_across_null_modes(request, which):
    pipe, call = request.getfixturevalue(which)
    stock = call()
    with flexnas.apply(pipe, Plan.teacher("DDIMScheduler", STEPS)):
        assert abs(call() - stock).max() == 0
    outs = {}
    for mode in ("drop", "reuse"):
        plan = Plan.uniform("DDIMScheduler", STEPS, 2, 3, 2, mode)  # F p2 p2 . . F p2 p2 . .
        with flexnas.apply(pipe, plan) as ctl:
            outs[mode] = call()
        assert ctl.counter.as_dict() == plan.counts()
    assert abs(outs["drop"] - outs["reuse"]).max() <= 1e-4
    assert abs(outs["drop"] - stock).max() > 1e-4
    assert abs(call() - stock).max() == 0


def test_inpainting_at_partial_strength_follows_the_plan(inpaint):
    pipe, call = inpaint
    outs = {}
    for mode in ("drop", "reuse"):
        with flexnas.apply(pipe, Plan.step_reduction("DDIMScheduler", STEPS, 5, mode)) as ctl:
            outs[mode] = call(0.6)
        assert ctl.counter.as_dict() == {"full": 3, "partial": {}, "null": 3}  # steps 4..9 of 10
    assert abs(outs["drop"] - outs["reuse"]).max() <= 1e-4


def test_controlnet_residuals_reach_fresh_and_cached_skips(controlnet):
    """The ControlNet's residuals change the planned images (added to the fresh shallow skips at
    PARTIAL steps, and through the cached deep features to every later step)."""
    pipe, call = controlnet
    plan = Plan.deepcache("DDIMScheduler", STEPS, 5, 1)
    with flexnas.apply(pipe, plan):
        with_control, without = call(1.0), call(0.0)
    assert abs(with_control - without).max() > 1e-4


def add_lora(pipe):
    """``pipe`` with a random (non-zero) LoRA on its U-Net's attention, through diffusers' PEFT integration."""
    pytest.importorskip("peft")
    from peft import LoraConfig

    torch.manual_seed(3)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                     target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    return pipe


@pytest.mark.parametrize("fused", [False, True])
def test_lora_loaded_through_peft(tiny_sd, tmp_path, fused):
    """A LoRA saved and loaded with diffusers' PEFT integration (fused into the weights or not): the teacher
    plan is the stock call exactly, a DeepCache plan runs in both null modes alike, and the LoRA matters."""
    from peft.utils import get_peft_model_state_dict

    pipe = add_lora(tiny_sd)
    pipe.save_lora_weights(tmp_path, unet_lora_layers=get_peft_model_state_dict(pipe.unet), safe_serialization=True)
    pipe.unet.delete_adapters("default")

    def call():
        return pipe("abc xyz", num_inference_steps=STEPS, guidance_scale=3.0, generator=gen(),
                    output_type="np").images

    base = call()
    pipe.load_lora_weights(tmp_path, adapter_name="style")
    if fused:
        pipe.fuse_lora()
    stock = call()
    assert abs(stock - base).max() > 1e-4  # the LoRA changes the images
    with flexnas.apply(pipe, Plan.teacher("DDIMScheduler", STEPS)):
        assert abs(call() - stock).max() == 0
    outs = {}
    for mode in ("drop", "reuse"):
        with flexnas.apply(pipe, Plan.uniform("DDIMScheduler", STEPS, 2, 3, 1, mode)):
            outs[mode] = call()
    assert abs(outs["drop"] - outs["reuse"]).max() <= 1e-4 and abs(outs["drop"] - stock).max() > 1e-4


@pytest.fixture
def sdxl(tiny_sd, tmp_path):
    """A tiny StableDiffusionXLPipeline (two text encoders, added time/text conditioning), saved and reloaded."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    save_tiny_sdxl(tmp_path / "sdxl", tiny_sd)
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "sdxl", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)

    def call(strength: float | None = None):
        kw = dict(num_inference_steps=STEPS, guidance_scale=3.0, generator=gen(), output_type="np")
        if strength is None:
            return pipe("abc xyz", **kw).images
        return img2img("abc xyz", image=image(), strength=strength, **kw).images

    return pipe, call


def test_sdxl_text_and_image_to_image(sdxl):
    pipe, call = sdxl
    for strength in (None, 0.6):
        stock = call(strength)
        with flexnas.apply(pipe, Plan.teacher("DDIMScheduler", STEPS)):
            assert abs(call(strength) - stock).max() == 0
        outs = {}
        for mode in ("drop", "reuse"):  # F . F . F ...: at strength 0.6 the pipeline starts at step 4 (FULL)
            with flexnas.apply(pipe, Plan.uniform("DDIMScheduler", STEPS, 5, 1, None, mode)):
                outs[mode] = call(strength)
        assert abs(outs["drop"] - outs["reuse"]).max() <= 1e-4 and abs(outs["drop"] - stock).max() > 1e-4
    plan = Plan.uniform("DDIMScheduler", STEPS, 2, 3, 2, "reuse")  # F p2 p2 . . x2: step 4 is NULL
    with flexnas.apply(pipe, plan) as ctl:  # with no output to reuse yet, it runs FULL
        call(0.6)
    assert ctl.counter.as_dict() == {"full": 2, "partial": {2: 2}, "null": 2}
    assert [s.symbol() for s in executed_steps(plan, first_step(STEPS, 0.6))] == "F F p2 p2 . .".split()


@pytest.mark.parametrize("which, strength", [("inpaint", 1.0), ("inpaint", 0.6), ("controlnet", None), ("sdxl", None),
                                             ("sdxl", 0.6), ("lora", None)])
def test_plans_run_the_deep_blocks_less(request, count_calls, tiny_sd, which, strength):
    """Counted by torch forward hooks on stock modules: the mid block and deepest up block run at FULL
    steps only, the outer convolution at every network step; at strength 0.6 only steps 4..9 run."""
    if which == "lora":
        pipe = add_lora(tiny_sd)
        call = lambda: pipe("abc xyz", num_inference_steps=STEPS, guidance_scale=3.0, generator=gen())  # noqa: E731
    else:
        pipe, call = request.getfixturevalue(which)
    unet = pipe.unet
    counts = count_calls({"conv_in": unet.conv_in, "mid": unet.mid_block.resnets[0].conv1,
                          "deepest_up": unet.up_blocks[0].resnets[0].conv1})
    args = () if strength is None else (strength,)
    plan = Plan.uniform("DDIMScheduler", STEPS, 2, 3, 0, "drop")  # F p0 p0 . . F p0 p0 . .
    with flexnas.apply(pipe, plan):
        call(*args)
    full_only = {"conv_in": 6, "mid": 2, "deepest_up": 2} if strength in (None, 1.0) else \
        {"conv_in": 3, "mid": 1, "deepest_up": 1}  # steps 4..9: . F p0 p0 . .
    assert counts == full_only
    for k in counts:
        counts[k] = 0
    call(*args)
    assert counts == dict.fromkeys(counts, STEPS if strength in (None, 1.0) else 6)


@pytest.mark.parametrize("which", ["inpaint", "controlnet", "sdxl"])
@pytest.mark.parametrize("interval,branch", [(5, 0), (2, 1)])
def test_deepcache_plan_equals_the_deepcache_helper(request, which, interval, branch):
    """``Plan.deepcache`` on the stock pipeline gives the images of the ``DeepCache`` package's own helper
    (``DeepCacheSDHelper``, uniform mode) at the same interval and branch: two independent implementations."""
    helper_module = pytest.importorskip("DeepCache")
    pipe, call = request.getfixturevalue(which)
    helper = helper_module.DeepCacheSDHelper(pipe=pipe)
    helper.set_params(cache_interval=interval, cache_branch_id=branch)
    helper.enable()
    try:
        theirs = call()
    finally:
        helper.disable()
    with flexnas.apply(pipe, Plan.deepcache("DDIMScheduler", STEPS, interval, branch)) as ctl:
        ours = call()
    assert ctl.counter.partial[branch] > 0
    assert abs(ours - theirs).max() <= 1e-5
    assert abs(ours - call()).max() > 1e-4  # the stock call differs: partial steps were taken


def test_controlnet_runs_only_where_its_residuals_are_used(controlnet):
    """NULL steps skip the ControlNet without changing the images (checked against the same plan with the
    ControlNet run at every step); a plan with ``controlnet_reuse`` also skips it at PARTIAL steps (its own
    feature-store key, its JSON field); plan MACs count its
    runs, which a forward hook on its stock ``conv_in`` counts independently."""
    from diffusers.hooks import HookRegistry

    from flexnas.engine.controller import HOOK_NAME
    from flexnas.metrics.macs import MacCounter
    from flexnas.metrics.store import plan_key

    pipe, call = controlnet
    runs = []
    pipe.controlnet.conv_in.register_forward_hook(lambda *_: runs.append(1))  # fires only when it really runs
    plan = Plan.uniform("DDIMScheduler", STEPS, 2, 3, 1, "drop")  # F p1 p1 . . F p1 p1 . .
    with flexnas.apply(pipe, plan) as ctl:
        runs.clear()
        skipped = call()
        assert len(runs) == ctl.controlnet.calls == 6  # 2 FULL + 4 PARTIAL; guidance batches both halves
        HookRegistry.check_if_exists_or_initialize(pipe.controlnet).remove_hook(HOOK_NAME, recurse=False)
        runs.clear()
        every_step = call()
        assert len(runs) == STEPS
    assert abs(skipped - every_step).max() == 0
    counter = MacCounter(full=1000, partial={1: 300}, cfg_factor=2, controlnet=200)
    assert counter.plan_macs(plan) == 2 * (2 * 1000 + 4 * 300 + 6 * 200)
    reuse = replace(plan, controlnet_reuse=True)
    assert Plan.from_json(reuse.to_json()) == reuse != plan and "controlnet_reuse" not in plan.to_dict()
    assert plan_key(reuse) != plan_key(plan)
    with flexnas.apply(pipe, reuse) as ctl:
        runs.clear()
        reused = call()
        assert len(runs) == ctl.controlnet.calls == 2
    assert abs(reused - skipped).max() > 1e-4
    assert counter.plan_macs(reuse) == 2 * (2 * 1000 + 4 * 300 + 2 * 200)
    stock = call()
    with flexnas.apply(pipe, replace(Plan.teacher("DDIMScheduler", STEPS), controlnet_reuse=True)):
        assert abs(call() - stock).max() == 0  # every step FULL: nothing is reused
    with pytest.raises(FlexnasError, match="has no ControlNet"):
        flexnas.apply(_NoControlNet(pipe), reuse)
    with pytest.raises(FlexnasError, match="controlnet_reuse must be true or false"):
        Plan.from_dict({**plan.to_dict(), "controlnet_reuse": "yes"})


class _NoControlNet:
    def __init__(self, pipe):
        self.unet, self.scheduler = pipe.unet, pipe.scheduler


def test_controlnet_macs_are_counted_with_fvcore(controlnet):
    """``count_controlnet`` traces the ControlNet as the pipeline calls it; a ControlNet made from the U-Net
    (its down path and mid block, plus the conditioning embedding) costs less than the whole U-Net."""
    from flexnas.metrics.macs import count_controlnet, count_unet

    pipe, _ = controlnet
    hidden = torch.zeros(1, 77, pipe.unet.config.cross_attention_dim)
    macs = count_controlnet(pipe.controlnet, (4, 8, 8), (3, 16, 16), {"encoder_hidden_states": hidden})
    full, _ = count_unet(pipe.unet, (4, 8, 8), {"encoder_hidden_states": hidden})
    assert 0 < macs < full


def test_guidance_rescale(tiny_sd):
    """Classifier-free guidance with ``guidance_rescale`` (the pipeline rescales the guided noise prediction
    after the U-Net): the teacher plan is the stock call, a plan with PARTIAL and NULL steps agrees across
    null modes, and the rescale matters."""
    pipe = tiny_sd

    def call(rescale: float):
        return pipe("abc xyz", num_inference_steps=STEPS, guidance_scale=5.0, guidance_rescale=rescale,
                    generator=gen(), output_type="np").images

    stock = call(0.7)
    assert abs(stock - call(0.0)).max() > 1e-4
    with flexnas.apply(pipe, Plan.teacher("DDIMScheduler", STEPS)):
        assert abs(call(0.7) - stock).max() == 0
    outs = {}
    for mode in ("drop", "reuse"):
        with flexnas.apply(pipe, Plan.uniform("DDIMScheduler", STEPS, 2, 3, 1, mode)):
            outs[mode] = call(0.7)
    assert abs(outs["drop"] - outs["reuse"]).max() <= 1e-4 and abs(outs["drop"] - stock).max() > 1e-4
