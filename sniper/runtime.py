"""Process-level tuning for CPU runs.

glibc's malloc serves every block above its mmap threshold (at most 32 MB by default) with a
fresh ``mmap`` and gives it back on ``free``. Full-resolution pyramid feature maps are such
blocks, so every layer of every forward pass page-faults its output in again: measured on 2 cores
that was ~40% of inference wall time (as system time) and ~8% of training. Keeping large blocks
in the heap instead (what ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` do when set
before start-up) removes it, at the price of the process holding on to freed memory: long
runs call ``release_memory`` between stages so that one stage's freed heap does not add to the
next one's peak.

Threads (``configure_threads``, docs/performance.md): torch's OpenMP pool (libgomp) starts one
thread per core it sees and, by default, lets idle threads busy-wait for ~3 ms before sleeping.
Alone that is harmless; two jobs at once on the same cores each burn the other's time slices
spinning, and every parallel region then waits for a thread that is not running (measured: 2
trainings on 2 cores, 0.83 s/iter alone -> 4.2-4.6 s/iter each, single iterations up to 20 s). So the CLI sets, before torch is
imported, a thread count from the cores this process may actually use and a passive wait
policy, leaving every variable the user set alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import math
import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ThreadSettings",
    "apply_torch_threads",
    "configure_threads",
    "parse_cpu_max",
    "release_memory",
    "tune_malloc",
    "usable_cores",
]

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


# ---------------------------------------------------------------- threads

THREADS_VAR = "SNIPER_THREADS"  # auto (default) | N (intra-op threads) | off (touch nothing)
# Pool sizes of the libraries torch and numpy load: libgomp (torch's ATen and MKL's GNU threading
# layer) and numpy's OpenBLAS. Each reads its variable once, when it is loaded.
COUNT_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
# PASSIVE: an idle OpenMP thread sleeps at once instead of spinning (libgomp: spin count 0;
# Intel's libiomp reads the same variable). Measured on this project's 2-core VM with
# benchmarks/concurrency.py (cpu_small `sniper train`, s/iter; docs/performance.md):
#   two trainings at once:  libgomp default 4.2-4.6 s/iter each (0.18-0.20 of solo), PASSIVE
#                           1.3-1.5 (0.61-0.71); GOMP_SPINCOUNT=10000 alone (~0.1 ms spin) 3.5-3.7
#   training + a predict:   default: train 0.12, predict 0.27 of solo; PASSIVE 0.79 / 0.75
#   alone:                  PASSIVE costs +8% per training iteration in the benchmark run (7
#                           interleaved pairs: median +18%, range +2..+37%; a VM's vCPU is slow
#                           to wake), prediction +1%. Spin compromises did not buy it back:
#                           PASSIVE + GOMP_SPINCOUNT=1000 or 3000 were no faster alone than
#                           PASSIVE, and any spin long enough to matter (10000) gives most of the
#                           concurrent slowdown back. So PASSIVE, with no spin; a dedicated machine
#                           can opt out (OMP_WAIT_POLICY=ACTIVE, or SNIPER_THREADS=off).
# Thread binding (OMP_PROC_BIND, GOMP_CPU_AFFINITY) is deliberately not set: two jobs would bind
# their threads to the same first cores.
WAIT_VARS = {"OMP_WAIT_POLICY": "PASSIVE"}
# A user who set any of these chose how OpenMP threads wait: no wait policy is added then.
USER_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


@dataclass(frozen=True)
class ThreadSettings:
    """What ``configure_threads`` chose, and why."""

    threads: int | None  # intra-op threads torch/BLAS will use; None: left to the libraries ("off")
    cores: int  # cores this process may use (affinity mask, cgroup CPU quota)
    reason: str  # how ``threads`` was chosen, for logs and docs
    set_env: dict[str, str] = field(default_factory=dict)  # the variables this call set
    torch_was_loaded: bool = False  # torch came first: its OpenMP pool ignores the wait policy


def parse_cpu_max(text: str) -> float | None:
    """The CPU limit in cores of a cgroup v2 ``cpu.max`` ("QUOTA PERIOD", or "max PERIOD" for
    none); None when there is no limit or the text is not understood."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota, period = int(parts[0]), int(parts[1]) if len(parts) > 1 else 100_000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The container's CPU quota in cores (cgroup v2 ``cpu.max``, else v1 ``cfs_quota_us``), or None.
    A quota is not visible in the affinity mask: a container limited to 2 CPUs of a 64-core host
    still sees 64, and 64 threads sharing 2 CPUs' worth of time is the oversubscription this avoids."""
    try:
        return parse_cpu_max((root / "cpu.max").read_text())
    except OSError:
        pass
    for v1 in ("cpu", "cpu,cpuacct"):
        try:
            quota = (root / v1 / "cpu.cfs_quota_us").read_text().strip()
            period = (root / v1 / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            continue
        return parse_cpu_max(f"{quota if quota != '-1' else 'max'} {period}")
    return None


def usable_cores(affinity: int | None = None, quota: float | None = None) -> int:
    """Cores this process may run on: its affinity mask (``taskset``, cpusets; not ``os.cpu_count()``,
    which counts the whole machine), capped by a cgroup CPU quota rounded up. Arguments override
    what is read from the system (tests)."""
    if affinity is None:
        getaffinity = getattr(os, "sched_getaffinity", None)  # Linux only
        affinity = len(getaffinity(0)) if getaffinity is not None else (os.cpu_count() or 1)
    if quota is None:
        quota = cgroup_cpu_limit() if sys.platform.startswith("linux") else None
    cores = max(1, affinity)
    return min(cores, max(1, math.ceil(quota))) if quota else cores


def _positive_int(value: str | None) -> int | None:
    try:
        n = int(value) if value is not None else 0
    except ValueError:
        return None
    return n if n > 0 else None


def configure_threads(
    environ: MutableMapping[str, str] | None = None, *, cores: int | None = None
) -> ThreadSettings:
    """Choose thread counts and the OpenMP wait policy for this process and its children.

    Must run before torch (and numpy) are imported: libgomp, MKL and OpenBLAS read these
    variables once, at load; subprocesses (spawned pools, ``torchrun`` ranks) inherit them.
    ``SNIPER_THREADS``: ``auto`` (default) uses one thread per usable core, an integer N uses N,
    ``off`` changes nothing. A variable the user set (OMP_NUM_THREADS, OMP_WAIT_POLICY, ...) is
    never changed, a user's OMP_NUM_THREADS is the thread count, and a user's GOMP_SPINCOUNT or
    KMP_BLOCKTIME is a wait policy too (PASSIVE is then not added). ``environ`` / ``cores``
    replace ``os.environ`` and the system's core count (tests). The ``sniper`` CLI calls it first."""
    env = os.environ if environ is None else environ
    torch_loaded = "torch" in sys.modules
    n_cores = usable_cores() if cores is None else cores
    requested = env.get(THREADS_VAR, "auto").strip().lower()
    if requested == "off":
        return ThreadSettings(None, n_cores, f"{THREADS_VAR}=off: libraries' defaults", {}, torch_loaded)
    threads, reason = n_cores, f"auto: {n_cores} usable core(s)"
    if requested not in ("", "auto"):
        n = _positive_int(requested)
        if n is None:
            msg = f"sniper: ignoring {THREADS_VAR}={requested!r} (expected auto, off or an integer >= 1)"
            print(msg, file=sys.stderr)
        else:
            threads, reason = n, f"{THREADS_VAR}={n}"
    user_omp = _positive_int(env.get("OMP_NUM_THREADS"))
    if user_omp is not None:  # the user's own OpenMP setting is what torch will use: report it
        threads, reason = user_omp, f"OMP_NUM_THREADS={user_omp} set by the user"
    wanted = dict.fromkeys(COUNT_VARS, str(threads))
    if not any(k in env for k in USER_WAIT_VARS):
        wanted.update(WAIT_VARS)
    set_env = {k: v for k, v in wanted.items() if k not in env}
    env.update(set_env)
    settings = ThreadSettings(threads, n_cores, reason, set_env, torch_loaded)
    if environ is None:
        apply_torch_threads(settings)
    return settings


def apply_torch_threads(settings: ThreadSettings) -> None:
    """Make an already imported torch use ``settings.threads`` intra-op threads (a no-op when torch
    is not loaded yet: it reads OMP_NUM_THREADS itself). Only needed where torch came first, e.g.
    a script that imports torch and then calls ``configure_threads``. The inter-op pool (used only
    by ``torch.jit.fork``-style parallelism) is sized to match when it has not started yet."""
    torch = sys.modules.get("torch")  # no import here: sniper.runtime stays torch-free
    if torch is None or settings.threads is None:
        return
    if torch.get_num_threads() != settings.threads:
        torch.set_num_threads(settings.threads)
    try:
        if torch.get_num_interop_threads() != settings.threads:
            torch.set_num_interop_threads(settings.threads)
    except RuntimeError:  # the inter-op pool already started: its size is fixed
        pass
