"""The tree of the SDK's own sysfs image (`target/sdxlemur-sysfs.ubi`) and the sizes of the
module's volumes it gives, kept in a record (dfota.state.store).

Reading the image takes seconds of decompressing and it seldom changes between builds: its
tree is kept by the image's sha1 and the UBI reader's code, and read again only when either
changes, in a worker process that starts as soon as the image is hashed (by the inputs step,
before the rootfs is hashed). Readers of one workspace take turns (`<records>/sdk-image-tree.
reading`, flock): a worker that finds the tree recorded when its turn comes reads nothing, so
the build, which starts its own, waits for the one the inputs step started. This module is
light (the UBI reader is imported only to read): every `doit` run passes through it.

The sizes (`image_volumes`): the room of the UBIFS in volume rootfs (the module's /system)
and in volume cachefs (its /cache), from the same reading. An image without either volume,
or whose table or headers are damaged, stops the build with one line naming it: the image is
optional in an SDK, but one that is there is what the module will run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Sequence
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from dfota.core.errors import DfotaError
from dfota.core.tree import Entry, Tree
from dfota.core.volumes import FROM_IMAGE, Volumes
from dfota.core.workers import OneShot, quiet_on_ctrl_c
from dfota.state.store import Records

if TYPE_CHECKING:  # the UBI reader is imported only to read
    from dfota.formats.ubi import UbiVolume

ROOTFS_VOLUME = "rootfs"  # the module's /system
CACHE_VOLUME = "cachefs"  # the module's /cache
# the code that reads the image (found without importing the UBI reader)
_READERS = (*(Path(__file__).parent.parent / "formats" / name
              for name in ("ubi.py", "ubifs.py", "ubifs_room.py")), Path(__file__))


RECORD = "sdk-image-tree"


def image_key(image_sha1: str) -> str:
    """What a record must say to hold this image's tree: its sha1 and the reader's code."""
    code = hashlib.sha1(b"".join(p.read_bytes() for p in _READERS)).hexdigest()
    return f"{image_sha1} {code}"


def image_volumes(sysfs_ubi: Path, volumes: Sequence[UbiVolume]) -> Volumes:
    """The sizes of /system and /cache that the image's volumes rootfs and cachefs give."""
    from dfota.formats.ubifs_room import ubifs_room

    named = {v.name: v for v in volumes}
    for name in (ROOTFS_VOLUME, CACHE_VOLUME):
        if name not in named:
            raise DfotaError(f"has no volume {name!r} (volumes: "
                             + ", ".join(v.name for v in volumes) + "): the module's "
                             f"{'/system' if name == ROOTFS_VOLUME else '/cache'} would have "
                             "no size", sysfs_ubi)
    return Volumes(ubifs_room(sysfs_ubi, named[ROOTFS_VOLUME]),
                   ubifs_room(sysfs_ubi, named[CACHE_VOLUME]), FROM_IMAGE, FROM_IMAGE)


def recorded_image(records: Records, key: str) -> tuple[Tree, Volumes] | None:
    """The tree and the volume sizes the records hold under `key`; None for another key or a
    damaged record."""
    saved = records.get(RECORD, key)
    if not isinstance(saved, dict) or not isinstance(saved.get("volumes"), dict):
        return None
    try:
        return ({e["path"]: Entry.from_json(e) for e in saved["entries"]},
                Volumes.from_json(saved["volumes"]))
    except (KeyError, TypeError, ValueError):
        return None


def read_and_record(sysfs_ubi: Path, records: Records, key: str) -> tuple[Tree, Volumes]:
    """Read volume rootfs of the image and the sizes of the volumes, and record them under
    `key` (the only one kept)."""
    from dfota.formats.ubifs import read_ubifs

    read = read_ubifs(sysfs_ubi, ROOTFS_VOLUME)
    volumes = image_volumes(sysfs_ubi, read.volumes)
    records.put(RECORD, key, {"volumes": volumes.to_json(),
                              "entries": [e.to_json() for e in read.entries.values()]},
                alone=True)
    return read.entries, volumes


def _read_in_turn(sysfs_ubi: Path, records: Records, key: str) -> None:
    """`read_and_record`, unless the tree is recorded by the time no other reader of this
    workspace reads (the lock goes with the process)."""
    records.folder.mkdir(parents=True, exist_ok=True)
    with open(records.folder / f"{RECORD}.reading", "a+b") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        if recorded_image(records, key) is None:
            read_and_record(sysfs_ubi, records, key)


@quiet_on_ctrl_c
def _worker(sysfs_ubi: Path, records: Records, key: str, report: Connection) -> None:
    """`_read_in_turn` in a worker; says None, or the one-line message of what stopped it
    (to nobody, when the one that started it went on without asking: the inputs step)."""
    said: str | None = None
    try:
        _read_in_turn(sysfs_ubi, records, key)
    except DfotaError as exc:
        said = str(exc)
    with contextlib.suppress(BrokenPipeError):
        report.send(said)


class ImageTreeReader:
    """The image's tree and volume sizes: from `records` when they hold this image, else read
    and recorded in a worker process that starts at once, while the caller goes on (a record
    that says it holds them but is damaged is read again when they are asked for).

    The worker is not a daemon: if `tree` is never asked for, the interpreter waits for it at
    exit, so the next run finds the tree recorded."""

    def __init__(self, sysfs_ubi: Path, records: Records, image_sha1: str) -> None:
        self.sysfs_ubi, self.records = sysfs_ubi, records
        self.key = image_key(image_sha1)
        self._read: tuple[Tree, Volumes] | None = None
        self._worker: OneShot | None = None
        if not records.holds(RECORD, self.key):
            self._worker = OneShot(_worker, (sysfs_ubi, records, self.key), "read sysfs image")

    def _image(self) -> tuple[Tree, Volumes]:
        if self._read is None and self._worker is None:
            self._read = (recorded_image(self.records, self.key)
                          or read_and_record(self.sysfs_ubi, self.records, self.key))
        elif self._read is None and self._worker is not None:
            problem, exit_code = self._worker.wait()  # None: done, or it died without a word
            self._worker = None
            if problem is not None:
                raise DfotaError(str(problem))
            self._read = recorded_image(self.records, self.key)
            if self._read is None:
                raise DfotaError(f"reading the image stopped (exit code {exit_code})",
                                 self.sysfs_ubi)
        assert self._read is not None
        return self._read

    def tree(self) -> Tree:
        return self._image()[0]

    def volumes(self) -> Volumes:
        """The sizes of /system and /cache the image's volume table gives."""
        return self._image()[1]
