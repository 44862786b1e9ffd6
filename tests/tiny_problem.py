"""A test-only problem factory: the embedded Fashion-MNIST problem cut down to T=10 and 8 images.

Used as ``--problem tiny_problem:make_problem`` (the tests put this folder on ``sys.path``).
"""

from __future__ import annotations

from typing import Any


def make_problem(**overrides: Any):
    import problems.fashion_mnist

    kw: dict[str, Any] = dict(T=10, num_images=8, batch_size=8)
    kw.update(overrides)
    return problems.fashion_mnist.make_problem(**kw)
