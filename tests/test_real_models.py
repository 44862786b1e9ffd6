"""Real-model problems (DDPM CIFAR-10, LDM CelebA-HQ, Stable Diffusion 1.5) and `--model` on any pipeline.

Each layout is a tiny randomly initialised pipeline of the same diffusers classes (tests/tiny_models.py,
and conftest's tiny Stable Diffusion), saved with ``save_pretrained`` and loaded through the problem by
path: defaults, the all-FULL plan against the stock pipeline, a two-generation search from the CLI,
device / dtype handling, decode MACs, CLIP score and one-line errors. Offline; rFID uses a small
test-only feature extractor registered here (Inception weights are not available).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import assert_grid_of, run_cli, write_tiny_clip_tokenizer
from tiny_models import EXTRACTOR, save_tiny_clip, save_tiny_ddpm, save_tiny_dit, save_tiny_ldm, save_tiny_sdxl

from flexnas.errors import FlexnasError
from flexnas.models.registry import get_problem
from flexnas.plan.plan import Plan

PROMPTS = ["abc", "xyz cat", "a b c", "cat xyz abc"]


pytestmark = pytest.mark.usefixtures("offline")


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_sd_folder):
    """name -> saved tiny pipeline folder, plus prompt files and a CLIP folder."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("real-models")
    try:
        d = {"ddpm": save_tiny_ddpm(root / "ddpm-cifar10-32"), "ldm": save_tiny_ldm(root / "ldm-celebahq-256"),
             "sd": Path(tiny_sd_folder), "dit": save_tiny_dit(root / "dit")}
        d["clip"] = save_tiny_clip(root / "clip", write_tiny_clip_tokenizer(root / "clip-tokenizer"))
        from diffusers import StableDiffusionPipeline

        d["sdxl"] = save_tiny_sdxl(root / "sdxl", StableDiffusionPipeline.from_pretrained(tiny_sd_folder))
    finally:
        torch.set_num_threads(old)
    (root / "prompts.txt").write_text("# test prompts\n" + "\n".join(PROMPTS) + "\n\n")
    (root / "prompts.json").write_text(json.dumps([{"caption": p} for p in PROMPTS]))
    d["prompts_txt"], d["prompts_json"] = root / "prompts.txt", root / "prompts.json"
    return d


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


# ----------------------------------------------------------------------------- 1. defaults by layout
@pytest.mark.parametrize("spec, key, expect", [
    (None, "ddpm", dict(scheduler="DDIMScheduler", T=100, null_mode="drop", guidance_scale=1.0, prompts=None)),
    (None, "ldm", dict(scheduler="DDIMScheduler", T=250, null_mode="drop", guidance_scale=1.0, prompts=None)),
    (None, "sd", dict(scheduler="PNDMScheduler", scheduler_kwargs={"skip_prk_steps": True}, T=50, null_mode="reuse",
                      guidance_scale=7.5)),
    ("ddpm-cifar10", "ddpm", dict(name="ddpm-cifar10", scheduler="DDIMScheduler", T=100, num_images=1000)),
    ("ldm-celebahq", "ldm", dict(name="ldm-celebahq", scheduler="DDIMScheduler", T=250)),
    ("sd15", "sd", dict(name="sd15", scheduler="PNDMScheduler", T=50, null_mode="reuse", guidance_scale=7.5)),
    (None, "sdxl", dict(scheduler="EulerDiscreteScheduler", T=50, null_mode="drop", guidance_scale=5.0)),
    ("sdxl", "sdxl", dict(name="sdxl", scheduler="EulerDiscreteScheduler", T=50, batch_size=8)),
])
def test_defaults_from_pipeline_class_and_named_problems(folders, spec, key, expect):
    problem = get_problem(str(folders[key])) if spec is None else get_problem(spec, model=str(folders[key]))
    for k, v in expect.items():
        assert getattr(problem, k) == v, k
    if key in ("sd", "sdxl"):  # the shipped MS-COCO-style prompt list
        assert len(problem.prompts) == 64 and problem.encode_prompts is not None
    assert str(folders[key].resolve()) in problem.description


