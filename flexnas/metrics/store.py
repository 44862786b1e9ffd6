"""The evaluation store: features of every plan's images, batch by batch, on disk (docs/DESIGN.md, section 5).

Images are generated batch by batch, batch ``b`` from the seed ``seed + b``, so the
first ``m`` images of an ``n``-image evaluation are the ``m``-image evaluation. The
store keeps each batch's features (plus the seconds and denoiser calls it cost) in one
file per batch, written atomically; asking for more images of a plan samples only the
batches it lacks. A search screens on 64 images and re-scores on 2,000 from the same
store; the benchmark's every section reads one store. A damaged batch file is a miss.
A problem may ship a read-only store of the same layout (``Problem.shipped_features``), read
where the store lacks a batch: the identity in the folder name makes any other setting miss it.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flexnas.engine.steps import StepCounter
from flexnas.metrics.features import to_uint8_rgb
from flexnas.models.loaded import LoadedModel
from flexnas.models.lockstep import latents_many
from flexnas.plan.plan import Plan, StepKind


def plan_key(plan: Plan) -> str:
    """What a plan's images depend on: its step sequence (two segmentations of one sequence share images) and
    whether a ControlNet's residuals are reused."""
    desc = [plan.scheduler, plan.T, plan.null_mode, plan.strip()]
    desc = json.dumps(desc + ["controlnet_reuse"] if plan.controlnet_reuse else desc)
    return hashlib.sha256(desc.encode()).hexdigest()[:20]


class FeatureStore:
    """Per-plan feature arrays of the problem's fixed-noise images (``root`` None: in memory only)."""

    def __init__(self, loaded: LoadedModel, extractor: str, extractor_kw: dict[str, Any], namespace: str,
                 root: str | Path | None = None, prefixes: PrefixStore | None = None,
                 shipped: str | Path | None = None):
        from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
        from torch_fidelity.utils import create_feature_extractor

        self.loaded, self.prefixes = loaded, prefixes
        layer = FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric("fid")
        kw = {k: v for k, v in extractor_kw.items() if k != "feature_extractor"}
        self.extractor = create_feature_extractor(extractor, [layer], cuda=loaded.device.type == "cuda", verbose=False,
                                                  **kw)
        self.extractor.eval()
        self.root = Path(root) / namespace if root is not None else None
        self.shipped = Path(shipped) / namespace if shipped is not None else None
        self._memory: dict[tuple[str, int, int], dict[str, Any]] = {}

    # ------------------------------------------------------------------ batches
    @staticmethod
    def _path(root: Path | None, key: str, start: int, stop: int) -> Path | None:
        return None if root is None else root / key / f"{start:07d}-{stop:07d}.npz"

    def _load(self, key: str, start: int, stop: int) -> dict[str, Any] | None:
        if (key, start, stop) in self._memory:
            return self._memory[(key, start, stop)]
        for root in (self.root, self.shipped):
            path = self._path(root, key, start, stop)
            if path is None or not path.is_file():
                continue
            try:
                with np.load(path) as d:
                    item = {k: d[k] for k in ("features", "sample_s", "feature_s", "calls")}
            except (OSError, ValueError, KeyError, EOFError):
                continue  # damaged: the next root's, else sampled again
            self._memory[(key, start, stop)] = item
            return item
        return None

    def _save(self, key: str, start: int, stop: int, item: dict[str, Any]) -> None:
        self._memory[(key, start, stop)] = item
        path = self._path(self.root, key, start, stop)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
            np.savez(tmp, **item)
            os.replace(tmp, path)

    @torch.no_grad()
    def _compute(self, plan: Plan, start: int, stop: int) -> dict[str, Any]:
        counter = StepCounter()
        t0 = time.perf_counter()
        latents = self.loaded.latents(plan, n=stop, start=start, counter=counter, prefixes=self.prefixes)
        return self._item(latents, time.perf_counter() - t0, counter)

    def _item(self, latents: torch.Tensor, sample_s: float, counter: StepCounter) -> dict[str, Any]:
        t1 = time.perf_counter()
        feats = self.embed(latents)
        return {"features": feats, "sample_s": np.float64(sample_s), "feature_s": np.float64(time.perf_counter() - t1),
                "calls": np.int64(counter.calls)}

    def fill(self, plans: list[Plan], n: int) -> None:
        """Sample and store the batches of ``plans`` missing for ``n`` images, the plans of each batch
        together in lockstep (``flexnas.models.lockstep``; a batch's seconds are split evenly among them)."""
        for start, stop in self.loaded.batches(n):
            todo: dict[str, Plan] = {}
            for plan in plans:
                key = plan_key(plan)
                if key not in todo and self._load(key, start, stop) is None:
                    todo[key] = plan
            if not todo:
                continue
            counters = [StepCounter() for _ in todo]
            t0 = time.perf_counter()
            xs = latents_many(self.loaded, list(todo.values()), n=stop, start=start, counters=counters,
                              prefixes=self.prefixes, batch=self.loaded.lockstep)
            share = (time.perf_counter() - t0) / len(todo)
            for key, x, counter in zip(todo, xs, counters):
                self._save(key, start, stop, self._item(x, share, counter))

    @torch.no_grad()
    def embed(self, latents: torch.Tensor) -> np.ndarray:
        """Features of the images of final ``latents`` (NaN rows if the sampler diverged: every measure is inf)."""
        images = self.loaded.decode(latents)
        feats = self.extractor(to_uint8_rgb(torch.nan_to_num(images)).to(self.loaded.device))[0].double().cpu().numpy()
        if not torch.isfinite(latents).all():  # inf survives decoding as a clamped pixel: test the latents
            feats[:] = np.nan
        return feats

    def batches(self, plan: Plan, n: int) -> list[dict[str, Any]]:
        """The stored batches covering images ``0..n`` of ``plan`` (sampling the missing ones)."""
        key, out = plan_key(plan), []
        for start, stop in self.loaded.batches(n):
            item = self._load(key, start, stop)
            if item is None:
                item = self._compute(plan, start, stop)
                self._save(key, start, stop, item)
            out.append(item)
        return out

    def has(self, plan: Plan, n: int) -> bool:
        key = plan_key(plan)
        return all(self._load(key, a, b) is not None for a, b in self.loaded.batches(n))

    def features(self, plan: Plan, n: int) -> np.ndarray:
        """Features ``[n, d]`` of the first ``n`` images of ``plan`` (NaN rows where sampling diverged)."""
        return np.concatenate([b["features"] for b in self.batches(plan, n)])

    def cost(self, plan: Plan, n: int) -> dict[str, float]:
        """Seconds and denoiser calls the first ``n`` images of ``plan`` took when they were sampled."""
        bs = self.batches(plan, n)
        return {"sample_s": float(sum(b["sample_s"] for b in bs)), "feature_s": float(sum(b["feature_s"] for b in bs)),
                "calls": int(sum(b["calls"] for b in bs))}


