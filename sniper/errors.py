"""User-facing errors. The CLI prints these as one clear line, never a traceback."""

from __future__ import annotations


class SniperError(Exception):
    """Base class of errors caused by input or configuration, not by a bug."""


class CocoFormatError(SniperError):
    """A COCO JSON file is malformed; the message names the record and the problem."""


class BadImageError(SniperError):
    """An image is missing, unreadable, too large, or outside the image root."""

    def __init__(self, file: str, reason: str) -> None:
        super().__init__(f"{file}: {reason}")
        self.file = file
        self.reason = reason