def test_overrides_and_prompt_files(folders):
    sd = str(folders["sd"])
    p = get_problem(sd, scheduler="DDIMScheduler", T=20, guidance_scale=3.0, prompts=str(folders["prompts_json"]))
    assert (p.scheduler, p.scheduler_kwargs, p.T, p.null_mode, p.guidance_scale) == \
        ("DDIMScheduler", {}, 20, "drop", 3.0)
    assert p.prompts == PROMPTS
    assert get_problem(sd, prompts=str(folders["prompts_txt"])).prompts == PROMPTS
    coco = folders["prompts_txt"].parent / "coco.json"
    coco.write_text(json.dumps({"annotations": [{"image_id": 1, "caption": "a cat"}, {"caption": "a dog"}]}))
    assert get_problem(sd, prompts=str(coco)).prompts == ["a cat", "a dog"]
    assert get_problem(sd, scheduler="DPMSolverMultistepScheduler").null_mode == "drop"  # takes custom timesteps
    empty = folders["prompts_txt"].parent / "empty.txt"
    empty.write_text("# nothing\n\n")
    with pytest.raises(FlexnasError, match="holds no prompts"):
        get_problem(sd, prompts=str(empty))
    with pytest.raises(FlexnasError, match="not a text-to-image pipeline"):
        get_problem(str(folders["ddpm"]), prompts=str(folders["prompts_txt"]))
    with pytest.raises(FlexnasError, match="not text-to-image"):
        get_problem("fashion-mnist", prompts=str(folders["prompts_txt"]))


