"""The search objectives: rFID and FID to real images (torch-fidelity), MACs (fvcore), wall-clock.

rFID is the Fréchet distance between the features of a candidate's images and the
teacher's images generated from the same initial noise. The teacher's statistics are
computed once and cached on disk by torch-fidelity under a name that hashes everything
they depend on (model identity, scheduler, T, eta, seeds, image count, batch size,
conditioning, extractor), so a second evaluation never resamples the teacher.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from flexnas.errors import FlexnasError
from flexnas.features import FEATURE_EXTRACTORS_REGISTRY, extractor_fingerprint, resolve_extractor
from flexnas.macs import MacCounter, cache_dir
from flexnas.plan import Plan
from flexnas.problem import LoadedProblem, Problem

FID_KEY = "frechet_inception_distance"


def to_uint8_rgb(images: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] ``[N, C, H, W]`` to uint8 ``[N, 3, H, W]`` (grayscale repeated)."""
    x = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    return x.repeat(1, 3, 1, 1) if x.shape[1] == 1 else x[:, :3]


class ImageDataset(Dataset):
    """uint8 images for torch-fidelity; built lazily so a cache hit never generates them."""

    def __init__(self, n: int, make: Callable[[], torch.Tensor]):
        self.n, self._make, self._images = n, make, None

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._images is None:
            self._images = to_uint8_rgb(self._make())
        return self._images[i]


def fidelity_fid(input1: Dataset, input2: Dataset, cache_root: Path, extractor_kw: dict[str, Any],
                 **cache_names: str) -> float:
    """One ``torch_fidelity.calculate_metrics`` FID call (``input{1,2}_cache_name`` cache statistics)."""
    import torch_fidelity

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = torch_fidelity.calculate_metrics(
            input1=input1, input2=input2, fid=True, cuda=torch.cuda.is_available(), verbose=False,
            save_cpu_ram=True, cache_root=str(cache_root), batch_size=128, **cache_names, **extractor_kw)
    return float(out[FID_KEY])


