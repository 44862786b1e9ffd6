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
