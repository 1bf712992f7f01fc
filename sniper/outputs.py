"""Output paths checked before any work starts.

A command that loads a model for a minute and then finds that ``--out`` is a file (or a
folder where a file is wanted, or not writable) wastes the user's time and ends in a
traceback. Every subcommand runs its outputs through these checks first; each failure is
an :class:`~sniper.errors.OutputError` whose message names the flag and the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from sniper.errors import OutputError

__all__ = ["check_output_dir", "check_output_file"]


def _check_parent_writable(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder we may create entries in."""
    parent = path.parent
    while not parent.exists():
        if parent == parent.parent:
            break
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{flag} {path}: cannot write in {parent} (permission denied)")


def check_output_dir(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``path`` is, or can become, a folder this process writes into. Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{flag} {path} exists and is not a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputError(f"{flag} {path}: cannot write in it (permission denied)")
        return path
    _check_parent_writable(path, flag)
    return path


def check_output_file(path: str | os.PathLike[str], flag: str = "--out") -> Path:
    """``path`` names a file this process may create or replace. Nothing is created."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{flag} {path} is a folder; give a file name (e.g. {path / 'metrics.json'})")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputError(f"{flag} {path}: cannot replace it (permission denied)")
    _check_parent_writable(path, flag)
    return path
