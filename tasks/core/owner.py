"""Which run made a temporary file or folder, and whether that run is still alive.

A run's temporary names end with its tag, `.<pid>-<start>-<host>` (before `.tmp`, if any): the
process id, the process's start time in clock ticks since boot (from /proc; 0 where unknown)
and the host's name. Clean-up removes a leftover only when the run that made it is known to be
gone: a tag of this host whose process no longer exists, or whose pid now belongs to a process
started at another time. A leftover of another host (a shared network folder) is left to that
host's runs. A name without a tag was made by an earlier version of the tool, which tagged
nothing: it is taken as a leftover, as that version took it.
"""

from __future__ import annotations

import os
import re
import socket

_TAG = re.compile(r"(\d+)-(\d+)-([A-Za-z0-9_-]+)")
_PROC = "/proc"


def _host() -> str:
    """This host's name as a tag holds it: no dots, nothing a file name could mind."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "_"


def _start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot); None when there is no such process
    (or no /proc to ask)."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count after its last ')'
    fields = stat[stat.rfind(b")") + 2:].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def run_tag() -> str:
    """The tag of this process (computed each time: a forked child has its own)."""
    pid = os.getpid()
    return f"{pid}-{_start_time(pid) or 0}-{_host()}"


def suffix() -> str:
    """What this run appends to a temporary name (before `.tmp`, if any)."""
    return f".{run_tag()}"


def tag_of(name: str) -> str | None:
    """The tag a temporary name ends with; None for a name without one."""
    stem = name[:-len(".tmp")] if name.endswith(".tmp") else name
    last = stem.rsplit(".", 1)[-1] if "." in stem else ""
    return last if _TAG.fullmatch(last) else None


def _alive(pid: int, start: int) -> bool:
    if os.path.isdir(_PROC):
        now = _start_time(pid)
        return now is not None and (start == 0 or now == start)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # a process of another user
        return True
    return True


def is_leftover(name: str) -> bool:
    """True when the run that made the temporary `name` is known to be gone (its leftovers may
    be removed); False while it may still be running."""
    tag = tag_of(name)
    if tag is None:
        return True
    match = _TAG.fullmatch(tag)
    assert match is not None
    pid, start, host = int(match[1]), int(match[2]), match[3]
    return host == _host() and not _alive(pid, start)
