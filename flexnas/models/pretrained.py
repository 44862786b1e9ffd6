"""Problems for any diffusers pipeline whose denoiser is a U-Net, from a local folder or a hub id.

``problem_from_pretrained(model)`` reads the pipeline's ``model_index.json`` (without loading
weights), checks that its denoiser is a ``UNet2DModel`` or ``UNet2DConditionModel`` and picks
defaults from the pipeline's layout:

- pixel U-Net (e.g. ``DDPMPipeline``, ``DDIMPipeline``): DDIM 100, null steps dropped;
- U-Net in a VAE / VQ latent space without text (e.g. ``LDMPipeline``): DDIM 250, dropped;
- text-to-image (``UNet2DConditionModel`` + CLIP text encoder, e.g. ``StableDiffusionPipeline``):
  PLMS 50 (``PNDMScheduler`` with ``skip_prk_steps=True``), null steps reused (PLMS cannot
  drop timesteps), classifier-free guidance 7.5, prompts from a file (default: the short
  MS-COCO-style list ``flexnas/models/default_prompts.txt``).

Every default can be overridden (scheduler, T, guidance, prompts, resolution, device, dtype,
batch size, ...). The problems under ``problems/`` (DDPM CIFAR-10, LDM CelebA-HQ, Stable
Diffusion 1.5) are this function with their hub id and settings.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from flexnas.engine.sampler import Conditioning
from flexnas.engine.steps import can_drop
from flexnas.errors import FlexnasError
from flexnas.models.hub import (check_supported, component_config,
                                has_component, read_model_index, slug)
from flexnas.models.inputs import ImageInputs
from flexnas.models.problem import Problem

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "default_prompts.txt"


# --------------------------------------------------------------------------- prompts
def read_prompts(path: str | Path) -> list[str]:
    """Prompts from a text file (one per line; blank lines and ``#`` comments skipped) or a JSON file:
    a list of strings, a list of objects with ``prompt``/``caption``/``text``, ``{"prompts": [...]}``,
    or an MS-COCO captions file (``{"annotations": [{"caption": ...}]}``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FlexnasError(f"prompt file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise FlexnasError(f"prompt file {path} is not valid JSON ({e})") from None
        if isinstance(data, dict):
            data = data.get("prompts", data.get("annotations"))
        items = data if isinstance(data, list) else None
        prompts = []
        for item in items or []:
            if isinstance(item, dict):
                item = next((item[k] for k in ("prompt", "caption", "text") if isinstance(item.get(k), str)), None)
            if not isinstance(item, str):
                items = None
                break
            prompts.append(item.strip())
        if items is None:
            raise FlexnasError(f"prompt file {path}: expected a list of strings, of objects with 'prompt'/'caption'/"
                               "'text', {\"prompts\": [...]} or MS-COCO {\"annotations\": [...]}")
    else:
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise FlexnasError(f"prompt file {path} holds no prompts")
    return prompts


class PromptEncoder:
    """``Problem.encode_prompts`` for pipelines with ``encode_prompt`` (Stable Diffusion, SDXL and kin).

    Image ``i`` is conditioned on ``prompts[i % len(prompts)]``; with guidance > 1 the negative
    prompt is what the stock pipeline uses when none is given (``""``; zeros for SDXL with
    ``force_zeros_for_empty_prompt``). SDXL's pooled embeddings come along; its size
    conditioning is the loaded model's to add (it knows the resolution).
    """

    def __init__(self, prompts: list[str], guidance_scale: float):
        self.prompts, self.guidance_scale = list(prompts), float(guidance_scale)

    def __call__(self, pipeline: Any, start: int, stop: int) -> Conditioning:
        import torch

        texts = [self.prompts[i % len(self.prompts)] for i in range(start, stop)]
        cfg = self.guidance_scale > 1.0
        with torch.no_grad():
            out = pipeline.encode_prompt(prompt=texts, device=pipeline._execution_device, num_images_per_prompt=1,
                                         do_classifier_free_guidance=cfg)
        pooled, negative_pooled = (out[2], out[3]) if len(out) == 4 else (None, None)
        return Conditioning(prompt_embeds=out[0], negative_prompt_embeds=out[1] if cfg else None,
                            guidance_scale=self.guidance_scale, pooled_embeds=pooled,
                            negative_pooled_embeds=negative_pooled if cfg else None)


# --------------------------------------------------------------------------- loading
class PipelineLoader:
    """``Problem.load_pipeline`` for a local folder or hub id (picklable, for Dask workers)."""

    def __init__(self, model: str, has_safety_checker: bool = False):
        self.model, self.has_safety_checker = model, has_safety_checker

    def __call__(self) -> Any:
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging

        folder = Path(self.model).expanduser()
        source = str(folder) if folder.is_dir() else self.model
        kw: dict[str, Any] = {}
        if self.has_safety_checker:  # the search never needs it; it would only cost memory
            kw.update(safety_checker=None, requires_safety_checker=False)
        level = logging.get_verbosity()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        try:
            pipe = DiffusionPipeline.from_pretrained(source, **kw)
        except Exception as e:  # noqa: BLE001 - diffusers raises many types for unusable folders
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise FlexnasError(f"cannot load the diffusers pipeline {source} ({type(e).__name__}: {first})") from None
        finally:
            logging.set_verbosity(level)
            logging.enable_progress_bar()
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _can_drop(scheduler: str) -> bool:
    import diffusers

    cls = getattr(diffusers, scheduler, None)
    if cls is None:
        raise FlexnasError(f"unknown scheduler {scheduler!r}: name a diffusers scheduler class (e.g. DDIMScheduler, "
                           "PNDMScheduler, DPMSolverMultistepScheduler)")
    return can_drop(cls)


def _default_scheduler_kwargs(scheduler: str) -> dict[str, Any]:
    # PLMS: Stable Diffusion's PNDM without the Runge-Kutta warm-up, one distinct timestep per step
    return {"skip_prk_steps": True} if scheduler == "PNDMScheduler" else {}


def problem_from_pretrained(model: str, *, name: str | None = None, scheduler: str | None = None,
                            scheduler_kwargs: dict | None = None, T: int | None = None,
                            guidance_scale: float | None = None, prompts: str | Path | list[str] | None = None,
                            null_mode: str | None = None, input_images: str | Path | None = None,
                            strength: float | None = None, control_images: str | Path | None = None,
                            **fields: Any) -> Problem:
    """A ``Problem`` for the diffusers pipeline at ``model`` (local folder or hub id), defaults by layout.

    ``prompts`` is a prompt file (text or JSON) or a list of strings; image-to-image pipelines take
    ``input_images`` (a folder) and ``strength``, ControlNet pipelines ``control_images`` (a folder),
    and are then sampled by their own call (``flexnas.models.inputs``). Other keyword arguments are
    ``Problem`` fields (``num_images``, ``batch_size``, ``seed``, ``resolution``, ``device``, ``dtype``,
    ``feature_extractor``, ...). Nothing is loaded until ``Problem.load()``.
    """
    model = str(model)
    index, folder = read_model_index(model)
    unet_cls = check_supported(model, index)
    pipe_cls = index.get("_class_name", "DiffusionPipeline")
    latent = has_component(index, "vae") or has_component(index, "vqvae")
    text = unet_cls == "UNet2DConditionModel"
    if text:
        if not (has_component(index, "text_encoder") and has_component(index, "tokenizer")):
            raise FlexnasError(f"{model}: {pipe_cls} has a UNet2DConditionModel but no text_encoder/tokenizer; flexnas "
                               "conditions such U-Nets on prompts through the pipeline's encode_prompt")
        _check_encode_prompt(model, pipe_cls)
    inputs = ImageInputs.from_folders(input_images, strength, control_images) \
        if (input_images, strength, control_images) != (None, None, None) else None
    import diffusers

    cls = getattr(diffusers, pipe_cls, None)
    if cls is not None:  # a pipeline class this diffusers lacks fails at loading, with its own message
        (inputs or ImageInputs()).check(cls, has_component(index, "controlnet"))
    if text and has_component(index, "text_encoder_2"):  # SDXL: its stock scheduler and guidance
        d_sched, d_T, d_guid, kind = "EulerDiscreteScheduler", 50, 5.0, "text-to-image, SDXL"
    elif text:
        d_sched, d_T, d_guid, kind = "PNDMScheduler", 50, 7.5, "text-to-image"
    elif latent:
        d_sched, d_T, d_guid, kind = "DDIMScheduler", 250, 1.0, "latent"
    else:
        d_sched, d_T, d_guid, kind = "DDIMScheduler", 100, 1.0, "pixel"
    scheduler = scheduler or d_sched
    T = int(T or d_T)
    guidance_scale = d_guid if guidance_scale is None else float(guidance_scale)
    if scheduler_kwargs is None:
        scheduler_kwargs = _default_scheduler_kwargs(scheduler)
    null_mode = null_mode or ("drop" if _can_drop(scheduler) else "reuse")
    kw: dict[str, Any] = dict(num_images=64, batch_size=16 if text else 64)
    if text:
        if prompts is None:
            prompts = DEFAULT_PROMPTS
        prompt_list = list(prompts) if isinstance(prompts, (list, tuple)) else read_prompts(prompts)
        kw.update(prompts=prompt_list, encode_prompts=PromptEncoder(prompt_list, guidance_scale))
    elif prompts is not None:
        raise FlexnasError(f"{model}: {pipe_cls} is not a text-to-image pipeline; --prompts applies to pipelines with "
                           "a text encoder")
    if not text and guidance_scale != 1.0:
        raise FlexnasError(f"{model}: guidance applies to text-to-image pipelines only "
                           f"(got --guidance {guidance_scale})")
    n_classes = component_config(model, folder, "unet").get("num_class_embeds")
    if not text and n_classes:
        kw["class_labels"] = list(range(int(n_classes)))  # image i gets class i mod n
    src = str(folder) if folder is not None else model
    kw.update(
        name=slug(name or (folder.resolve().name if folder is not None else model.split("/")[-1])),
        load_pipeline=PipelineLoader(src, has_component(index, "safety_checker")),
        scheduler=scheduler, scheduler_kwargs=dict(scheduler_kwargs), T=T, guidance_scale=guidance_scale,
        null_mode=null_mode, inputs=inputs,
        description=f"{pipe_cls} ({unet_cls}, {kind}) from {src}; {scheduler} {T}"
                    + (f", guidance {guidance_scale:g}" if text else "")
                    + (f", strength {inputs.strength:g}" if inputs is not None and inputs.strength else ""),
    )
    kw.update(fields)
    return Problem(**kw)


def _check_encode_prompt(model: str, pipe_cls: str) -> None:
    import diffusers

    cls = getattr(diffusers, pipe_cls, None)
    fn = getattr(cls, "encode_prompt", None) if cls is not None else None
    if fn is None:
        raise FlexnasError(f"{model}: {pipe_cls} has no encode_prompt; flexnas drives text-to-image pipelines "
                           "through encode_prompt (StableDiffusionPipeline and kin)")
    params = set(inspect.signature(fn).parameters)
    needed = {"prompt", "device", "num_images_per_prompt", "do_classifier_free_guidance"}
    if not needed <= params:
        raise FlexnasError(f"{model}: {pipe_cls}.encode_prompt lacks {sorted(needed - params)}; flexnas supports "
                           "Stable Diffusion- and SDXL-style text-to-image pipelines")
