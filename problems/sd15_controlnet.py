"""Stable Diffusion 1.5 with a ControlNet (``StableDiffusionControlNetPipeline``): the ``sd15``
problem's settings (PLMS 50, guidance 7.5, the shipped prompts, null mode "reuse") plus a
``ControlNetModel`` (default: the Canny-edge ControlNet for SD 1.5) and a folder of conditioning
images (``--control-images``, required: image ``i`` is conditioned on file ``i`` mod their number).

Under a plan the ControlNet does not run at NULL steps (their residuals are unused) and runs at
FULL and PARTIAL ones; its MACs are counted with the U-Net's (``flexnas.metrics.macs``).
"""

from __future__ import annotations

from typing import Any

from problems import sd15

CONTROLNET = "lllyasviel/sd-controlnet-canny"


def make_problem(model: str = sd15.MODEL, controlnet: str = CONTROLNET, **overrides: Any):
    kw: dict[str, Any] = dict(
        name="sd15-controlnet",
        description=f"Stable Diffusion 1.5 from {model} with the ControlNet {controlnet}; PLMS 50, guidance 7.5",
    )
    kw.update(overrides)
    return sd15.make_problem(model, controlnet=controlnet, **kw)
