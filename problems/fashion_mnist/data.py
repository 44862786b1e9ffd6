"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (offline)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from flexnas.errors import FlexnasError

DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
           "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()


def load_split(split: str = "train", data_dir: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N,28,28], labels uint8 [N])`` for ``train`` or ``test``."""
    if split not in ("train", "test"):
        raise FlexnasError(f"unknown Fashion-MNIST split {split!r}: use 'train' or 'test'")
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    prefix = "train" if split == "train" else "t10k"
    img, lab = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    if not img.is_file() or not lab.is_file():
        raise FlexnasError(f"Fashion-MNIST not found in {root}: run 'apt-get install dataset-fashion-mnist' "
                           "(or set FASHION_MNIST_DIR)")
    try:
        return _read_idx(img), _read_idx(lab)
    except (OSError, EOFError, ValueError, IndexError) as e:
        raise FlexnasError(f"Fashion-MNIST files in {root} are unreadable ({e}): "
                           "reinstall with 'apt-get install --reinstall dataset-fashion-mnist'") from None