# ----------------------------------------------------------------------------- 2. teacher == stock pipeline
def test_ddpm_teacher_equals_stock_pipeline(folders):
    from diffusers import DDIMScheduler, DDPMPipeline

    problem = get_problem("ddpm-cifar10", model=str(folders["ddpm"]), T=10, num_images=3, batch_size=3, device="cpu")
    ours = problem.load().images(None)
    pipe = DDPMPipeline.from_pretrained(folders["ddpm"], local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(batch_size=3, generator=torch.Generator("cpu").manual_seed(0), num_inference_steps=10,
                 output_type="pt").images
    assert ours.shape == (3, 3, 16, 16) and maxdiff(ours, stock) <= 1e-5


def test_ldm_teacher_equals_stock_pipeline_including_vq_decode(folders):
    from diffusers import LDMPipeline

    problem = get_problem("ldm-celebahq", model=str(folders["ldm"]), T=10, num_images=3, batch_size=3)
    loaded = problem.load()
    assert loaded.vae.config.scaling_factor == 0.5 and loaded.sample_shape == (3, 8, 8)
    ours = loaded.images(None)
    pipe = LDMPipeline.from_pretrained(folders["ldm"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(batch_size=3, generator=torch.Generator("cpu").manual_seed(0), num_inference_steps=10,
                 output_type="np").images
    assert ours.shape == (3, 3, 16, 16)
    stock = torch.from_numpy(stock).permute(0, 3, 1, 2)
    assert maxdiff(ours, stock) <= 1e-5
    # the check is sharp: skipping the scaling or the quantisation of LDMPipeline's decode changes the images
    latents = loaded.latents(None)
    with torch.no_grad():
        unscaled = loaded.vae.decode(latents, return_dict=False)[0]
        unquantised = loaded.vae.decode(latents / 0.5, force_not_quantize=True, return_dict=False)[0]
    assert maxdiff((unscaled / 2 + 0.5).clamp(0, 1), stock) > 1e-5
    assert maxdiff((unquantised / 2 + 0.5).clamp(0, 1), stock) > 1e-5  # beyond the tolerance of the equality above


def test_sd_teacher_equals_stock_pipeline_plms_guidance(folders):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from flexnas.engine.sampler import sample

    problem = get_problem("sd15", model=str(folders["sd"]), T=10, num_images=3, batch_size=3,
                          prompts=str(folders["prompts_txt"]))
    loaded = problem.load()
    assert type(loaded.scheduler).__name__ == "PNDMScheduler" and loaded.scheduler.config.skip_prk_steps
    pipe = StableDiffusionPipeline.from_pretrained(folders["sd"], local_files_only=True)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    pipe.set_progress_bar_config(disable=True)

    def stock(output_type):
        return pipe(PROMPTS[:3], num_inference_steps=10, guidance_scale=7.5, output_type=output_type,
                    generator=torch.Generator("cpu").manual_seed(0)).images

    latents = loaded.latents(None)
    assert maxdiff(latents, stock("latent")) <= 1e-5
    assert maxdiff(loaded.images(None), stock("pt")) <= 1e-5
    # flexnas.engine.sampler.sample with the problem's noise and conditioning is the same loop
    noise, g = loaded.noise(0, 3, 0)
    direct = sample(loaded.unet, loaded.scheduler, 10, noise=noise, generator=g, cond=loaded.conditioning(0, 3))
    assert maxdiff(direct, latents) <= 1e-5


@pytest.mark.parametrize("scheduler", ["EulerDiscreteScheduler", "DDIMScheduler"])
def test_sdxl_teacher_equals_stock_pipeline(folders, scheduler):
    """SDXL: two text encoders, pooled text embeddings and size conditioning, zero negative embeddings
    (``force_zeros_for_empty_prompt``) as the stock pipeline makes them; a DeepCache plan runs and differs."""
    import diffusers
    from diffusers import StableDiffusionXLPipeline

    problem = get_problem(str(folders["sdxl"]), scheduler=scheduler, T=10, num_images=2, batch_size=2,
                          prompts=str(folders["prompts_txt"]))
    loaded = problem.load()
    pipe = StableDiffusionXLPipeline.from_pretrained(folders["sdxl"], local_files_only=True)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    stock = pipe(PROMPTS[:2], num_inference_steps=10, guidance_scale=5.0, output_type="latent",
                 generator=torch.Generator("cpu").manual_seed(0)).images
    ours = loaded.latents(None)
    assert maxdiff(ours, stock) <= 1e-5
    cond = loaded.conditioning(0, 2)
    assert cond.time_ids.tolist() == [[16, 16, 0, 0, 16, 16]] * 2 and not cond.negative_prompt_embeds.any()
    planned = loaded.latents(Plan.deepcache(scheduler, 10, 5, 1))
    assert torch.isfinite(planned).all() and maxdiff(planned, ours) > 1e-4


def test_model_identity_follows_the_weights_not_the_folder(folders, tmp_path):
    """The same pipeline in another folder (a fresh clone, a moved cache) keeps its identity, so its cached
    features stay valid; other weights do not."""
    import shutil

    moved = shutil.copytree(folders["ddpm"], tmp_path / "elsewhere" / "ddpm")
    a = get_problem(str(folders["ddpm"])).load()
    b = get_problem(str(moved)).load()
    assert a.unet.config._name_or_path != b.unet.config._name_or_path and a.identity == b.identity
    with torch.no_grad():
        b.unet.conv_in.bias[0] += 1e-3
    b._identity = None
    assert b.identity != a.identity


# ----------------------------------------------------------------------------- 3. search from the CLI
@pytest.mark.parametrize("case", ["ddpm-model", "ldm-problem", "sd-problem", "sdxl-model"])
def test_two_generation_search(folders, tmp_path, capsys, case):
    out = tmp_path / "run"
    common = ["--steps", "10", "--images", "4", "--batch-size", "4", "--pop", "4", "--gens", "2",
              "--extractor", EXTRACTOR, "--wall-images", "0", "--grid-images", "2", "--choose", "2", "--quiet",
              "--device", "cpu", "--out", str(out)]
    which = {"ddpm-model": ["--model", str(folders["ddpm"])],
             "ldm-problem": ["--problem", "ldm-celebahq", "--model", str(folders["ldm"])],
             "sd-problem": ["--problem", "sd15", "--model", str(folders["sd"]), "--prompts",
                            str(folders["prompts_json"])],
             "sdxl-model": ["--model", str(folders["sdxl"]), "--prompts", str(folders["prompts_txt"])]}[case]
    rc, stdout, err = run_cli(capsys, "search", *which, *common)
    assert rc == 0, err
    front = json.loads((out / "front.json").read_text())
    records = json.loads((out / "candidates.json").read_text())
    assert front and len(records) >= 4 and all(r["macs_ratio"] <= 1 for r in records)
    run_cfg = json.loads((out / "run.json").read_text())
    plan = Plan.load(out / "plans" / "plan_0.json")
    assert plan.T == 10
    if case == "sd-problem":
        assert plan.scheduler == "PNDMScheduler" and plan.null_mode == "reuse"
        assert run_cfg["config"]["overrides"]["prompts"] == str(folders["prompts_json"].resolve())
    elif case == "sdxl-model":
        assert plan.scheduler == "EulerDiscreteScheduler" and plan.null_mode == "drop"
    else:
        assert plan.scheduler == "DDIMScheduler" and plan.null_mode == "drop"
    assert (out / "grids" / "plan_0.png").is_file() and "results in" in stdout
    decode = json.loads((out / "summary.json").read_text())["decode_macs"]
    assert (decode is None) == (case == "ddpm-model") and (decode is None or decode > 0)


# ----------------------------------------------------------------------------- 4. MACs of the decode, CLIP score
def test_evaluate_reports_decode_macs_and_clip_score(folders, tmp_path, capsys):
    from flexnas.metrics.macs import count_decode

    plan = tmp_path / "dc.json"
    rc, _, err = run_cli(capsys, "plan", "--model", str(folders["sd"]), "--base-steps", "10", "--deepcache", "2",
                     "--branch", "1", "--out", str(plan))
    assert rc == 0, err
    args = ["--model", str(folders["sd"]), "--steps", "10", "--images", "4", "--batch-size", "2",
            "--prompts", str(folders["prompts_txt"]), "--extractor", EXTRACTOR]
    rc, out, err = run_cli(capsys, "evaluate", *args, "--plan", str(plan), "--wall-images", "0", "--json",
                       "--clip", str(folders["clip"]))
    assert rc == 0, err
    res = json.loads(out)
    loaded = get_problem(str(folders["sd"]), T=10).load()
    assert res["decode_macs"] == count_decode(loaded.vae, loaded.sample_shape) > 0
    assert 0 < res["macs_ratio"] < 1  # the decode is not part of the denoiser ratio
    assert 0.0 <= res["clip_score"] <= 100.0
    rc, out, err = run_cli(capsys, "show", str(plan), *args[:4])
    assert rc == 0 and "decode MACs per image" in out, err
    # pixel models have no decode
    rc, out, err = run_cli(capsys, "evaluate", "--model", str(folders["ddpm"]), "--steps", "10", "--images", "2",
                       "--extractor", EXTRACTOR, "--plan", str(_teacher(tmp_path, 10)), "--wall-images", "0", "--json")
    assert rc == 0 and "decode_macs" not in json.loads(out), err


def _teacher(tmp_path: Path, T: int, scheduler: str = "DDIMScheduler") -> Path:
    path = tmp_path / f"teacher-{scheduler}-{T}.json"
    Plan.teacher(scheduler, T).save(path)
    return path


def test_clip_score_pairs_each_image_with_its_prompt(folders):
    """The score is 100 x cos(image i, prompt i), floored at 0 and averaged: checked against the whole
    similarity matrix from CLIPModel's own forward, for the matching order and a shuffled one."""
    from flexnas.metrics.clip import ClipScorer

    scorer = ClipScorer(folders["clip"])
    images = torch.rand(3, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    tok = scorer.tokenizer(PROMPTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = scorer.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"],
                           pixel_values=scorer.preprocess(images))
        cos = out.logits_per_image / scorer.model.logit_scale.exp()  # [image, prompt]
    for order in ([0, 1, 2], [2, 0, 1]):
        expected = float((100 * cos[torch.arange(3), torch.tensor(order)]).clamp(min=0).mean())
        assert scorer.score(images, [PROMPTS[i] for i in order]) == pytest.approx(expected, abs=1e-4)
    assert not torch.allclose(cos.diagonal(), cos[torch.arange(3), torch.tensor([2, 0, 1])])  # the orders differ
    assert scorer.preprocess(images[:, :1]).shape == (3, 3, 16, 16)  # grayscale, non-square
    with pytest.raises(FlexnasError, match="one prompt per image"):
        scorer.score(images, PROMPTS[:2])
    with pytest.raises(FlexnasError, match="CLIP folder"):
        ClipScorer(folders["ddpm"] / "nope")


# ----------------------------------------------------------------------------- 5. device, dtype, resolution
def test_dtype_and_device_reach_every_component(folders):
    problem = get_problem(str(folders["sd"]), T=10, num_images=2, batch_size=2, device="cpu", dtype="bf16")
    loaded = problem.load()
    for module in (loaded.unet, loaded.vae, loaded.pipeline.text_encoder):
        assert module.dtype == torch.bfloat16 and module.device.type == "cpu"
    noise, g = loaded.noise(0, 2, 5)
    assert noise.dtype == torch.bfloat16 and g.device.type == "cpu"
    expect = torch.randn((2, *loaded.sample_shape), generator=torch.Generator("cpu").manual_seed(5),
                         dtype=torch.bfloat16)
    assert torch.equal(noise, expect)  # drawn on the CPU generator, the stock pipelines' way
    images = loaded.images(None)
    assert images.dtype == torch.float32 and torch.isfinite(images).all()

    from flexnas.metrics.evaluator import Evaluator

    fp32 = Evaluator(get_problem(str(folders["sd"]), T=10, num_images=2, batch_size=2), extractor=EXTRACTOR)
    bf16 = Evaluator(loaded, extractor=EXTRACTOR)
    assert fp32.identity() != bf16.identity()  # the feature store (teacher included) is per dtype
    with pytest.raises(FlexnasError, match="fp16 runs on a GPU only"):
        get_problem(str(folders["ddpm"]), dtype="fp16").load()
    with pytest.raises(FlexnasError, match="unknown device"):
        get_problem(str(folders["ddpm"]), device="tpu9").load()
    if not torch.cuda.is_available():
        with pytest.raises(FlexnasError, match="CUDA is not available"):
            get_problem(str(folders["ddpm"]), device="cuda").load()
    assert get_problem("ddpm-cifar10", model=str(folders["ddpm"])).load().device.type == \
        ("cuda" if torch.cuda.is_available() else "cpu")  # the real problems default to device "auto"


def test_resolution_override(folders):
    loaded = get_problem(str(folders["ddpm"]), T=10, num_images=2, batch_size=2, resolution=32).load()
    assert loaded.sample_shape == (3, 32, 32) and loaded.images(None).shape == (2, 3, 32, 32)
    sd = get_problem(str(folders["sd"]), T=10, num_images=2, batch_size=2, resolution=32).load()
    assert sd.sample_shape == (4, 16, 16) and sd.images(None).shape == (2, 3, 32, 32)  # VAE factor 2
    with pytest.raises(FlexnasError, match="multiple of 4"):
        get_problem(str(folders["sd"]), resolution=18).load()


# ----------------------------------------------------------------------------- 6. one-line errors
@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("dit", "DiTPipeline is not supported: its denoiser is 'transformer' (DiTTransformer2DModel)"),
    ("no-index", "has no model_index.json"),
    ("hub", "neither a local folder nor a reachable hub id"),
    ("neither", "give --problem NAME"),
    ("prompts-on-pixel", "not a text-to-image pipeline"),
    ("fp16-cpu", "fp16 runs on a GPU only"),
    ("scheduler", "unknown scheduler 'NoSuchScheduler'"),
    ("index-list", "holds a JSON list, not the object diffusers writes"),
])
def test_cli_errors_are_one_line(folders, tmp_path, capsys, case, message):
    out = tmp_path / "run"
    if case == "index-list":
        (tmp_path / "listed").mkdir()
        (tmp_path / "listed" / "model_index.json").write_text("[1, 2]")
    model = {"index-list": str(tmp_path / "listed"), "missing": str(tmp_path / "missing-model"), "dit": str(folders["dit"]),
             "no-index": str(folders["ddpm"] / "unet"), "hub": "nobody/no-such-model"}.get(case, str(folders["ddpm"]))
    extra = {"prompts-on-pixel": ["--prompts", str(folders["prompts_txt"])], "fp16-cpu": ["--dtype", "fp16"],
             "scheduler": ["--scheduler", "NoSuchScheduler"]}.get(case, [])
    argv = ["search", *([] if case == "neither" else ["--model", model]), *extra, "--steps", "10", "--images", "2",
            "--pop", "2", "--gens", "1", "--extractor", EXTRACTOR, "--quiet", "--device", "cpu", "--out", str(out)]
    rc, stdout, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert message in err and lines[0].startswith("flexnas: error: ")
    if case in ("missing", "dit", "neither", "fp16-cpu", "scheduler", "index-list"):
        assert not out.exists()  # nothing written before the model was checked
    if case == "missing":
        assert str(tmp_path / "missing-model") in err


@pytest.mark.parametrize("command", ["branches", "space", "plan"])
def test_other_commands_take_model(folders, capsys, command):
    extra = ["--teacher"] if command == "plan" else []
    rc, out, err = run_cli(capsys, command, "--model", str(folders["sd"]), *extra)
    assert rc == 0, err
    if command == "plan":
        plan = Plan.from_json(out)
        assert (plan.scheduler, plan.T, plan.null_mode) == ("PNDMScheduler", 50, "reuse")
    elif command == "branches":
        assert out.splitlines()[0] == "0\tconv_in"
    else:
        assert "PNDMScheduler" in out
    rc, _, err = run_cli(capsys, command, "--model", str(folders["dit"]), *extra)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "transformer" in err


def test_named_problem_on_other_weights(folders, capsys):
    """``--problem fashion-mnist --model DIR``: the embedded problem's settings on another DDPM folder."""
    from problems.fashion_mnist import PIPELINE_DIR

    rc, out, err = run_cli(capsys, "branches", "--problem", "fashion-mnist", "--model", str(PIPELINE_DIR))
    assert rc == 0 and out.splitlines()[0] == "0\tconv_in", err
    rc, out, err = run_cli(capsys, "branches", "--problem", "fashion-mnist", "--model", str(folders["dit"]))
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_sample_with_model_writes_grid(folders, tmp_path, capsys):
    out = tmp_path / "grid.png"
    rc, stdout, err = run_cli(capsys, "sample", "--model", str(folders["ldm"]), "--steps", "10", "--images", "2",
                          "--batch-size", "2", "--out", str(out))
    assert rc == 0, err
    assert_grid_of(out, get_problem(str(folders["ldm"]), T=10, batch_size=2).load().images(None, n=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
