"""The workspace lock: one command at a time writes a workspace's outputs, state and archive
entries.

`<state>/lock` is held with `flock` for the life of the process that took it (the kernel
frees it when the process ends, however it ends); the file's text says who holds it
(`pid`, start time, command), so that a second writer can say whom it waits for, and a
taker can tell that the last holder ended without letting go (a warning: its temporary
files are leftovers, which the run then removes).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dfota.core.errors import DfotaError, shown_path

LOCK_NAME = "lock"
POLL_SECONDS = 0.2


class WorkspaceBusy(DfotaError):
    """Another live command holds the workspace."""


@dataclass(frozen=True)
class Holder:
    pid: int
    since: str
    command: str

    def line(self) -> str:
        return f"pid {self.pid} since {self.since}: {shown_path(self.command)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(fd: int) -> Holder | None:
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        data = json.loads(os.pread(fd, 4096, 0) or b"null")
        return Holder(int(data["pid"]), str(data["since"]), str(data["command"]))
    return None


@dataclass
class WorkspaceLock:
    """Taken by `take`; held until the process ends (or `release`)."""

    path: Path
    fd: int
    stale: Holder | None  # the holder before this one, gone without letting go

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
        os.close(self.fd)


def take(state_dir: Path, command: Sequence[str], wait: float = 0.0,
         clock: Callable[[], float] = time.monotonic) -> WorkspaceLock:
    """Take the workspace's lock, waiting up to `wait` seconds for a live holder; raise
    WorkspaceBusy naming the holder when it stays busy."""
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise DfotaError(f"cannot take the workspace's lock ({exc.strerror})",
                         state_dir) from exc
    deadline = clock() + max(wait, 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if clock() >= deadline:
                holder = _holder(fd)
                os.close(fd)
                raise WorkspaceBusy(f"workspace busy: {holder.line() if holder else 'another run'}"
                                    ) from None
            time.sleep(POLL_SECONDS)
    previous = _holder(fd)
    stale = previous if previous is not None and not _alive(previous.pid) else None
    me = {"pid": os.getpid(),
          "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
          "command": " ".join(command)}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode() + b"\n", 0)
    return WorkspaceLock(path, fd, stale)
