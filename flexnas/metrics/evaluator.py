"""Scoring one plan: rFID and FID to real images (flexnas.metrics.measures on stored features), MACs, wall-clock.

rFID compares the features of a candidate's images with the teacher's from the same initial
noise. The teacher's features live in the feature store (``flexnas.metrics.store``) under a name
that hashes everything they depend on (model identity, scheduler, T, eta, seeds, batch
size, conditioning, extractor), so a second evaluation never resamples the teacher; FID
comes from torch-fidelity's public statistics functions.
"""

from __future__ import annotations

import hashlib
import json
import math
import statistics
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from flexnas.errors import FlexnasError
from flexnas.metrics.features import extractor_fingerprint, resolve_extractor
from flexnas.metrics.macs import MacCounter, cache_dir
from flexnas.models.loaded import LoadedModel
from flexnas.models.problem import Problem
from flexnas.plan.plan import Plan


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

    def __init__(self, problem: Problem | LoadedModel, images: int | None = None, extractor: str | None = None,
                 extractor_weights: str | Path | None = None, cache_root: str | Path | None = None,
                 clip: str | Path | None = None):
        self.loaded = problem if isinstance(problem, LoadedModel) else problem.load()
        p = self.loaded.problem
        self.n = p.num_images if images is None else images
        if self.n < 2:
            raise FlexnasError(f"rFID needs at least 2 images, got {self.n}")
        self.extractor = extractor or p.feature_extractor
        self.extractor_kw = resolve_extractor(self.extractor, extractor_weights or p.feature_extractor_weights)
        self.cache_root = Path(cache_root) if cache_root else cache_dir() / "features"
        self._store: Any = None
        self.macs = MacCounter.for_problem(self.loaded)
        self.clip = None
        if clip is not None:
            from flexnas.metrics.clip import ClipScorer

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
        if self.loaded.compiled:  # compiled kernels round differently (within 1e-5): their own images
            extra["compiled"] = True
        if self.loaded.lockstep:  # so do candidates batched into one U-Net call
            extra["lockstep"] = True
        if p.inputs is not None:
            extra["inputs"] = p.inputs.fingerprint()
        if p.prompts:
            extra["prompts"] = hashlib.sha256(json.dumps(self.loaded.prompts(0, n or 10**4)).encode()).hexdigest()
        if extra:  # only problems that have these, so existing keys stay valid
            text += json.dumps(extra, sort_keys=True)
        return f"{p.name}-{hashlib.sha256(text.encode()).hexdigest()[:20]}"

    def store(self, root: str | Path | None = "default", prefixes: Any = None) -> "FeatureStore":
        """A feature store of this problem and extractor (default root: ``cache_root``,
        ``$FLEXNAS_CACHE/features``; None keeps features in memory only)."""
        from flexnas.metrics.store import FeatureStore

        root = self.cache_root if root == "default" else root
        return FeatureStore(self.loaded, self.extractor, self.extractor_kw, self.identity(), root, prefixes,
                            self.loaded.problem.shipped_features)

    @property
    def features(self) -> "FeatureStore":
        """This evaluator's own store (created on first use)."""
        if self._store is None:
            self._store = self.store()
        return self._store

    def reference(self) -> "Reference | None":
        """The problem's real-image statistics in this extractor's space (None without them), read once."""
        from flexnas.metrics.measures import Reference

        if not hasattr(self, "_reference"):
            src = self.loaded.problem.real_statistics
            self._reference = Reference.load(src, self.extractor) if src is not None and Path(src).is_file() else None
        return self._reference

    def ensure_teacher(self) -> None:
        """Sample and store the teacher's features now (no-op when stored)."""
        self.features.features(self.loaded.problem.teacher_plan(), self.n)

    # ------------------------------------------------------------------ metrics
    def _scores(self, names: list[str], latents: torch.Tensor) -> dict[str, float]:
        """Measures of a candidate's first images, against the teacher's first images or real ones."""
        from flexnas.metrics.measures import score

        if "rfid" in names and not torch.isfinite(latents).all():
            warnings.warn("candidate images contain NaN or inf (the sampler diverged): rfid = inf", RuntimeWarning)
        teacher = self.features.features(self.loaded.problem.teacher_plan(), len(latents)) if "rfid" in names else None
        return score(names, self.features.embed(latents), teacher, self.reference())

    def rfid_of_latents(self, latents: torch.Tensor) -> float:
        """rFID of a candidate's final latents (``inf`` with a warning if any value is NaN/inf)."""
        return self._scores(["rfid"], latents)["rfid"]

    def check_plan(self, plan: Plan) -> Plan:
        """Refuse a plan for another base schedule than the problem's (its teacher would not be comparable)."""
        p = self.loaded.problem
        if plan.T != p.T:
            raise FlexnasError(f"the plan's base schedule has T={plan.T} steps but problem {p.name} samples with "
                               f"T={p.T}: make the plan with --base-steps {p.T}, or pass --steps {plan.T}")
        return plan

    def rfid(self, plan: Plan) -> float:
        return self.rfid_of_latents(self.loaded.latents(self.check_plan(plan), n=self.n))

    def fid_to_real_of_latents(self, latents: torch.Tensor) -> float | None:
        """FID of the images against the problem's real-image statistics (None when it has none)."""
        return None if self.reference() is None else self._scores(["fid_to_real"], latents)["fid_to_real"]

    def clip_score_of_latents(self, latents: torch.Tensor) -> float:
        """CLIP score (100 x cosine, floored at 0, mean over images) of the images against their prompts."""
        if self.clip is None:
            raise FlexnasError("no CLIP model: pass clip=FOLDER (CLI: --clip FOLDER)")
        if not torch.isfinite(latents).all():
            return math.nan
        return self.clip.score(self.loaded.decode(latents), self.loaded.prompts(0, len(latents)))

    def wall_ratios(self, plans: list[Plan], images: int = 16, rounds: int = 3, seed: int = 0) -> list[dict[str, Any]]:
        """Each plan's wall-clock against the teacher's: ``wall_s``, ``teacher_wall_s`` (medians over the
        rounds), ``round_ratios`` (each round's plan time over that round's teacher time) and ``wall_ratio``
        (their median).

        A warm-up round of the plans (every plan runs FULL steps, so the teacher's kernels warm too), then
        ``rounds`` rounds, each timing every plan once in its own shuffled order between two timings of
        the teacher (their mean is the round's teacher time; adjacent rounds share the timing between
        them, so the teacher, the slowest plan, runs ``rounds + 1`` times). Timing the teacher once
        before the plans lets a drift of the machine's speed (another process, clock scaling) move the
        ratios of the plans timed late; interleaved rounds move every ratio alike.
        """
        def once(plan: Plan | None) -> float:
            return measure_wall(lambda: self.loaded.latents(plan, n=images), repeats=1, warmup=0)

        rng = np.random.default_rng(seed)
        times: list[list[float]] = [[] for _ in plans]
        ratios: list[list[float]] = [[] for _ in plans]
        for i in rng.permutation(len(plans)):
            once(plans[i])
        teacher, last = [], once(None)
        for _ in range(rounds):
            took = {int(i): once(plans[i]) for i in rng.permutation(len(plans))}
            now = once(None)
            tw, last = (last + now) / 2, now
            teacher.append(tw)
            for i, t in took.items():
                times[i].append(t)
                ratios[i].append(t / tw)
        return [{"wall_s": statistics.median(times[i]), "teacher_wall_s": statistics.median(teacher),
                 "round_ratios": ratios[i], "wall_ratio": statistics.median(ratios[i])} for i in range(len(plans))]

    def score_latents(self, plan: Plan, latents: torch.Tensor) -> dict[str, Any]:
        """rFID, FID to real (None without real statistics), MACs and MACs ratio of ``plan``'s latents."""
        out: dict[str, Any] = {"fid_to_real": None, **self._scores(
            ["rfid"] + (["fid_to_real"] if self.reference() is not None else []), latents),  # one decode, one embed
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
            out.update(self.wall_ratios([plan], wall_images, repeats)[0])
        return out
