"""Prompts of text-to-image problems: prompt files, and their encoding through the pipeline's ``encode_prompt``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flexnas.engine.sampler import Conditioning
from flexnas.errors import FlexnasError

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "default_prompts.txt"


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
