"""Manifests of input folders, so doit can track a rootfs tree through one file.

doit cannot take a folder as a `file_dep` (and rootfs trees hold dangling symlinks, which it
refuses). The `sdk_manifest` step writes one JSON file describing every input of the target;
it is rewritten only when something in it changed, and `targetfiles` depends on that file.
Hashes are kept in the workspace's digest cache (dfota.state.store: by size, times and inode) so an
unchanged file is hashed once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from dfota.build.targetfiles import KEPT_FROM_SOURCE
from dfota.core import atomic
from dfota.core.errors import DfotaError
from dfota.core.runlog import SILENT, Meter
from dfota.core.tree import FolderScan, scan_folder, sha1_and_crc
from dfota.state.store import DigestCache

CRC32 = "crc32"  # beside "sha1" in the digest cache: a rootfs file's CRC-32, as 8 hex digits


def sha1_of(cache: DigestCache, path: Path) -> str:
    """The sha1 of a file named by the user (a symlink to it is followed), from `cache`
    while the file is as it was when hashed."""
    try:
        real = path.resolve()
        st = real.stat()
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    def compute() -> str:
        found, crc = sha1_and_crc(str(real), st)
        cache.keep(real, st, CRC32, f"{crc:08x}")
        return found

    return cache.digest(real, st, "sha1", compute)


def _cached_sha1(cache: DigestCache) -> Callable[[str, os.stat_result], str]:
    def sha1(path: str, st: os.stat_result) -> str:
        def compute() -> str:
            found, crc = sha1_and_crc(path, st)
            cache.keep(path, st, CRC32, f"{crc:08x}")
            return found

        return cache.digest(path, st, "sha1", compute)

    return sha1


def _known_sha1(cache: DigestCache) -> Callable[[str, os.stat_result], str | None]:
    def known(path: str, st: os.stat_result) -> str | None:
        return cache.known(path, st, "sha1")

    return known


def known_crc(cache: DigestCache) -> Callable[[Path, os.stat_result, str], int | None]:
    """The CRC-32 `cache` keeps for a file as it is now, when it also knows it to hold the
    sha1 asked for (the zip writer's `known_crc`)."""
    def crc(path: Path, st: os.stat_result, sha1: str) -> int | None:
        if not cache.vouches(path, st, "sha1", sha1):
            return None
        found = cache.known(path, st, CRC32)
        return int(found, 16) if found else None

    return crc


def scan_rootfs(rootfs: Path, cache: DigestCache | None = None,
                meter: Meter = SILENT) -> FolderScan:
    """The rootfs as the target's SYSTEM: `firmware/` and `dev/` left out, owners decided.

    Entries owned by the owner of the rootfs folder itself (the build user who unpacked the
    SDK) are recorded as root; any other owner is kept as it is.
    """
    st = rootfs.stat()
    return scan_folder(rootfs, skip_top=KEPT_FROM_SOURCE, build_owner=(st.st_uid, st.st_gid),
                       hash_file=_cached_sha1(cache) if cache else None,
                       known=_known_sha1(cache) if cache else None, meter=meter)


def write_if_changed(path: Path, data: dict[str, object]) -> bool:
    """Write `data` as JSON unless the file already says exactly that."""
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    try:
        if path.read_text("utf-8") == text:
            return False
    except OSError:
        pass
    atomic.write_text(path, text)
    return True
