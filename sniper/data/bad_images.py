"""``data.on_bad_image`` for map-style datasets: raise, or replace the item by the next good one."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

from sniper.errors import BadImageError

__all__ = ["BadImagePolicy"]

T = TypeVar("T")


class BadImagePolicy:
    """Applies ``on_bad_image`` ("error" | "skip") to item loading.

    With "skip", an item whose image fails is replaced by the next item of a good image; the
    file is remembered (``bad_files``: file -> reason, in this process) and never tried again.
    """

    def __init__(self, on_bad_image: str, root: str) -> None:
        if on_bad_image not in ("error", "skip"):
            raise ValueError(f"data.on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
        self.on_bad_image = on_bad_image
        self.root = root
        self.bad_files: dict[str, str] = {}
        self.bad_ids: set[int] = set()
        self._new: list[tuple[str, str]] = []

    def newly_bad(self) -> list[tuple[str, str]]:
        """``(file, reason)`` of the files skipped since the last call (to report them upward)."""
        new, self._new = self._new, []
        return new

    def get(self, index: int, n: int, image_id_of: Callable[[int], int], make: Callable[[int], T]) -> T:
        """``make(index)``, or under "skip" that of the first following index (cyclically) whose
        image loads."""
        for _ in range(n):
            image_id = image_id_of(index)
            if image_id not in self.bad_ids:
                try:
                    return make(index)
                except BadImageError as e:
                    if self.on_bad_image == "error":
                        raise
                    self.bad_ids.add(image_id)
                    self.bad_files[e.file] = e.reason
                    self._new.append((e.file, e.reason))
                    warnings.warn(f"skipping bad image {e.file}: {e.reason} (data.on_bad_image=skip)", stacklevel=3)
            index = (index + 1) % n
        raise BadImageError(self.root, "every image of the dataset is bad")
