"""Errors raised for bad dataset input: each says what is wrong, in which file, and how to fix it.

All of them derive from ``DataError`` (a ``ValueError``), so callers can catch one type. The message
always has the form ``"<what> (<file>). Fix: <how>"``.
"""
from __future__ import annotations

import os
from typing import Any


class DataError(ValueError):
    """Bad dataset input.

    Args:
        what: what is wrong, e.g. ``"image file is empty (0 bytes)"``.
        file: the file (or folder) at fault; ``None`` leaves the ``(<file>)`` part out.
        fix: what the user should do about it.

    A single positional argument is used verbatim as the message, so the exception survives being
    rebuilt from its text (``torch.utils.data`` re-raises worker errors as ``type(err)(text)``).
    """

    def __init__(self, what: str, file: str | os.PathLike[str] | None = None, fix: str | None = None) -> None:
        self.what = what
        self.file = None if file is None else os.fspath(file)
        self.fix = fix
        super().__init__(format_message(what, self.file, fix))

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.what, self.file, self.fix))


class ImageLoadError(DataError):
    """An image file is missing, empty, not an image, truncated or in an unsupported mode."""


class GroundTruthError(DataError):
    """A ground-truth file is missing, unreadable or inconsistent (keys, lengths, index ranges, boxes)."""


class BoxError(DataError):
    """A query box is malformed or does not fit the query image."""


def format_message(what: str, file: str | None, fix: str | None) -> str:
    """Build ``"<what> (<file>). Fix: <how>"``, leaving out the parts that are ``None``."""
    msg = what if file is None else f"{what} ({file})"
    return msg if fix is None else f"{msg}. Fix: {fix}"
