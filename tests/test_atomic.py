"""Atomic writes: a reader sees the old file or the whole new one; syncing beside other work."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dfota.core import atomic, owner
from dfota.core.errors import DfotaError
from tests.workspace import PROJECT


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path: Path) -> None:
    dest = tmp_path / "out/file.bin"
    atomic.write_bytes(dest, b"old")
    with pytest.raises(RuntimeError), atomic.atomic_path(dest) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("stopped")
    assert dest.read_bytes() == b"old"
    assert sorted(os.listdir(dest.parent)) == ["file.bin"]


def test_a_write_left_to_sync_later_is_renamed_and_synced_in_the_background(
        tmp_path: Path) -> None:
    dest = tmp_path / "file.bin"
    with atomic.atomic_path(dest, durable=False) as tmp:
        tmp.write_bytes(b"new" * 1000)
    assert dest.read_bytes() == b"new" * 1000 and oct(dest.stat().st_mode & 0o777) == "0o644"
    atomic.background_sync(dest)()  # waits; nothing to report
    wait = atomic.background_sync(tmp_path / "gone.bin")
    with pytest.raises(DfotaError, match=r"gone\.bin: cannot write file \(No such file"):
        wait()


LIVE_WRITER = """
import sys
from pathlib import Path
from dfota.core import atomic
with atomic.atomic_path(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"live")
    print(tmp.name, flush=True)
    sys.stdin.readline()  # holds its temporary file until told to go on
"""


def python(code: str, *args: str, **popen: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=PROJECT, text=True,
                            stdout=subprocess.PIPE, **popen)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's sync_file_range")
def test_the_disk_is_asked_to_write_a_large_file_as_it_is_written(tmp_path: Path) -> None:
    """The advice that lets a zip's final sync wait less is really given on Linux (a wrong
    binding of the C call would be refused by the kernel), and refused for a pipe."""
    path = tmp_path / "big.bin"
    data = os.urandom(3 * atomic.WRITEBACK_BYTES // 2)
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        assert atomic.start_writeback(f.fileno(), 0, len(data))
        assert atomic.start_writeback(f.fileno(), atomic.WRITEBACK_BYTES, 1 << 40)
    assert path.read_bytes() == data
    read_end, write_end = os.pipe()
    try:
        assert not atomic.start_writeback(write_end, 0, 1)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_write_removes_the_leftovers_of_dead_writers_never_a_live_writers(
        tmp_path: Path) -> None:
    """Fed: beside file.json, the temporary files of a writer still running (another process),
    of one that exited, of this very process as if its pid were reused, of an older tool (no
    tag) and of another host. Outcome wanted: a write of file.json removes the dead ones; the
    live writer then renames its own file into place."""
    dest = tmp_path / "file.json"
    live = python(LIVE_WRITER, str(dest), stdin=subprocess.PIPE)
    assert live.stdout is not None and live.stdin is not None
    live_tmp = live.stdout.readline().strip()
    done = python("from dfota.core import owner; print(owner.run_tag())")
    dead_tag = done.communicate()[0].strip()
    pid, start, host = owner.run_tag().split("-", 2)
    other_host = f"{pid}-{start}-{host}x"
    names = {"dead": f".file.json.k3j4l5m6.{dead_tag}.tmp",
             "reused": f".file.json.a1b2c3d4.{pid}-{int(start) + 1}-{host}.tmp",
             "untagged": ".file.json.q9w8e7r6.tmp",
             "other host": f".file.json.z0z0z0z0.{other_host}.tmp"}
    for name in names.values():
        (tmp_path / name).write_bytes(b"left")
    atomic.write_bytes(dest, b"mine")
    assert sorted(os.listdir(tmp_path)) == sorted(["file.json", live_tmp, names["other host"]])
    live.stdin.write("\n")
    live.stdin.close()
    assert live.wait() == 0
    assert dest.read_bytes() == b"live"
    assert sorted(os.listdir(tmp_path)) == sorted(["file.json", names["other host"]])


def test_a_tag_names_the_process_its_start_and_host() -> None:
    tag = owner.run_tag()
    assert owner.tag_of(f".index.json.abc.{tag}.tmp") == tag
    assert owner.tag_of(f".staging-R1.2+x@20220101T0000.abc.{tag}") == tag
    assert owner.tag_of(".staging-R1.2@20220101T0000.x1") is None  # an older tool's name
    assert owner.tag_of(".index.json.abc_123.tmp") is None
    assert not owner.is_leftover(f".x.abc.{tag}.tmp")
    assert owner.is_leftover(".x.abc.tmp")