def _tensors(obj: Any) -> list[torch.Tensor]:
    """The tensors in a module output (a tensor, or tuples, lists and dicts of them)."""
    if torch.is_tensor(obj):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    return [t for o in obj for t in _tensors(o)] if isinstance(obj, (tuple, list)) else []


class PrefixStore:
    """Sampler states before active steps, keyed by the steps that led there (LRU, bounded in bytes).

    Candidates whose step sequences agree up to an active step (FULL or PARTIAL) share the
    sampler's state there: the latents, the generator state (stochastic samplers) and, before
    a PARTIAL step, the feature cache the last FULL step filled (what a PARTIAL step reads; a
    state before a FULL step keeps none and serves only plans that run FULL there). States
    taken after the same FULL step share its cached tensors, which are counted once. Keys are
    step sequences, not segments, so plans of different N (or with skipped segments) share too.
    """

    def __init__(self, max_bytes: int = 2 * 2**30):
        self.max_bytes, self.bytes = max_bytes, 0
        self._items: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor, dict | None]] = OrderedDict()
        self._refs: dict[int, int] = {}  # storage of a stored tensor (data pointer) -> tensors of states holding it
        self.hits = 0
        self.steps_saved = 0  # base steps not re-run thanks to a hit

    @staticmethod
    def _key(plan: Plan, i: int, batch_key: tuple) -> tuple:
        return (plan.scheduler, plan.T, plan.null_mode, plan.steps[:i], batch_key)

    def _count(self, item: tuple, sign: int) -> None:
        x, _, cache = item
        for t in [x, *_tensors(cache or {})]:  # by storage: a lockstep call's features are views of one batch
            storage = t.untyped_storage()
            key = storage.data_ptr()
            n = self._refs.get(key, 0) + sign
            if n == 0 or (sign > 0 and n == 1):  # first holder added, or last holder gone
                self.bytes += sign * storage.nbytes()
            if n:
                self._refs[key] = n
            else:
                self._refs.pop(key, None)

    def put(self, plan: Plan, i: int, batch_key: tuple, x: torch.Tensor, g_state: torch.Tensor,
            cache: dict) -> None:
        """Store the state before active step ``i`` of ``plan`` (``cache``: the live feature cache)."""
        key = self._key(plan, i, batch_key)
        if key in self._items and (self._items[key][2] is not None or plan.steps[i].kind is StepKind.FULL):
            self._items.move_to_end(key)
            return
        if key in self._items:  # held without a cache (taken before a FULL step): this one serves PARTIAL too
            self._count(self._items.pop(key), -1)
        item = (x.detach().clone(), g_state, None if plan.steps[i].kind is StepKind.FULL else dict(cache))
        self._items[key] = item
        self._count(item, +1)
        while self.bytes > self.max_bytes and self._items:
            self._count(self._items.popitem(last=False)[1], -1)

    def longest(self, plan: Plan, batch_key: tuple) -> tuple[int, torch.Tensor, torch.Tensor, dict] | None:
        """(base step, latents, generator state, feature cache) at the latest stored active step of ``plan``."""
        steps = plan.steps
        for i in range(len(steps) - 1, 0, -1):
            if steps[i].kind is StepKind.NULL:
                continue
            key = self._key(plan, i, batch_key)
            item = self._items.get(key)
            if item is not None and (item[2] is not None or steps[i].kind is StepKind.FULL):
                self._items.move_to_end(key)
                self.hits += 1
                self.steps_saved += i
                return i, item[0].clone(), item[1], dict(item[2] or {})
        return None
