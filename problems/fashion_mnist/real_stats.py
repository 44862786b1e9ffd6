"""Compute the Fashion-MNIST test-set feature statistics shipped for FID to real images.

    python -m problems.fashion_mnist.real_stats

torch-fidelity's extractor embeds the 10,000 test images; its public statistics function gives
mu and sigma. ``weights/fashion_mnist_test_stats.npz`` holds them, the extractor name and the
features themselves in float16 (for KID to real images).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from flexnas.errors import report_errors
from flexnas.metrics.features import to_uint8_rgb
from flexnas.metrics.measures import statistics
from problems.fashion_mnist import REAL_STATISTICS
from problems.fashion_mnist.data import load_split
from problems.fashion_mnist.features import NAME


def compute(out: Path = REAL_STATISTICS) -> Path:
    from torch_fidelity.utils import create_feature_extractor

    images, _ = load_split("test")
    x = to_uint8_rgb(torch.from_numpy(images).float().div(255).unsqueeze(1))
    extractor = create_feature_extractor(NAME, ["features"], cuda=False, verbose=False).eval()
    feats = torch.cat([extractor(x[i:i + 500])[0] for i in range(0, len(x), 500)]).double()
    stats = statistics(feats.numpy())
    np.savez(out, mu=stats["mu"].astype(np.float32), sigma=stats["sigma"],  # dtypes as torch-fidelity caches them
             extractor=np.array(NAME), count=np.array(len(x)),
             features=feats.numpy().astype(np.float16))
    return out


def main() -> int:
    torch.set_num_threads(1)
    import problems.fashion_mnist.features  # noqa: F401

    return report_errors(lambda: print(f"wrote {compute()}"), prog="real_stats")


if __name__ == "__main__":
    sys.exit(main())