def measure_wall(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` after ``warmup`` calls, synchronised on GPU."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


class Evaluator:
    """Scores plans of one problem: rFID, FID to real images, MACs and wall-clock time."""

    def __init__(self, problem: Problem | LoadedProblem, images: int | None = None, extractor: str | None = None,
                 extractor_weights: str | Path | None = None, cache_root: str | Path | None = None,
                 clip: str | Path | None = None):
        self.loaded = problem if isinstance(problem, LoadedProblem) else problem.load()
        p = self.loaded.problem
        self.n = p.num_images if images is None else images
        if self.n < 2:
            raise FlexnasError(f"rFID needs at least 2 images, got {self.n}")
        self.extractor = extractor or p.feature_extractor
        self.extractor_kw = resolve_extractor(self.extractor, extractor_weights or p.feature_extractor_weights)
        self.cache_root = Path(cache_root) if cache_root else cache_dir() / "fidelity"
        self.macs = MacCounter.for_problem(self.loaded)
        self._teacher_wall: dict[int, float] = {}
        self.clip = None
        if clip is not None:
            from flexnas.clip import ClipScorer

            if self.loaded.prompts(0, 1) is None:
                raise FlexnasError(f"--clip scores images against their prompts: problem {p.name} has no prompts")
            self.clip = ClipScorer(clip, self.loaded.device)

    # ------------------------------------------------------------------ keys
    def identity(self, n: int | None = None) -> str:
        """Everything a plan's images and features depend on besides the plan, hashed (``n``: the image count)."""
        p = self.loaded.problem
        cond = self.loaded.conditioning(0, min(self.n if n is None else n, p.batch_size))
        cond_desc = {k: (v.shape, float(v.double().sum())) if torch.is_tensor(v) else v
                     for k, v in vars(cond).items() if v is not None}
        desc = {"model": self.loaded.identity, "scheduler": p.scheduler, "sched_kw": p.scheduler_kwargs,
                "T": p.T, "eta": p.eta, "seed": p.seed, "batch": p.batch_size,
                "cond": repr(sorted(cond_desc.items())), "labels": p.class_labels,
                "extractor": self.extractor, "extractor_weights": extractor_fingerprint(self.extractor_kw),
                "sched_cfg": dict(self.loaded.scheduler.config),
                "device": str(self.loaded.device), "dtype": str(self.loaded.unet.dtype)}
        if n is not None:
            desc["n"] = n
        text = json.dumps(desc, sort_keys=True, default=str)
        extra = {}
        if p.resolution is not None:
            extra["shape"] = list(self.loaded.sample_shape)
        if p.prompts:
            extra["prompts"] = hashlib.sha256(json.dumps(self.loaded.prompts(0, n or 10**4)).encode()).hexdigest()
        if extra:  # only problems that have these, so existing keys stay valid
            text += json.dumps(extra, sort_keys=True)
        return f"{p.name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"

    def teacher_key(self) -> str:
        """Cache name of the teacher's statistics: everything they depend on, hashed."""
        return f"flexnas-teacher-{self.identity(self.n)}"

    def store(self, root: str | Path | None = "default", prefixes: Any = None) -> "FeatureStore":
        """A feature store of this problem and extractor (default root: ``$FLEXNAS_CACHE/features``)."""
        from flexnas.store import FeatureStore

        root = cache_dir() / "features" if root == "default" else root
        return FeatureStore(self.loaded, self.extractor, self.extractor_kw, self.identity(), root, prefixes)

    def reference(self) -> "Reference | None":
        """The problem's real-image statistics in this extractor's space (None without them)."""
        from flexnas.measures import Reference

        src = self.loaded.problem.real_statistics
        return Reference.load(src, self.extractor) if src is not None and Path(src).is_file() else None

    def teacher_dataset(self) -> ImageDataset:
        return ImageDataset(self.n, lambda: self.loaded.images(None, n=self.n))

    def ensure_teacher(self) -> None:
        """Compute and cache the teacher's statistics now (no-op when cached)."""
        key = self.teacher_key()
        if not list(self.cache_root.glob(f"{key}-*.pt")):
            ds = self.teacher_dataset()
            fidelity_fid(ds, ds, self.cache_root, self.extractor_kw, input1_cache_name=key, input2_cache_name=key)

    # ------------------------------------------------------------------ metrics
    def rfid_of_latents(self, latents: torch.Tensor) -> float:
        """rFID of a candidate's final latents (``inf`` with a warning if any value is NaN/inf)."""
        if not torch.isfinite(latents).all():
            warnings.warn("candidate images contain NaN or inf (the sampler diverged): rfid = inf", RuntimeWarning)
            return math.inf
        images = self.loaded.decode(latents)
        return max(0.0, fidelity_fid(ImageDataset(len(images), lambda: images), self.teacher_dataset(),
                                     self.cache_root, self.extractor_kw, input2_cache_name=self.teacher_key()))

    def check_plan(self, plan: Plan) -> Plan:
        """Refuse a plan for another base schedule than the problem's (its teacher would not be comparable)."""
        p = self.loaded.problem
        if plan.T != p.T:
            raise FlexnasError(f"the plan's base schedule has T={plan.T} steps but problem {p.name} samples with "
                               f"T={p.T}: make the plan with --base-steps {p.T}, or pass --steps {plan.T}")
        return plan

    def rfid(self, plan: Plan) -> float:
        return self.rfid_of_latents(self.loaded.latents(self.check_plan(plan), n=self.n))

    def real_cache_name(self) -> str | None:
        """torch-fidelity cache name of the problem's real-image statistics, installed on first use."""
        src = self.loaded.problem.real_statistics
        if src is None or not Path(src).is_file():
            return None
        name = f"flexnas-real-{Path(src).stem}-{hashlib.sha256(Path(src).read_bytes()).hexdigest()[:12]}"
        layer = FEATURE_EXTRACTORS_REGISTRY[self.extractor].get_default_feature_layer_for_metric("fid")
        dst = self.cache_root / f"{name}-{self.extractor}-stat-fid-{layer}.pt"  # torch-fidelity's cache naming
        if not dst.is_file():
            try:
                d = np.load(src)
                extractor, mu, sigma = str(d["extractor"]) if "extractor" in d else None, d["mu"], d["sigma"]
            except (OSError, ValueError, KeyError) as e:
                raise FlexnasError(f"real-image statistics {src} are unreadable ({type(e).__name__}): they need "
                                   "arrays mu, sigma and extractor") from None
            if extractor is not None and extractor != self.extractor:
                return None  # statistics of another feature space
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f"{dst.name}.{os.getpid()}.tmp")  # workers may install it at the same time
            torch.save({"mu": mu, "sigma": sigma}, tmp)
            os.replace(tmp, dst)
        return name

    def fid_to_real_of_latents(self, latents: torch.Tensor) -> float | None:
        """FID of the images against the problem's real-image statistics (None when it has none)."""
        name = self.real_cache_name()
        if name is None:
            return None
        if not torch.isfinite(latents).all():
            return math.inf
        images = self.loaded.decode(latents)
        return max(0.0, fidelity_fid(ImageDataset(len(images), lambda: images), ImageDataset(0, lambda: images),
                                     self.cache_root, self.extractor_kw, input2_cache_name=name))

    def clip_score_of_latents(self, latents: torch.Tensor) -> float:
        """CLIP score (100 x cosine, floored at 0, mean over images) of the images against their prompts."""
        if self.clip is None:
            raise FlexnasError("no CLIP model: pass clip=FOLDER (CLI: --clip FOLDER)")
        if not torch.isfinite(latents).all():
            return math.nan
        return self.clip.score(self.loaded.decode(latents), self.loaded.prompts(0, len(latents)))

    def wall(self, plan: Plan | None, images: int = 16, repeats: int = 3) -> float:
        """Median seconds to generate ``images`` images under ``plan`` (None = teacher)."""
        return measure_wall(lambda: self.loaded.latents(plan, n=images), repeats=repeats)

    def teacher_wall(self, images: int = 16, repeats: int = 3) -> float:
        if images not in self._teacher_wall:
            self._teacher_wall[images] = self.wall(None, images, repeats)
        return self._teacher_wall[images]

    def score_latents(self, plan: Plan, latents: torch.Tensor) -> dict[str, Any]:
        """rFID, FID to real (None without real statistics), MACs and MACs ratio of ``plan``'s latents."""
        out: dict[str, Any] = {
            "rfid": self.rfid_of_latents(latents),
            "fid_to_real": self.fid_to_real_of_latents(latents),
            "macs": self.macs.plan_macs(plan),
            "macs_ratio": self.macs.ratio(plan),
        }
        if self.macs.decode is not None:
            out["decode_macs"] = self.macs.decode
        if self.clip is not None:
            out["clip_score"] = self.clip_score_of_latents(latents)
        return out

    def evaluate(self, plan: Plan, wall_images: int = 0, repeats: int = 3) -> dict[str, Any]:
        """All objectives of ``plan`` as one dict (wall-clock only when ``wall_images`` > 0)."""
        out = self.score_latents(plan, self.loaded.latents(self.check_plan(plan), n=self.n))
        if wall_images > 0:
            w, tw = self.wall(plan, wall_images, repeats), self.teacher_wall(wall_images, repeats)
            out.update(wall_s=w, teacher_wall_s=tw, wall_ratio=w / tw)
        return out


def rfid(plan: Plan, problem: Problem | LoadedProblem, images: int | None = None, **kw: Any) -> float:
    """rFID of ``plan`` on ``problem`` (teacher statistics cached on disk)."""
    return Evaluator(problem, images, **kw).rfid(plan)
