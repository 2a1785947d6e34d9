"""The one exception type for bad user input (data or config).

The command-line entry points catch it and print ``error: <message>`` with exit status 2, so every
message must be a single line that names the offending file or key.
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input from the user: a data file, a data set layout or a config value."""


def one_line(exc: BaseException) -> str:
    """The user-facing message of ``exc`` on one line.

    An error raised in a DataLoader worker comes back re-raised with the worker's traceback appended
    to the message; the original message is then the text after the last ``InputError:``.
    """
    text = str(exc)
    marker = f"{type(exc).__name__}: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return " ".join(text.split())
