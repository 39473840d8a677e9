"""Atomic writes: a reader sees the old file or the whole new one; syncing beside other work."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks import atomic
from tasks.errors import DfotaError


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
