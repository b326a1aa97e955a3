"""User-facing errors.

Anything a user can cause (a missing file, a bad key, NaN labels, an unknown
element) raises :class:`NNPError` with one line naming the file and the item.
The CLI prints that line and exits non-zero; it never shows a traceback for it.
"""


class NNPError(Exception):
    """An error caused by the user's input, reported as a single line."""
