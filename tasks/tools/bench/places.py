"""The RAM disk the pair's steps run on a second time (`--ram-disk`, /dev/shm unless told): a
tmpfs, checked as such and for room, with a folder of the run's own on it that is removed
afterwards. The pair's base zip is copied there and the SDK's copy made there, so every folder
a step touches lies on it: the SDK's copy, the workspaces and their archives, the shell
procedure's and the bsdiff loop's folders, and the temporary folder (`TMPDIR`)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from dfota.core.errors import DfotaError
from dfota.tools.bench.options import RunPaths
from dfota.tools.bench.plan import MB

TMPFS = "tmpfs"
# what the run keeps on the RAM disk at once, in sizes of the pair's base zip: the base itself,
# the SDK's copy (about 1.3), the bsdiff loop's two trees, the shell procedure's tree and zip,
# the round's two workspaces beside the ones kept for later steps (each about 3: its archive
# holds the zip it built and the base, out/ a copy); at scale 0.02 a run with one code took 9
ROOM_IN_BASE_ZIPS = 16  # with one workspace kept
ROOM_PER_WORKSPACE = 4  # each other workspace kept (with --before: each code's, each trial's)


def file_system_type(path: Path) -> str:
    """The type of the file system that holds `path` ("tmpfs", "ext4", ...), from the mount
    table: the longest mount point above it."""
    real = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/self/mounts", encoding="utf-8", errors="replace") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) < 3:
                continue
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[1])
            above = real == point or real.startswith(point.rstrip("/") + "/")
            if above and len(point) >= len(best):  # a later mount on the same point wins
                best, kind = point, fields[2]
    return kind


def memory_available() -> int:
    """Bytes of memory the kernel could give without swapping (a tmpfs's files take memory)."""
    with open("/proc/meminfo", encoding="ascii") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def room_needed(source: Path, workspaces: int = 1) -> int:
    """Bytes the RAM-disk run keeps at once on its tmpfs, about, for the pair's base zip and
    the number of workspaces the later steps use."""
    return (ROOM_IN_BASE_ZIPS + ROOM_PER_WORKSPACE * (workspaces - 1)) * source.stat().st_size


def check_ram_disk(where: Path, need: int) -> None:
    """`where` is a folder on a tmpfs with `need` bytes free, and as much memory available;
    else one line saying what is wrong."""
    if not where.is_dir():
        raise DfotaError("--ram-disk: no such folder", where)
    kind = file_system_type(where)
    if kind != TMPFS:
        raise DfotaError(f"--ram-disk: on a {kind} file system, not a tmpfs (give a folder on "
                         "a tmpfs, or none)", where)
    fs = os.statvfs(where)
    free, available = fs.f_bavail * fs.f_frsize, memory_available()
    if min(free, available) < need:
        raise DfotaError(f"--ram-disk: {free / MB:,.0f} MB free and {available / MB:,.0f} MB "
                         f"of memory available; the run needs about {need / MB:,.0f} MB of "
                         "both", where)


@contextlib.contextmanager
def ram_disk_folder(where: Path, need: int) -> Iterator[Path]:
    """A new folder on the tmpfs at `where` (checked first), removed with everything in it
    when the context ends, however it ends."""
    check_ram_disk(where, need)
    folder = Path(tempfile.mkdtemp(prefix="dfota-bench-", dir=where))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ram_disk_paths(folder: Path, disk: RunPaths) -> RunPaths:
    """The run's paths in `folder` on the RAM disk, with the pair's base zip copied there (the
    SDK's copy is made where the run starts, as on disk)."""
    ram = RunPaths(folder, disk.cross_source)
    ram.source.parent.mkdir(parents=True)
    shutil.copyfile(disk.source, ram.source)
    return ram


def temporary_folder(paths: RunPaths) -> dict[str, str]:
    """The environment that points the commands' temporary files into the run's folder."""
    tmp = paths.run / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {"TMPDIR": str(tmp)}


def keep_logs(ram: RunPaths, disk: RunPaths) -> Path:
    """Copy the RAM-disk run's logs (the commands' and the first workspace's) beside the
    disk's before the RAM disk's folder goes; where they went."""
    kept = disk.logs / "ram-disk"
    shutil.rmtree(kept, ignore_errors=True)
    shutil.copytree(ram.logs, kept)
    state_logs = ram.first / "state" / "logs"
    if state_logs.is_dir():
        shutil.copytree(state_logs, kept / "trial0-state-logs")
    return kept
