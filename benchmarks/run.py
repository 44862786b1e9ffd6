"""Regenerate ``benchmarks/REPORT.md`` and its figures: teacher quality, then plans vs baselines.

    python -m benchmarks.run [--problem fashion-mnist] [--quick]

The full run targets <= 120 minutes on 2 cores (see REPORT.md, findings); ``--quick`` checks the whole pipeline in a
few minutes on tiny settings (its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from benchmarks import compare, teacher_quality
from benchmarks.common import REPORT, RESULTS


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problem", default="fashion-mnist")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--report", default=str(REPORT))
    p.add_argument("--results", default=str(RESULTS))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    common = ["--report", args.report, "--results", args.results, "--threads", str(args.threads)]
    quick = ["--quick"] if args.quick else []
    if args.problem == "fashion-mnist":
        grid = ["--no-grid"] if args.quick else []  # a quick run must not replace the README's grid
        compiled = [] if args.quick else ["--compile"]  # the images benchmarks.compare samples (Settings.compile)
        rc = teacher_quality.main([*common, *quick, *grid, *compiled])
        if rc:
            return rc
    rc = compare.main(["--problem", args.problem, *common, *quick,
                       "--figures", str(Path(args.report).parent / "figures")])
    return rc


if __name__ == "__main__":
    sys.exit(main())
