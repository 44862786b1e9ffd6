"""CLIP score of text-to-image samples, with a transformers ``CLIPModel`` from a local folder.

CLIP score = 100 x cosine(image embedding, prompt embedding), floored at 0 and averaged over
images (the usual definition, e.g. torchmetrics'). The model is never downloaded: give the
folder of ``CLIPModel.save_pretrained`` (or of a hub snapshot such as
``openai/clip-vit-large-patch14``) with its tokenizer files and, optionally, its
``preprocessor_config.json`` (image size, mean and std; CLIP's defaults otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from flexnas.errors import FlexnasError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _size(value: Any, default: int) -> int:
    if isinstance(value, dict):
        value = value.get("shortest_edge", value.get("height", default))
    return int(value or default)


class ClipScorer:
    """Scores images in [0, 1] against prompts with a local CLIP model."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu"):
        folder = Path(folder).expanduser()
        if not (folder / "config.json").is_file():
            raise FlexnasError(f"CLIP folder {folder} is missing or has no config.json: give a local CLIPModel folder "
                               "(CLIPModel.save_pretrained, or a downloaded openai/clip-vit-* snapshot)")
        try:
            from transformers import AutoTokenizer, CLIPModel
            from transformers.utils import logging

            logging.set_verbosity_error()
            self.model = CLIPModel.from_pretrained(folder, local_files_only=True).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except ImportError:
            raise FlexnasError("CLIP score needs transformers: pip install transformers") from None
        except Exception as e:  # noqa: BLE001 - unreadable folders raise many types
            raise FlexnasError(f"cannot load a CLIP model from {folder} ({type(e).__name__})") from None
        self.device = torch.device(device)
        image_size = self.model.config.vision_config.image_size
        pre = folder / "preprocessor_config.json"
        cfg = json.loads(pre.read_text()) if pre.is_file() else {}
        self.resize = _size(cfg.get("size"), image_size)
        self.crop = _size(cfg.get("crop_size"), image_size)
        self.mean = torch.tensor(cfg.get("image_mean", CLIP_MEAN)).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.get("image_std", CLIP_STD)).view(1, 3, 1, 1)
        self.max_length = min(getattr(self.tokenizer, "model_max_length", 77) or 77,
                              self.model.config.text_config.max_position_embeddings)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [0, 1] -> CLIP pixel values: shorter side resized, centre-cropped, normalised."""
        x = images.float().clamp(0, 1)
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        h, w = x.shape[-2:]
        s = self.resize / min(h, w)
        x = F.interpolate(x, size=(max(self.crop, round(h * s)), max(self.crop, round(w * s))), mode="bicubic",
                          antialias=True, align_corners=False).clamp(0, 1)
        top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
        x = x[..., top:top + self.crop, left:left + self.crop]
        return (x - self.mean) / self.std

    @staticmethod
    def _features(out: Any) -> torch.Tensor:
        return out if torch.is_tensor(out) else out.pooler_output

    @torch.no_grad()
    def score(self, images: torch.Tensor, prompts: list[str], batch_size: int = 64) -> float:
        """Mean CLIP score of ``images[i]`` against ``prompts[i]``."""
        if len(images) != len(prompts):
            raise FlexnasError(f"CLIP score needs one prompt per image: {len(images)} images, {len(prompts)} prompts")
        scores = []
        dtype = self.model.dtype
        for i in range(0, len(images), batch_size):
            px = self.preprocess(images[i:i + batch_size].cpu()).to(self.device, dtype)
            tok = self.tokenizer(prompts[i:i + batch_size], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            img = self._features(self.model.get_image_features(pixel_values=px)).float()
            txt = self._features(self.model.get_text_features(input_ids=tok["input_ids"],
                                                              attention_mask=tok.get("attention_mask"))).float()
            cos = F.cosine_similarity(img, txt, dim=-1)
            scores.append((100 * cos).clamp(min=0).cpu())
        return float(torch.cat(scores).mean())
