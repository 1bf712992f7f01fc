"""User-facing errors. The CLI prints these as one clear line, never a traceback.

Every class here survives ``pickle`` (process pools send exceptions back to the parent by
pickling them): a class whose constructor takes more than the message defines ``__reduce__``.
"""

from __future__ import annotations


class SniperError(Exception):
    """Base class of errors caused by input or configuration, not by a bug."""


class CocoFormatError(SniperError):
    """A COCO JSON file is malformed; the message names the record and the problem."""


class ConfigError(SniperError):
    """A config file or ``--set`` override is invalid; the message names the file or key."""


class BadImageError(SniperError):
    """An image is missing, unreadable, too large, or outside the image root."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason

    def __reduce__(self):
        return (type(self), (self.file, self.reason))


class OutputError(SniperError):
    """An output path cannot be written (exists with the wrong kind, not writable, already used)."""
