"""Process-level tuning for CPU runs.

glibc's malloc serves every block above its mmap threshold (at most 32 MB by default) with a
fresh ``mmap`` and gives it back on ``free``. Full-resolution pyramid feature maps are such
blocks, so every layer of every forward pass page-faults its output in again: measured on 2 cores
that was ~40% of inference wall time (as system time) and ~8% of training. Keeping large blocks
in the heap instead (what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do when set
before start-up) removes it, at the price of the process holding on to freed memory: long
runs call ``release_memory`` between stages so that one stage's freed heap does not add to the
next one's peak.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import os
import sys

__all__ = ["release_memory", "tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30
_TRIM_THRESHOLD = 2**31 - 1  # the largest C int
OPT_OUT = "SNIPER_KEEP_MALLOC"


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (Linux/glibc only; a no-op
    elsewhere, when ``SNIPER_KEEP_MALLOC=1``, or when the user set glibc's own variables).
    Returns True when the thresholds were changed. The ``sniper`` CLI calls it at start-up."""
    if not sys.platform.startswith("linux") or os.environ.get(OPT_OUT) == "1":
        return False
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return False  # the user's explicit choice wins
    mallopt = _libc_function("mallopt")
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def release_memory() -> None:
    """Collect garbage and hand the heap's free pages back to the OS (glibc ``malloc_trim``)."""
    gc.collect()
    trim = _libc_function("malloc_trim") if sys.platform.startswith("linux") else None
    if trim is not None:
        trim.argtypes = [ctypes.c_size_t]
        trim(0)


@functools.cache
def _libc_function(name: str):
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):  # not glibc (musl, macOS): no such function
        return None
