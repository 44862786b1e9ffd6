"""One exception type for every user-facing error.

The CLI prints ``FlexnasError`` as a single line and exits non-zero, so messages
must name the problem and what to do about it.
"""


class FlexnasError(Exception):
    """A bad input or a missing resource, explained in one line."""
