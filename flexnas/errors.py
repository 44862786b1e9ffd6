"""One exception type for every user-facing error.

The CLI prints ``FlexnasError`` as a single line and exits non-zero, so messages
must name the problem and what to do about it.
"""


class FlexnasError(Exception):
    """A bad input or a missing resource, explained in one line."""


def report_errors(fn, *args, prog: str = "flexnas"):  # noqa: ANN001, ANN201 - any callable, its result
    """Run ``fn(*args)``; a ``FlexnasError`` becomes one line on stderr and exit status 2."""
    import sys

    try:
        return fn(*args) or 0
    except FlexnasError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2


def writable_folder(folder):  # noqa: ANN001, ANN201 - a path
    """Make ``folder`` (and parents) and prove it writable, or raise one line saying why."""
    import tempfile
    from pathlib import Path

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise FlexnasError(f"cannot write into {folder}: {e.strerror or e}: choose a writable --out") from None
    return folder
