"""Image inputs of image-to-image, inpainting and ControlNet problems (``--input-images``, ``--strength``,
``--mask-images``, ``--control-images``).

Such problems are sampled by calling the stock pipeline under the plan (``flexnas.apply``), not
by flexnas' own loop: the pipeline prepares its inputs (encodes the init image and noises it to
``strength``, binarises the mask and encodes the masked image, preprocesses the control image,
runs the ControlNet) exactly as a user's call
would, so the teacher plan reproduces the stock call and a searched plan transfers as is.
Image ``i`` uses the ``i % len(files)``-th file of a folder, in name order, resized to the
problem's resolution.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flexnas.errors import FlexnasError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def image_files(folder: str | Path, option: str) -> list[Path]:
    """The image files of ``folder`` in name order, or a one-line error naming ``option``."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FlexnasError(f"{option} {path} is not a folder: give a folder of images ({', '.join(IMAGE_SUFFIXES)})")
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FlexnasError(f"{option} {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


@dataclass
class ImageInputs:
    """What an image-to-image, inpainting or ControlNet pipeline call takes besides the prompt.

    ``images``: init images (image-to-image, inpainting), noised to ``strength`` (0 < strength <= 1,
    the share of the base schedule that runs); ``masks``: inpainting masks (white: repaint, as
    diffusers reads them); ``control_images``: ControlNet conditioning images.
    """

    images: list[Path] | None = None
    strength: float | None = None
    control_images: list[Path] | None = None
    masks: list[Path] | None = None
    _loaded: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_folders(cls, images: str | Path | None = None, strength: float | None = None,
                     control_images: str | Path | None = None, masks: str | Path | None = None) -> "ImageInputs":
        if strength is not None and not 0 < strength <= 1:
            raise FlexnasError(f"--strength must be in (0, 1], got {strength}: it is the share of the base schedule "
                               "an image-to-image pipeline runs")
        if images is None and (strength is not None or masks is not None):
            option = "--strength" if strength is not None else "--mask-images"
            raise FlexnasError(f"{option} applies to image-to-image and inpainting: give --input-images FOLDER too")
        if images is not None and strength is None:
            strength = 1.0 if masks is not None else 0.8  # the stock inpainting / image-to-image pipelines' defaults
        return cls(image_files(images, "--input-images") if images is not None else None, strength,
                   image_files(control_images, "--control-images") if control_images is not None else None,
                   image_files(masks, "--mask-images") if masks is not None else None)

    def check(self, pipeline_class: Any, has_controlnet: bool) -> None:
        """One-line errors for inputs the pipeline class does not take, or misses."""
        name = pipeline_class.__name__
        params = set(inspect.signature(pipeline_class.__call__).parameters)
        if "mask_image" in params and self.masks is None:
            raise FlexnasError(f"{name} inpaints: give --mask-images FOLDER (white: repaint) and --input-images FOLDER")
        if "mask_image" not in params and self.masks is not None:
            raise FlexnasError(f"{name} is not an inpainting pipeline: --mask-images does not apply (use a "
                               "StableDiffusion(XL)InpaintPipeline folder)")
        if self.images is not None and "strength" not in params:
            raise FlexnasError(f"{name} is not an image-to-image pipeline: --input-images and --strength do not "
                               "apply (use a StableDiffusion(XL)Img2ImgPipeline folder)")
        if self.images is None and "strength" in params:
            raise FlexnasError(f"{name} transforms input images: give --input-images FOLDER (and --strength)")
        if has_controlnet and self.control_images is None:
            raise FlexnasError(f"{name} is conditioned on control images: give --control-images FOLDER")
        if not has_controlnet and self.control_images is not None:
            raise FlexnasError(f"{name} has no ControlNet: --control-images does not apply")

    def fingerprint(self) -> str:
        """A hash of everything the inputs make images depend on (file names and bytes, strength)."""
        h = hashlib.sha256(repr(self.strength).encode())
        for role, files in (("images", self.images), ("control", self.control_images), ("masks", self.masks)):
            for f in files or []:
                h.update(f"{role}:{f.name}:".encode())
                h.update(f.read_bytes())
        return h.hexdigest()[:20]

    def _pil(self, files: list[Path], i: int, size: tuple[int, int]) -> Any:
        from PIL import Image

        f = files[i % len(files)]
        key = (str(f), size)
        if key not in self._loaded:
            try:
                with Image.open(f) as im:
                    self._loaded[key] = im.convert("RGB").resize(size, Image.BICUBIC)
            except OSError as e:
                raise FlexnasError(f"cannot read image {f} ({e})") from None
        return self._loaded[key]

    def call_kwargs(self, pipeline: Any, start: int, stop: int, size: tuple[int, int]) -> dict[str, Any]:
        """The pipeline call's image arguments for images ``start..stop`` (``size``: width, height)."""
        kw: dict[str, Any] = {}
        if self.images is not None:
            kw["image"] = [self._pil(self.images, i, size) for i in range(start, stop)]
            kw["strength"] = self.strength
        if self.masks is not None:
            kw["mask_image"] = [self._pil(self.masks, i, size) for i in range(start, stop)]
        if self.control_images is not None:  # ControlNet img2img pipelines name it control_image
            name = "control_image" if "control_image" in inspect.signature(pipeline.__call__).parameters else "image"
            kw[name] = [self._pil(self.control_images, i, size) for i in range(start, stop)]
        return kw
