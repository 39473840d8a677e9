"""The big-file case (goal 5b): the pair's next SDK with one more file of zeros (2 GiB at scale
1), which the package ships whole, deflated to about a thousandth of it, and the memory `doit
verify` takes to prove that package.

The file is sparse: made by extending an empty file, nothing written and nothing held in
memory, and read as zeros like any other file. The package is made for a system volume with
room for it (`--system-size-mb`), since the usual one could not hold it."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from dfota.core.volumes import DEFAULT_SYSTEM_SIZE_MB
from dfota.tools.bench.plan import MB
from dfota.tools.sample.generate import ROOTFS_DIR

GIB = 1024 * MB
BIG_SIZE = 2 * GIB  # at scale 1
BIG_PATH = "usr/share/bench-zeros/zeros.bin"  # in the rootfs


def big_size(scale: float) -> int:
    """The big file's size at `scale`: 2 GiB at 1, never below 1 MiB."""
    return max(MB, round(BIG_SIZE * scale))


def write_zeros(path: Path, size: int) -> None:
    """A new file of `size` zero bytes, sparse: no byte of it is written or held."""
    with open(path, "xb") as out:
        out.truncate(size)


def big_sdk(pair_sdk: Path, where: Path, size: int) -> Path:
    """A copy of the pair's next SDK at `where` whose rootfs has the big file too (`BIG_PATH`,
    `size` bytes of zeros); `where`."""
    shutil.copytree(pair_sdk, where, symlinks=True)
    zeros = where / ROOTFS_DIR / BIG_PATH
    zeros.parent.mkdir(parents=True)
    write_zeros(zeros, size)
    return where


def system_size_mb(size: int) -> int:
    """The system volume the big package is made for: the usual one and room for the file."""
    return DEFAULT_SYSTEM_SIZE_MB + math.ceil(size / MB)


def drop_big_zips(workspace: Path) -> None:
    """Remove the workspace's targetfiles zips (each holds the big file stored, as large as
    it): its archive and `out/targetfiles.zip`. Its logs and the package stay."""
    shutil.rmtree(workspace / "archive", ignore_errors=True)
    (workspace / "out" / "targetfiles.zip").unlink(missing_ok=True)
