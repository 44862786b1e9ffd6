"""A diffusers pipeline's layout, read without loading weights: ``model_index.json`` and component configs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from flexnas.errors import FlexnasError

SUPPORTED_DENOISERS = ("UNet2DModel", "UNet2DConditionModel")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_model(spec: str) -> bool:
    """A path (``/x``, ``./x``, ``~/x``, ``../x``) or a hub id (``owner/name``)."""
    return spec.startswith(("/", "./", "../", "~")) or bool(_HUB_ID.match(spec))


def slug(text: str) -> str:
    """A file-name-safe version of ``text`` (problem names end up in cache and run-folder names)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


# --------------------------------------------------------------------------- model index
def read_model_index(model: str) -> tuple[dict[str, Any], Path | None]:
    """(``model_index.json`` of ``model``, its local folder or None for a hub id), with one-line errors."""
    folder = Path(model).expanduser()
    if folder.is_dir():
        index = folder / "model_index.json"
        if not index.is_file():
            raise FlexnasError(f"{folder} has no model_index.json: give a diffusers pipeline folder "
                               "(what DiffusionPipeline.save_pretrained writes)")
        try:
            data = json.loads(index.read_text())
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            raise FlexnasError(f"{index} is not valid JSON ({type(e).__name__}): give a diffusers pipeline folder") from None
        if not isinstance(data, dict):
            raise FlexnasError(f"{index} holds a JSON {type(data).__name__}, not the object diffusers writes: give a "
                               "diffusers pipeline folder")
        return data, folder
    if model.startswith(("/", "./", "../", "~")) or not _HUB_ID.match(model):
        raise FlexnasError(f"model folder {model} does not exist: give a local diffusers pipeline folder or a hub id "
                           "(owner/name)")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.utils import logging as hub_logging

        hub_logging.set_verbosity_error()  # no page of retry warnings before the one line below
        path = hf_hub_download(model, "model_index.json", etag_timeout=5)
        return json.loads(Path(path).read_text()), None
    except Exception as e:  # noqa: BLE001 - offline, missing repo, no access: all end the same way
        raise FlexnasError(f"model {model!r} is neither a local folder nor a reachable hub id "
                           f"({type(e).__name__}); download it first (hf download {model} "
                           "--local-dir DIR) and pass --model DIR") from None


def describe_denoiser(index: dict[str, Any]) -> tuple[str | None, str | None]:
    """(component name, class name) of the pipeline's denoiser as listed in its model index."""
    for name in ("unet", "transformer", "prior", "decoder", "model"):
        entry = index.get(name)
        if isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1]:
            return name, entry[1]
    return None, None


def check_supported(model: str, index: dict[str, Any]) -> str:
    """The denoiser class name, or a one-line error for pipelines flexnas cannot drive."""
    pipe = index.get("_class_name", "pipeline")
    comp, cls = describe_denoiser(index)
    if comp != "unet" or cls not in SUPPORTED_DENOISERS:
        what = f"its denoiser is '{comp}' ({cls})" if comp else "it has no 'unet' denoiser"
        raise FlexnasError(f"{model}: {pipe} is not supported: {what}; flexnas drives pipelines whose 'unet' is a "
                           "UNet2DModel or UNet2DConditionModel")
    return cls


def component_config(model: str, folder: Path | None, name: str) -> dict[str, Any]:
    """``NAME/config.json`` of a pipeline component ({} when it cannot be read without loading)."""
    try:
        if folder is not None:
            return json.loads((folder / name / "config.json").read_text())
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, "config.json", subfolder=name)).read_text())
    except Exception:  # noqa: BLE001 - only defaults depend on it; loading reports real problems
        return {}


def has_component(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None
