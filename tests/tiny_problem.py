"""A test-only problem factory: the embedded Fashion-MNIST problem cut down to T=10 and 8 images.

Used as ``--problem tiny_problem:make_problem`` (the tests put this folder on ``sys.path``).
With ``FLEXNAS_TEST_PIPELINE`` set, the pipeline loads from that folder: the tests point it
at a snapshot of the embedded weights, so every process of a test module (Dask workers
included) samples the same model even while a training run rewrites the shipped weights.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any


def make_problem(**overrides: Any):
    import problems.fashion_mnist as fm

    kw: dict[str, Any] = dict(T=10, num_images=8, batch_size=8, rescore_images={})
    folder = os.environ.get("FLEXNAS_TEST_PIPELINE")
    if folder:
        kw["load_pipeline"] = functools.partial(fm.load_pipeline, Path(folder))
    kw.update(overrides)
    return fm.make_problem(**kw)
