"""The problem spec: which model, scheduler, base schedule, images and measures (pure settings).

Loading it is ``Problem.load()`` (``flexnas.models.loaded.LoadedModel``); finding one by name is
``flexnas.models.registry``'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from flexnas.engine.sampler import Conditioning
from flexnas.models.inputs import ImageInputs
from flexnas.plan.plan import Plan

if TYPE_CHECKING:
    from flexnas.models.loaded import LoadedModel


@dataclass
class Problem:
    """How to load a model and sample it for search and evaluation."""

    name: str
    load_pipeline: Callable[[], Any]
    scheduler: str = "DDIMScheduler"
    scheduler_kwargs: dict = field(default_factory=dict)
    T: int = 100
    num_images: int = 64
    rescore_images: dict[str, int] = field(default_factory=dict)  # per goal: images a search re-scores its
    # front on (a goal not named: none; --rescore-images)
    seed: int = 0
    batch_size: int = 64
    eta: float = 0.0
    null_mode: str = "drop"
    class_labels: list[int] | None = None
    guidance_scale: float = 1.0
    encode_prompts: Callable[[Any, int, int], Conditioning] | None = None  # (pipeline, start, stop)
    feature_extractor: str = "inception-v3-compat"
    feature_extractor_weights: str | None = None
    real_statistics: Path | None = None
    shipped_features: Path | None = None  # a read-only feature store shipped with the problem (the embedded
    # default's holds its teacher's images): FeatureStore reads a batch there when its own store lacks it
    branches: tuple[int, ...] | None = None
    description: str = ""
    prompts: list[str] | None = None  # the text of image i is prompts[i % len(prompts)] (text-to-image problems)
    resolution: int | None = None  # image side in pixels (default: the U-Net's sample size times the VAE factor)
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto (cuda when available)
    dtype: str | None = None  # fp32, fp16 or bf16 (None: as loaded)
    inputs: ImageInputs | None = None  # image-to-image / ControlNet inputs: the stock pipeline call samples
    compile: bool | None = None  # torch.compile the U-Net's step kinds (None: where benchmarks/REPORT.md found it faster)
    lockstep: bool | None = None  # a generation's candidates batch into shared U-Net calls (None: on for CUDA)

    def load(self, device: str | None = None, dtype: str | None = None) -> "LoadedModel":
        """The pipeline in memory on ``device`` in ``dtype`` (defaults: the problem's own fields)."""
        from flexnas.models.loaded import LoadedModel

        return LoadedModel(self, device, dtype)

    def teacher_plan(self) -> Plan:
        return Plan.teacher(self.scheduler, self.T, self.null_mode).with_meta(problem=self.name)

