"""The ``flexnas`` command line.

Every user error is a ``FlexnasError``: printed as one line, exit status 2, and no
file that existed before the command is overwritten (``flexnas plot RUN`` redraws the
run's own ``pareto.png`` unless given ``--out``). ``args`` holds what commands share,
``commands`` and ``search`` the commands, ``parser`` the options. May import every layer.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads: 2-core machines slow down 5-10x without

from flexnas.cli import search  # noqa: E402, F401 - registers the search command
from flexnas.cli.commands import COMMANDS  # noqa: E402
from flexnas.cli.parser import build_parser  # noqa: E402
from flexnas.errors import FlexnasError  # noqa: E402

# upper bounds checked before any work: beyond them memory or time runs out long before a result
LIMITS = {"images": (50_000, "torch-fidelity's own FID protocol uses 50,000"),
          "rescore_images": (50_000, "torch-fidelity's own FID protocol uses 50,000"),
          "promote_images": (50_000, "torch-fidelity's own FID protocol uses 50,000"),
          "wall_images": (10_000, "a wall-clock measurement needs a few batches"),
          "grid_images": (1_024, "a grid image of more is unreadable"),
          "pop": (10_000, "each generation evaluates the whole population"),
          "gens": (10_000, "resume with --gens to extend a run"),
          "batch_size": (4_096, "larger batches only cost memory"),
          "workers": (256, "each worker loads its own model")}


def _check_limits(args: argparse.Namespace) -> None:
    for name, (high, why) in LIMITS.items():
        value = getattr(args, name, None)
        if isinstance(value, (int, float)) and value > high:
            raise FlexnasError(f"--{name.replace('_', '-')} {value} is over the limit of {high:,} ({why})")


def _setup_torch(threads: int | None) -> None:
    if threads is not None and threads < 1:
        raise FlexnasError(f"--threads must be at least 1, got {threads}")
    cores = os.cpu_count() or 1
    if threads is not None and threads > 4 * cores:
        raise FlexnasError(f"--threads {threads} is more than 4x this machine's {cores} cores: use at most {cores}")
    import torch

    torch.set_num_threads(threads or max(1, min(2, os.cpu_count() or 1)))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_limits(args)
        _setup_torch(args.threads)
        rc = COMMANDS[args.command](args)
        sys.stdout.flush()  # inside the try: a reader that left is seen here, not at interpreter exit
        return rc
    except FlexnasError as e:
        print(f"flexnas: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader left (e.g. `| head`): end quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # a path the user named cannot be read or written
        where = f" {e.filename}" if e.filename else ""
        print(f"flexnas: error: cannot use{where}: {e.strerror or e}: check the path and its permissions",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("flexnas: interrupted", file=sys.stderr)
        return 130
