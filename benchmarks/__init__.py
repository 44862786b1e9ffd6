"""Benchmarks of flexnas (``python -m benchmarks.<name>``); results in ``benchmarks/REPORT.md``."""

import os

# before any benchmark imports torch: 2-thread OpenMP spins and slows several-fold when another process is busy
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
