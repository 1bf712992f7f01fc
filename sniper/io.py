"""Atomic file output: write to a temporary file beside the target, then rename.

An interrupted run therefore never leaves a truncated file under the final name. A run
killed outright (``kill -9``, OOM killer, power loss) cannot delete its temporary file, so
temp names carry their writer: ``.<name>.<pid>-<host>.<random>.tmp``, where ``<host>`` hashes
the host name and the PID namespace (so two containers that share a folder, or two machines
that share a network file system, never mistake each other's PIDs). The next run calls
:func:`remove_stale_temps` on the folders it writes, which deletes exactly the temp files
whose writer can no longer be writing them:

- same host, PID not running (or a zombie): the writer is dead, the file goes at once;
- our own PID: kept (another thread of this process may be writing it right now);
- another host, or a temp file without a PID (written before names carried one): it goes
  only once nothing changed it for ``older_than_s`` (default :data:`TEMP_MAX_AGE_S`), since
  we cannot ask whether that writer still runs.

A PID that was reused by an unrelated process keeps its stale file until that process ends:
erring that way never deletes a file a live writer is using.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import socket
import stat
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "TEMP_MAX_AGE_S", "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_json",
    "atomic_write_text", "owner_is_gone", "owner_tag", "read_json", "remove_stale_temps",
]  # fmt: skip

# Age after which a temp file we cannot attribute to a process on this host counts as
# abandoned. Generous: a live writer on another machine may sit between two writes for long.
TEMP_MAX_AGE_S = 6 * 3600.0

_OWNER = r"(?P<pid>\d+)-(?P<host>[0-9a-f]{8})"
# after ".<name>.": the writer tag, then mkstemp's random part
_TAGGED_REST = re.compile(rf"{_OWNER}\.[A-Za-z0-9_]+\.tmp")
# temp files of atomic_path before names carried a writer: mkstemp's 8 random characters only
_LEGACY_REST = re.compile(r"[a-z0-9_]{8}\.tmp")
_TAGGED = re.compile(rf"\.(?P<name>.+)\.{_TAGGED_REST.pattern}")
_LEGACY = re.compile(rf"\.(?P<name>.+)\.{_LEGACY_REST.pattern}")


@functools.cache
def _host_tag() -> str:
    """8 hex digits naming this host and PID namespace: a PID means something only inside one."""
    ident = socket.gethostname()
    with contextlib.suppress(OSError):
        ident += os.readlink("/proc/self/ns/pid")  # containers on one host have their own PIDs
    return hashlib.sha1(ident.encode()).hexdigest()[:8]


def owner_tag() -> str:
    """``<pid>-<host>``: names this process in temp files and staging folders."""
    return f"{os.getpid()}-{_host_tag()}"


def _pid_running(pid: int) -> bool:
    """Whether ``pid`` is a live process here; unsure counts as running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # PermissionError: it exists, under another user
    # a zombie (killed, not yet reaped by its parent) still answers kill(0) but writes nothing
    with contextlib.suppress(OSError, IndexError):
        stat_line = Path(f"/proc/{pid}/stat").read_text()
        return stat_line.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def owner_is_gone(tag: str | None, changed_at: float, *, older_than_s: float = TEMP_MAX_AGE_S) -> bool:
    """Whether the writer named by ``tag`` (``<pid>-<host>``, see :func:`owner_tag`; None: unknown)
    can no longer be writing a file or folder last changed at ``changed_at`` (epoch seconds)."""
    m = re.fullmatch(_OWNER, tag) if tag is not None else None
    if m is not None and m["host"] == _host_tag():
        pid = int(m["pid"])
        return pid != os.getpid() and not _pid_running(pid)
    return time.time() - changed_at >= older_than_s


def _temp_owner(file_name: str, names: set[str] | None) -> tuple[bool, str | None]:
    """``(is an atomic_path temp file [of one of names], its writer tag or None)``."""
    if names is None:
        for pattern in (_TAGGED, _LEGACY):
            m = pattern.fullmatch(file_name)
            if m is not None:
                return True, f"{m['pid']}-{m['host']}" if pattern is _TAGGED else None
        return False, None
    for name in names:
        prefix = f".{name}."
        if not file_name.startswith(prefix):
            continue
        rest = file_name[len(prefix) :]
        m = _TAGGED_REST.fullmatch(rest)
        if m is not None:
            return True, f"{m['pid']}-{m['host']}"
        if _LEGACY_REST.fullmatch(rest):
            return True, None
    return False, None


def remove_stale_temps(
    folder: str | os.PathLike[str],
    names: Iterable[str] | None = None,
    *,
    older_than_s: float = TEMP_MAX_AGE_S,
) -> int:
    """Delete the temp files :func:`atomic_path` left in ``folder`` (not recursive) when its
    writer died; return how many. ``names``: only the temp files of these target names
    (e.g. ``["chips.parquet"]``), else every atomic_path temp file in the folder. A temp file
    whose writer may still run is kept (see the module docstring). A missing folder is 0.
    """
    wanted = None if names is None else {str(n) for n in names}
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    for entry in entries:
        is_temp, tag = _temp_owner(entry.name, wanted)
        if not is_temp:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # its writer renamed it into place meanwhile
        if not stat.S_ISREG(st.st_mode):
            continue  # atomic_path only makes regular files
        # ctime too: a writer may have set mtime into the past (copy2), ctime it cannot
        if owner_is_gone(tag, max(st.st_mtime, st.st_ctime), older_than_s=older_than_s):
            with contextlib.suppress(FileNotFoundError):  # another run's cleanup got there first
                os.unlink(entry.path)
                removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` on success.

    Use for writers that want a file name (pyarrow, PIL, torch.save)::

        with atomic_path(out / "chips.parquet") as tmp:
            pq.write_table(table, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the writer's tag in the name lets a later run tell a dead writer's file (remove_stale_temps)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{owner_tag()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give the result the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary file for writing; it replaces ``path`` when the block ends cleanly."""
    with atomic_path(path) as tmp:
        kwargs = {} if "b" in mode else {"encoding": "utf-8"}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read JSON, turning a syntax error into a ValueError that names the file and position."""
    try:
        # utf-8-sig: JSON saved by Windows tools often starts with a byte-order mark.
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); JSON files must be UTF-8") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None


