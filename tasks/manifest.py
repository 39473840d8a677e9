"""Manifests of input folders, so doit can track a rootfs tree through one file.

doit cannot take a folder as a `file_dep` (and rootfs trees hold dangling symlinks, which it
refuses). The `sdk_manifest` step writes one JSON file describing every input of the target;
it is rewritten only when something in it changed, and `targetfiles` depends on that file.
Hashes are kept in a stat cache (size, mtime, ctime, inode) so an unchanged file is hashed once.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tasks import atomic
from tasks.errors import DfotaError
from tasks.runlog import SILENT, Meter
from tasks.targetfiles import KEPT_FROM_SOURCE
from tasks.tree import RACY_NS, FolderScan, file_stamp, scan_folder, settled, sha1_file


class HashCache:
    """sha1 by path, valid while the file's size, mtime, ctime and inode stay the same."""

    def __init__(self, path: Path | None, racy_ns: int = RACY_NS) -> None:
        self.path = path
        self._racy_ns = racy_ns
        self._old: dict[str, list[object]] = {}
        self._new: dict[str, list[object]] = {}
        self._started = time.time_ns()
        if path is not None:
            files = atomic.read_json_object(path).get("files")
            self._old = files if isinstance(files, dict) else {}

    def sha1_of(self, path: Path) -> str:
        """The sha1 of a file named by the user: a symlink to it is followed."""
        try:
            real = path.resolve()
            return self.sha1(real, real.stat())
        except OSError as exc:
            raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc

    def cached(self, path: str | Path, st: os.stat_result) -> bool:
        """`sha1` will not read the file."""
        cached = self._old.get(os.fsdecode(path))
        return isinstance(cached, list) and cached[:4] == file_stamp(st)

    def sha1(self, path: str | Path, st: os.stat_result) -> str:
        key = os.fsdecode(path)
        stamp = file_stamp(st)
        cached = self._old.get(key)
        if isinstance(cached, list) and cached[:4] == stamp:
            sha1 = str(cached[4])
        else:
            sha1 = sha1_file(path, st)
        if settled(st, self._started, self._racy_ns):
            self._new[key] = [*stamp, sha1]
        return sha1

    def vouches(self, path: Path, st: os.stat_result, sha1: str) -> bool:
        """`path` (as `st` shows it) has content `sha1`: it was hashed in this run and was
        not racy then (any write since moves its change time)."""
        return self._new.get(os.fsdecode(path)) == [*file_stamp(st), sha1]

    def save(self) -> None:
        if self.path is not None and self._new != self._old:
            atomic.write_text(self.path, json.dumps({"files": self._new}, sort_keys=True))


def scan_rootfs(rootfs: Path, cache: HashCache | None = None,
                meter: Meter = SILENT) -> FolderScan:
    """The rootfs as the target's SYSTEM: `firmware/` and `dev/` left out, owners decided.

    Entries owned by the owner of the rootfs folder itself (the build user who unpacked the
    SDK) are recorded as root; any other owner is kept as it is.
    """
    st = rootfs.stat()
    return scan_folder(rootfs, skip_top=KEPT_FROM_SOURCE, build_owner=(st.st_uid, st.st_gid),
                       hash_file=cache.sha1 if cache else None,
                       cached=cache.cached if cache else None, meter=meter)


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
