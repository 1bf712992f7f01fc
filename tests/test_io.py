"""sniper.io: atomic writes and the clean-up of temp files that killed writers leave behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import types

import pytest

import sniper.io
from sniper.io import atomic_path, atomic_write_text, owner_is_gone, owner_tag, remove_stale_temps

HOST = owner_tag().split("-")[1]


def dead_pid() -> int:
    """The PID of a process that has exited and been reaped."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def temp_name(target: str, pid: int | None, host: str = HOST, rand: str = "abcd_123") -> str:
    """The name atomic_path gives a temp file of ``target`` (pid None: before names carried one)."""
    return f".{target}.{rand}.tmp" if pid is None else f".{target}.{pid}-{host}.{rand}.tmp"


def plant(folder, name: str) -> None:
    (folder / name).write_bytes(b"partial")


def test_atomic_path_names_its_writer_and_cleans_up(tmp_path):
    seen = []
    with atomic_path(tmp_path / "a.json") as tmp:
        seen.append(tmp.name)
        tmp.write_text("x")
    assert seen[0].startswith(f".a.json.{os.getpid()}-{HOST}.") and seen[0].endswith(".tmp")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("y")
        raise RuntimeError
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"] and (tmp_path / "a.json").read_text() == "x"


def test_dead_writers_temps_go_live_ones_stay(tmp_path):
    dead = dead_pid()
    gone = [temp_name("chips.parquet", dead), temp_name("model.pt", dead, rand="zz9_aaaa")]
    kept = [
        temp_name("chips.parquet", os.getppid()),  # a live process (pytest's parent)
        temp_name("chips.parquet", os.getpid()),  # ours: another thread may be writing it now
        temp_name("chips.parquet", dead, host="0badf00d"),  # another host: young, so kept
        temp_name("chips.parquet", None),  # untagged (older version): young, so kept
        "chips.parquet", ".chips.parquet", f"x.{dead}-{HOST}.abcd_123.tmp", ".notes.tmp",  # not temps
    ]  # fmt: skip
    for name in gone + kept:
        plant(tmp_path, name)
    (tmp_path / temp_name("dir", dead)).mkdir()  # atomic_path never makes folders: left alone
    assert remove_stale_temps(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*kept, temp_name("dir", dead)])
    assert remove_stale_temps(tmp_path) == 0


def test_names_limit_what_is_removed(tmp_path):
    dead = dead_pid()
    for target in ("chips.parquet", "stats.json", "chips.parquet.bak"):
        plant(tmp_path, temp_name(target, dead))
    assert remove_stale_temps(tmp_path, ["chips.parquet"]) == 1
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([temp_name("stats.json", dead), temp_name("chips.parquet.bak", dead)])
    assert remove_stale_temps(tmp_path / "missing") == 0


def test_old_unattributable_temps_go(tmp_path, monkeypatch):
    plant(tmp_path, temp_name("chips.parquet", None))  # what the bug report found: no PID in the name
    plant(tmp_path, temp_name("img.jpg", 4242, host="0badf00d"))
    assert remove_stale_temps(tmp_path) == 0
    assert remove_stale_temps(tmp_path, older_than_s=3600) == 0
    later = time.time() + sniper.io.TEMP_MAX_AGE_S + 1  # the default age limit has passed
    monkeypatch.setattr(sniper.io, "time", types.SimpleNamespace(time=lambda: later))
    assert remove_stale_temps(tmp_path) == 2 and list(tmp_path.iterdir()) == []


def test_zombie_writer_counts_as_gone():
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        tag = f"{p.pid}-{HOST}"
        assert not owner_is_gone(tag, time.time())
        os.kill(p.pid, signal.SIGKILL)
        deadline = time.time() + 10
        while not owner_is_gone(tag, time.time()):  # killed, not yet reaped: a zombie
            assert time.time() < deadline
            time.sleep(0.01)
    finally:
        p.kill()
        p.wait()
    assert owner_is_gone(tag, time.time())


def test_killed_writer_then_rerun(tmp_path):
    """kill -9 in the middle of an atomic write, then the next run's clean-up and write."""
    target = tmp_path / "state.json"
    code = (
        "import sys, time\n"
        "from sniper.io import atomic_path\n"
        "with atomic_path(sys.argv[1]) as tmp:\n"
        "    tmp.write_text('half')\n"
        "    print(tmp, flush=True)\n"
        "    time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        tmp_name = os.path.basename(p.stdout.readline().strip())
        assert remove_stale_temps(tmp_path) == 0  # its writer is alive
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    assert [x.name for x in tmp_path.iterdir()] == [tmp_name]  # what kill -9 leaves
    assert remove_stale_temps(tmp_path, ["state.json"]) == 1
    atomic_write_text(target, "whole")
    assert [x.name for x in tmp_path.iterdir()] == ["state.json"]
