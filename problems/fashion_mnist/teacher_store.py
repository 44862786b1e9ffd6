"""Sample the teacher's images once and ship their features: ``weights/store``, a read-only feature store.

    python -m problems.fashion_mnist.teacher_store [--images 32,256]

Every fidelity search measures its candidates against the teacher's images from the same noise, and
the teacher (DDIM 100, every step FULL) is the most expensive plan to sample: about 3 min per 256
images on 2 cores. Its features on the problem's first fixed-noise images (eager, CPU, fp32, the
default batch), for the image counts README command 1 screens (32: a batch of its own) and re-scores
on (256: four batches of 64), ship here as the test-set statistics do, so command 1 does not spend
that time. A search under any other setting (device, dtype, compilation, batch, model) has another
identity and samples its own teacher. The files are the store's own (``FeatureStore``).
"""

from __future__ import annotations

import argparse
import shutil
import sys

import torch

from flexnas.errors import report_errors
from flexnas.metrics.evaluator import Evaluator
from problems.fashion_mnist import FEATURE_EXTRACTOR, SHIPPED_FEATURES, make_problem


def compute(counts: list[int]) -> str:
    problem = make_problem(shipped_features=None)
    new = SHIPPED_FEATURES.with_name("store.new")  # the shipped store stays whole until the new one is
    shutil.rmtree(new, ignore_errors=True)
    evaluator = Evaluator(problem, images=max(counts), extractor=FEATURE_EXTRACTOR, cache_root=new)
    for n in counts:
        evaluator.features.features(problem.teacher_plan(), n)
    shutil.rmtree(SHIPPED_FEATURES, ignore_errors=True)  # one namespace: the current identity's
    new.rename(SHIPPED_FEATURES)
    return f"wrote the teacher's features on {counts} images to {SHIPPED_FEATURES / evaluator.identity()}"


def image_counts(text: str) -> list[int]:
    try:
        counts = [int(v) for v in text.split(",")]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"give positive image counts, comma-separated (e.g. 32,256), not {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=image_counts, default=[32, 256], help="image counts, comma-separated")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    return report_errors(lambda: print(compute(args.images)), prog="teacher_store")


if __name__ == "__main__":
    sys.exit(main())
