"""Problems with image inputs: image-to-image (``--input-images``, ``--strength``), inpainting (also
``--mask-images``) and ControlNet (``--control-images``) pipelines, searched through their own stock
call (tiny, offline)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli
from PIL import Image
from tiny_models import EXTRACTOR, tiny_controlnet

from flexnas.engine.steps import first_step
from flexnas.metrics.evaluator import Evaluator
from flexnas.metrics.macs import count_controlnet
from flexnas.models.registry import get_problem
from flexnas.plan.plan import Plan

PROMPTS = ["abc", "xyz cat"]


pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_sd_folder):
    """Saved tiny image-to-image, inpainting (9-channel U-Net) and ControlNet pipelines (and that
    ControlNet alone), a folder of init images (not at the model's size: they are resized), one of
    masks (white: repaint), one of control images, and a prompt file."""
    from diffusers import (StableDiffusionControlNetPipeline, StableDiffusionImg2ImgPipeline,
                           StableDiffusionInpaintPipeline, StableDiffusionPipeline, UNet2DConditionModel)

    root = tmp_path_factory.mktemp("image-inputs")
    sd = StableDiffusionPipeline.from_pretrained(tiny_sd_folder, local_files_only=True)
    StableDiffusionImg2ImgPipeline(**sd.components).save_pretrained(root / "img2img")
    torch.manual_seed(1)
    unet9 = UNet2DConditionModel.from_config({**sd.unet.config, "in_channels": 9})
    StableDiffusionInpaintPipeline(**{**sd.components, "unet": unet9}).save_pretrained(root / "inpaint")
    (root / "masks").mkdir()
    for i, box in enumerate([(4, 4, 12, 12), (0, 8, 16, 16)]):
        mask = np.zeros((16, 16, 3), dtype=np.uint8)
        mask[box[1]:box[3], box[0]:box[2]] = 255
        Image.fromarray(mask).save(root / "masks" / f"{i}.png")
    net = tiny_controlnet(sd.unet)
    net.save_pretrained(root / "controlnet-alone")
    StableDiffusionControlNetPipeline(**sd.components, controlnet=net).save_pretrained(root / "controlnet")
    rng = np.random.default_rng(0)
    for name, size in (("inits", (24, 20)), ("controls", (16, 16))):
        (root / name).mkdir()
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    return root


def images_of(folder, n, size=(16, 16)):
    files = sorted(folder.iterdir())
    return [Image.open(files[i % len(files)]).convert("RGB").resize(size, Image.BICUBIC) for i in range(n)]


def problem(folders, which, **kw):
    inputs = {"img2img": dict(input_images=str(folders / "inits"), strength=0.6),
              "inpaint": dict(input_images=str(folders / "inits"), mask_images=str(folders / "masks")),
              "controlnet": dict(control_images=str(folders / "controls"))}[which]
    return get_problem(str(folders / which), scheduler="DDIMScheduler", T=10, num_images=4, batch_size=2,
                       guidance_scale=3.0, prompts=str(folders / "prompts.txt"), **{**inputs, **kw})


def stock(folders, which, batch: int, plan: Plan | None = None):
    """The stock pipeline's latents for batch ``batch`` of 2 images (seed 0 + batch), as a user calls it."""
    import diffusers
    from diffusers import DDIMScheduler

    import flexnas

    pipe = diffusers.DiffusionPipeline.from_pretrained(folders / which, local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = [PROMPTS[i % 2] for i in range(2 * batch, 2 * batch + 2)]
    mine = lambda folder: images_of(folders / folder, 2 * batch + 2)[2 * batch:]  # noqa: E731
    kw = {"img2img": lambda: {"image": mine("inits"), "strength": 0.6},
          "inpaint": lambda: {"image": mine("inits"), "mask_image": mine("masks")},  # the stock strength, 1.0
          "controlnet": lambda: {"image": mine("controls")}}[which]()
    call = lambda: pipe(prompts, **kw, num_inference_steps=10, guidance_scale=3.0, output_type="latent",  # noqa: E731
                        generator=torch.Generator("cpu").manual_seed(batch)).images
    if plan is None:
        return call()
    with flexnas.apply(pipe, plan):
        return call()


@pytest.mark.parametrize("which", ["img2img", "inpaint", "controlnet"])
def test_teacher_and_plans_are_the_stock_call(folders, which):
    """The teacher plan gives the stock pipeline's latents exactly, and a DeepCache plan the stock
    pipeline's under flexnas.apply, for every batch (each with its own seed)."""
    loaded = problem(folders, which).load()
    assert torch.equal(loaded.latents(None), torch.cat([stock(folders, which, b) for b in (0, 1)]))
    plan = Plan.deepcache("DDIMScheduler", 10, 5, 1)
    planned = loaded.latents(plan)
    assert torch.equal(planned, torch.cat([stock(folders, which, b, plan) for b in (0, 1)]))
    assert (planned - loaded.latents(None)).abs().max() > 1e-4


@pytest.mark.parametrize("plan, counts", [
    (Plan.deepcache("DDIMScheduler", 10, 2, 0), {"full": 3, "partial": {0: 3}, "null": 0}),  # steps 4..9: F p0 x3
    # F p1 p1 p1 p1 F p1 ..: the pipeline starts at step 4, a PARTIAL step with nothing cached: it runs FULL
    (Plan.deepcache("DDIMScheduler", 10, 5, 1), {"full": 2, "partial": {1: 4}, "null": 0}),
    # F . . . . F . . . . in reuse mode: step 4 has no output to reuse yet and runs FULL
    (Plan.step_reduction("DDIMScheduler", 10, 2, "reuse"), {"full": 2, "partial": {}, "null": 4}),
    (Plan.step_reduction("DDIMScheduler", 10, 2, "drop"), {"full": 1, "partial": {}, "null": 5}),
])
def test_img2img_runs_and_counts_only_the_steps_after_strength(folders, plan, counts):
    """At strength 0.6 of 10 steps the pipeline runs steps 4..9; what runs is what the MACs count."""
    from flexnas.engine.steps import StepCounter

    loaded = problem(folders, "img2img").load()
    assert first_step(10, 0.6) == 4
    counter = StepCounter()
    loaded.latents(plan, n=2, counter=counter)
    assert counter.as_dict() == counts
    macs = Evaluator(loaded, images=2, extractor=EXTRACTOR).macs
    ran = counts["full"] * macs.full + sum(n * macs.partial[b] for b, n in counts["partial"].items())
    assert macs.plan_macs(plan) == 2 * ran  # guidance doubles the batch
    assert macs.ratio(plan) == pytest.approx(ran / (6 * macs.full))


def test_img2img_null_modes_agree(folders):
    loaded = problem(folders, "img2img").load()
    out = {mode: loaded.latents(Plan.step_reduction("DDIMScheduler", 10, 5, mode), n=2) for mode in ("drop", "reuse")}
    assert (out["drop"] - out["reuse"]).abs().max() <= 1e-4


def test_inpainting_macs_and_identity(folders):
    """The 9-channel U-Net is counted on its own input (latents, mask, masked image) and the decode on
    the 4 channels it denoises; the masks are part of the evaluation identity."""
    from flexnas.metrics.macs import count_decode, count_unet

    loaded = problem(folders, "inpaint").load()
    assert loaded.sample_shape[0] == 9 and loaded.problem.inputs.strength == 1.0
    macs = Evaluator(loaded, images=2, extractor=EXTRACTOR).macs
    kw = loaded.conditioning(0, 1)
    kw.guidance_scale = 1.0
    assert macs.full == count_unet(loaded.unet, loaded.sample_shape, kw.unet_kwargs())[0]
    assert macs.decode == count_decode(loaded.vae, (4, *loaded.sample_shape[1:]))
    a = Evaluator(problem(folders, "inpaint"), images=2, extractor=EXTRACTOR)
    b = Evaluator(problem(folders, "inpaint", mask_images=str(folders / "controls")), images=2, extractor=EXTRACTOR)
    assert a.identity() != b.identity()


def test_controlnet_macs_are_counted_and_identity_covers_it(folders):
    loaded = problem(folders, "controlnet").load()
    macs = Evaluator(loaded, images=2, extractor=EXTRACTOR).macs
    kw = loaded.conditioning(0, 1)
    kw.guidance_scale = 1.0
    assert macs.controlnet == count_controlnet(loaded.controlnet, loaded.sample_shape, (3, 16, 16), kw.unet_kwargs())
    assert macs.controlnet > 0 and macs.step_macs(Plan.teacher("DDIMScheduler", 1).steps[0].kind) == \
        2 * (macs.full + macs.controlnet)
    other = problem(folders, "controlnet").load()
    with torch.no_grad():
        other.controlnet.conv_in.bias[0] += 1e-3
    other._identity = None
    assert other.identity != loaded.identity


def test_controlnet_added_to_a_text_to_image_pipeline(folders, tiny_sd_folder):
    """``--problem sd15-controlnet --model SD --controlnet NET``: the SD pipeline with that ControlNet is
    the same model as the saved ControlNet pipeline, and samples the same latents."""
    composed = get_problem("sd15-controlnet", model=str(tiny_sd_folder), controlnet=str(folders / "controlnet-alone"),
                           control_images=str(folders / "controls"), scheduler="DDIMScheduler", T=10, num_images=2,
                           batch_size=2, guidance_scale=3.0, prompts=str(folders / "prompts.txt"), device="cpu").load()
    saved = problem(folders, "controlnet").load()
    assert type(composed.pipeline).__name__ == "StableDiffusionControlNetPipeline"
    assert composed.identity == saved.identity
    assert torch.equal(composed.latents(None, n=2), saved.latents(None, n=2))


def test_inputs_are_part_of_the_evaluation_identity(folders, tmp_path):
    a = Evaluator(problem(folders, "img2img"), images=2, extractor=EXTRACTOR)
    b = Evaluator(problem(folders, "img2img", strength=0.8), images=2, extractor=EXTRACTOR)
    assert a.identity() != b.identity()


@pytest.mark.parametrize("which", ["img2img", "inpaint", "controlnet"])
def test_search_from_the_cli(folders, tmp_path, capsys, which):
    out = tmp_path / "run"
    inputs = {"img2img": ["--input-images", str(folders / "inits"), "--strength", "0.6"],
              "inpaint": ["--input-images", str(folders / "inits"), "--mask-images", str(folders / "masks")],
              "controlnet": ["--control-images", str(folders / "controls")]}[which]
    rc, stdout, err = run_cli(capsys, "search", "--model", str(folders / which), *inputs, "--scheduler", "DDIMScheduler",
                          "--steps", "10", "--images", "4", "--batch-size", "2", "--pop", "4", "--gens", "2",
                          "--prompts", str(folders / "prompts.txt"), "--extractor", EXTRACTOR, "--wall-images", "0",
                          "--grid-images", "2", "--choose", "2", "--quiet", "--device", "cpu", "--out", str(out))
    assert rc == 0, err
    records = json.loads((out / "candidates.json").read_text())
    assert len(records) >= 4 and all(0 < r["macs_ratio"] <= 1 for r in records)
    meta = json.loads((out / "run.json").read_text())
    assert meta["space"]["start"] == {"img2img": 4, "inpaint": 0, "controlnet": 0}[which]  # strength 0.6 of 10 steps
    overrides = meta["config"]["overrides"]
    for key, folder in {"img2img": [("input_images", "inits")], "inpaint": [("input_images", "inits"),
                        ("mask_images", "masks")], "controlnet": [("control_images", "controls")]}[which]:
        assert overrides[key] == str((folders / folder).resolve())


@pytest.mark.parametrize("which, extra, message", [
    ("img2img", ["--input-images", "INITS", "--strength", "0"], "--strength must be in (0, 1]"),
    ("img2img", [], "transforms input images: give --input-images FOLDER"),
    ("img2img", ["--input-images", "MISSING"], "is not a folder"),
    ("img2img", ["--input-images", "EMPTY"], "holds no images"),
    ("controlnet", [], "is conditioned on control images: give --control-images FOLDER"),
    ("controlnet", ["--input-images", "INITS"], "is not an image-to-image pipeline"),
    ("img2img", ["--input-images", "INITS", "--control-images", "INITS"], "has no ControlNet"),
    ("controlnet", ["--control-images", "INITS", "--controlnet", "INITS"], "--controlnet adds a ControlNet to"),
    ("inpaint", ["--input-images", "INITS"], "inpaints: give --mask-images FOLDER"),
    ("img2img", ["--input-images", "INITS", "--mask-images", "INITS"], "is not an inpainting pipeline"),
    ("inpaint", ["--mask-images", "INITS"], "--mask-images applies to image-to-image and inpainting"),
])
def test_bad_inputs_are_one_line(folders, tmp_path, capsys, which, extra, message):
    (tmp_path / "empty").mkdir()
    paths = {"INITS": str(folders / "inits"), "MISSING": str(tmp_path / "missing"), "EMPTY": str(tmp_path / "empty")}
    out = tmp_path / "run"
    rc, _, err = run_cli(capsys, "search", "--model", str(folders / which), *[paths.get(a, a) for a in extra],
                     "--steps", "10", "--images", "2", "--pop", "2", "--gens", "1", "--extractor", EXTRACTOR,
                     "--quiet", "--device", "cpu", "--out", str(out))
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert message in err and not out.exists()
