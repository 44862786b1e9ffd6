"""Compute the Fashion-MNIST test-set feature statistics shipped for FID to real images.

    python -m problems.fashion_mnist.real_stats

torch-fidelity extracts the classifier features and caches their statistics; we copy
them into ``weights/fashion_mnist_test_stats.npz`` (mu, sigma, extractor name).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from flexnas.errors import report_errors
from flexnas.objectives import ImageDataset, fidelity_fid
from problems.fashion_mnist import REAL_STATISTICS
from problems.fashion_mnist.data import load_split
from problems.fashion_mnist.features import NAME


def compute(out: Path = REAL_STATISTICS) -> Path:
    images, _ = load_split("test")
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)
    with tempfile.TemporaryDirectory() as tmp:
        ds = ImageDataset(len(x), lambda: x)
        fidelity_fid(ds, ds, Path(tmp), {"feature_extractor": NAME}, input1_cache_name="real")
        stats = torch.load(Path(tmp) / f"real-{NAME}-stat-fid-features.pt", weights_only=False)
    np.savez(out, mu=stats["mu"], sigma=stats["sigma"], extractor=np.array(NAME), count=np.array(len(x)))
    return out


def main() -> int:
    torch.set_num_threads(1)
    import problems.fashion_mnist.features  # noqa: F401

    return report_errors(lambda: print(f"wrote {compute()}"), prog="real_stats")


if __name__ == "__main__":
    sys.exit(main())
