"""Fidelity and quality measures of a plan, computed from feature arrays (docs/DESIGN.md, section 4).

Every measure compares the features of a candidate's images with a reference: the
teacher's images from the same noise (fidelity: "the same images, faster") or real
images (quality: "the best images per unit of compute"). All of them come from one
feature array per plan, so a plan sampled once is scored by every measure, and the
first ``m`` rows of an ``n``-image array are the ``m``-image evaluation (images are
generated batch by batch from per-batch seeds). FID and KID are torch-fidelity's own
public statistics functions.

- ``rfid``: FID between candidate and teacher features (the paper's objective).
- ``paired``: mean Euclidean distance between each candidate image's features and the
  teacher image's from the same noise. It uses the pairing that FID throws away, so it
  is a mean of independent terms: low variance, no small-sample bias.
- ``kid_teacher`` / ``kid_to_real``: KID (polynomial-kernel MMD, unbiased) x 1000.
- ``fid_to_real``: FID against the problem's real-image statistics.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from flexnas.errors import FlexnasError

GOALS = ("quality", "fidelity")


@dataclass(frozen=True)
class Reference:
    """Real-image features or statistics a quality measure compares against."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None

    @classmethod
    def load(cls, path: str | Path, extractor: str) -> "Reference | None":
        """The statistics (and features, when shipped) in ``path``; None if they belong to another extractor."""
        try:
            with np.load(path) as d:
                if "extractor" in d and str(d["extractor"]) != extractor:
                    return None
                feats = d["features"].astype(np.float64) if "features" in d else None
                return cls(d["mu"].astype(np.float64), d["sigma"].astype(np.float64), feats)
        except (OSError, ValueError, KeyError) as e:
            raise FlexnasError(f"real-image statistics {path} are unreadable ({type(e).__name__}): they need "
                               "arrays mu, sigma and extractor") from None


def statistics(features: np.ndarray) -> dict[str, np.ndarray]:
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(torch.as_tensor(np.asarray(features, dtype=np.float64)))


def fid(stats_1: dict[str, np.ndarray], stats_2: dict[str, np.ndarray]) -> float:
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric

    return max(0.0, float(fid_statistics_to_metric(stats_1, stats_2, verbose=False)[KEY_METRIC_FID]))


def kid(features_1: np.ndarray, features_2: np.ndarray, subsets: int = 100) -> float:
    """KID x 1000 with torch-fidelity's defaults; subsets as large as the smaller set allows (at most 1000)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, kid_features_to_metric

    size = min(len(features_1), len(features_2), 1000)
    out = kid_features_to_metric(torch.as_tensor(features_1), torch.as_tensor(features_2), kid_subsets=subsets,
                                 kid_subset_size=size, verbose=False, rng_seed=2020)
    return 1000.0 * float(out[KEY_METRIC_KID_MEAN])


def paired_distance(features: np.ndarray, teacher: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(features, np.float64) - np.asarray(teacher, np.float64), axis=1).mean())


@dataclass(frozen=True)
class Measure:
    name: str
    goal: str  # which user goal it serves
    reference: str  # "teacher" or "real"
    fn: Callable[..., float]
    doc: str


def _rfid(f: np.ndarray, teacher: np.ndarray, real: Reference | None) -> float:
    return fid(statistics(f), statistics(teacher))


def _fid_to_real(f: np.ndarray, teacher: np.ndarray | None, real: Reference) -> float:
    return fid(statistics(f), {"mu": real.mu, "sigma": real.sigma})


def _kid_to_real(f: np.ndarray, teacher: np.ndarray | None, real: Reference) -> float:
    if real.features is None:
        raise FlexnasError("kid_to_real needs real-image features: this problem ships statistics only")
    return kid(f, real.features)


MEASURES: dict[str, Measure] = {m.name: m for m in (
    Measure("rfid", "fidelity", "teacher", _rfid, "FID to the teacher's images from the same noise (paper)"),
    Measure("paired", "fidelity", "teacher", lambda f, t, r: paired_distance(f, t),
            "mean feature distance to the teacher's image from the same noise"),
    Measure("kid_teacher", "fidelity", "teacher", lambda f, t, r: kid(f, t), "KID x 1000 to the teacher's images"),
    Measure("fid_to_real", "quality", "real", _fid_to_real, "FID to the real images' statistics"),
    Measure("kid_to_real", "quality", "real", _kid_to_real, "KID x 1000 to real images' features"),
)}

# each goal's ground truth (scored on many images) and its default search measure (chosen by the
# objective study in benchmarks/REPORT.md)
GROUND_TRUTH = {"quality": "fid_to_real", "fidelity": "paired"}
DEFAULT_MEASURE = {"quality": "fid_to_real", "fidelity": "paired"}


def check_measure(name: str, real: Reference | None) -> Measure:
    if name not in MEASURES:
        raise FlexnasError(f"unknown measure {name!r}: choose one of {', '.join(MEASURES)}")
    m = MEASURES[name]
    if m.reference == "real" and real is None:
        raise FlexnasError(f"measure {name} compares with real images, but this problem has no real-image "
                           "statistics for its feature extractor: use a fidelity measure (rfid, paired, kid_teacher)")
    if name == "kid_to_real" and real.features is None:
        raise FlexnasError("measure kid_to_real needs real-image features: this problem ships statistics only")
    return m


def score(names: list[str] | tuple[str, ...], features: np.ndarray, teacher: np.ndarray | None,
          real: Reference | None) -> dict[str, float]:
    """Every measure in ``names`` of one plan's features (``inf`` where its images diverged)."""
    out = {}
    finite = bool(np.isfinite(features).all())
    for name in names:
        m = MEASURES[name]
        if m.reference == "teacher" and teacher is None:
            raise FlexnasError(f"measure {name} needs the teacher's features")
        out[name] = m.fn(features, teacher, real) if finite else math.inf
    return out


def available(real: Reference | None) -> list[str]:
    """The measures this problem can compute."""
    return [n for n, m in MEASURES.items()
            if m.reference == "teacher" or (real is not None and (n != "kid_to_real" or real.features is not None))]
