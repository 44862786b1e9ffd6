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
from pathlib import Path
from typing import Any

from flexnas.engine.steps import can_drop
from flexnas.errors import FlexnasError
from flexnas.models.hub import check_supported, component_config, has_component, read_model_index, slug
from flexnas.models.inputs import ImageInputs
from flexnas.models.problem import Problem
from flexnas.models.prompts import DEFAULT_PROMPTS, PromptEncoder, read_prompts

# --------------------------------------------------------------------------- loading
# a text-to-image pipeline class -> the same pipeline with a ControlNet (--controlnet)
WITH_CONTROLNET = {"StableDiffusionPipeline": "StableDiffusionControlNetPipeline",
                   "StableDiffusionImg2ImgPipeline": "StableDiffusionControlNetImg2ImgPipeline",
                   "StableDiffusionXLPipeline": "StableDiffusionXLControlNetPipeline",
                   "StableDiffusionXLImg2ImgPipeline": "StableDiffusionXLControlNetImg2ImgPipeline"}


def _source(model: str) -> str:
    folder = Path(model).expanduser()
    return str(folder) if folder.is_dir() else model


class PipelineLoader:
    """``Problem.load_pipeline`` for a local folder or hub id (picklable, for Dask workers); with
    ``controlnet`` (a ``ControlNetModel`` folder or hub id), the pipeline class ``pipeline_class`` with it."""

    def __init__(self, model: str, has_safety_checker: bool = False, controlnet: str | None = None,
                 pipeline_class: str = "DiffusionPipeline"):
        self.model, self.has_safety_checker = model, has_safety_checker
        self.controlnet, self.pipeline_class = controlnet, pipeline_class

    def __call__(self) -> Any:
        import diffusers
        from diffusers.utils import logging

        source = _source(self.model)
        kw: dict[str, Any] = {}
        if self.has_safety_checker:  # the search never needs it; it would only cost memory
            kw.update(safety_checker=None, requires_safety_checker=False)
        level = logging.get_verbosity()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        try:
            if self.controlnet is not None:
                source = _source(self.controlnet)  # named in the error below if it cannot be loaded
                kw["controlnet"] = diffusers.ControlNetModel.from_pretrained(source)
                source = _source(self.model)
            pipe = getattr(diffusers, self.pipeline_class).from_pretrained(source, **kw)
        except Exception as e:  # noqa: BLE001 - diffusers raises many types for unusable folders
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            raise FlexnasError(f"cannot load {source} with diffusers ({type(e).__name__}: {first})") from None
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
                            controlnet: str | None = None, mask_images: str | Path | None = None,
                            **fields: Any) -> Problem:
    """A ``Problem`` for the diffusers pipeline at ``model`` (local folder or hub id), defaults by layout.

    ``prompts`` is a prompt file (text or JSON) or a list of strings; image-to-image pipelines take
    ``input_images`` (a folder) and ``strength``, inpainting pipelines also ``mask_images`` (a folder),
    ControlNet pipelines ``control_images`` (a folder),
    and are then sampled by their own call (``flexnas.models.inputs``); ``controlnet`` (a
    ``ControlNetModel`` folder or hub id) turns a Stable Diffusion (XL) pipeline into its ControlNet
    pipeline (``WITH_CONTROLNET``), as ``from_pretrained(model, controlnet=...)`` does. Other keyword arguments are
    ``Problem`` fields (``num_images``, ``batch_size``, ``seed``, ``resolution``, ``device``, ``dtype``,
    ``feature_extractor``, ...). Nothing is loaded until ``Problem.load()``.
    """
    model = str(model)
    index, folder = read_model_index(model)
    unet_cls = check_supported(model, index)
    pipe_cls = index.get("_class_name", "DiffusionPipeline")
    if controlnet is not None:
        if pipe_cls not in WITH_CONTROLNET:
            raise FlexnasError(f"{model}: --controlnet adds a ControlNet to {', '.join(WITH_CONTROLNET)}, not to "
                               f"{pipe_cls}")
        pipe_cls = WITH_CONTROLNET[pipe_cls]
    latent = has_component(index, "vae") or has_component(index, "vqvae")
    text = unet_cls == "UNet2DConditionModel"
    if text:
        if not (has_component(index, "text_encoder") and has_component(index, "tokenizer")):
            raise FlexnasError(f"{model}: {pipe_cls} has a UNet2DConditionModel but no text_encoder/tokenizer; flexnas "
                               "conditions such U-Nets on prompts through the pipeline's encode_prompt")
        _check_encode_prompt(model, pipe_cls)
    folders = (input_images, strength, control_images, mask_images)
    inputs = ImageInputs.from_folders(*folders) if folders != (None,) * 4 else None
    import diffusers

    cls = getattr(diffusers, pipe_cls, None)
    if cls is not None:  # a pipeline class this diffusers lacks fails at loading, with its own message
        (inputs or ImageInputs()).check(cls, controlnet is not None or has_component(index, "controlnet"))
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
        load_pipeline=PipelineLoader(src, has_component(index, "safety_checker"), controlnet,
                                     pipe_cls if controlnet is not None else "DiffusionPipeline"),
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
