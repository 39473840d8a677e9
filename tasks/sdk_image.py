"""The tree of the SDK's own sysfs image (`target/sdxlemur-sysfs.ubi`), kept in a record
(tasks.state).

Reading the image takes seconds of decompressing and it seldom changes between builds: its
tree is kept by the image's sha1 and the UBI reader's code, and read again only when either
changes, in a worker process that starts as soon as the image is hashed. This module is light
(the UBI reader is imported only to read): every `doit` run passes through it.
"""

from __future__ import annotations

import hashlib
from multiprocessing.connection import Connection
from pathlib import Path

from tasks.errors import DfotaError
from tasks.state import Records
from tasks.tree import Entry, Tree
from tasks.workers import OneShot

ROOTFS_VOLUME = "rootfs"
_UBI_READER = Path(__file__).with_name("ubi.py")


RECORD = "sdk-image-tree"


def image_key(image_sha1: str) -> str:
    """What a record must say to hold this image's tree: its sha1 and the reader's code."""
    return f"{image_sha1} {hashlib.sha1(_UBI_READER.read_bytes()).hexdigest()}"


def recorded_image_tree(records: Records, key: str) -> Tree | None:
    saved = records.get(RECORD, key)
    try:
        return {e["path"]: Entry.from_json(e) for e in saved}
    except (KeyError, TypeError):
        return None


def read_and_record(sysfs_ubi: Path, records: Records, key: str) -> Tree:
    """Read volume rootfs of the image and record its tree under `key` (the only one kept)."""
    from tasks.ubi import read_ubifs

    tree = read_ubifs(sysfs_ubi, ROOTFS_VOLUME).entries
    records.put(RECORD, key, [e.to_json() for e in tree.values()], alone=True)
    return tree


def _worker(sysfs_ubi: Path, records: Records, key: str, report: Connection) -> None:
    """`read_and_record` in a worker; says None, or the one-line message of what stopped it."""
    try:
        read_and_record(sysfs_ubi, records, key)
    except DfotaError as exc:
        report.send(str(exc))
    except KeyboardInterrupt:
        pass  # Ctrl-C reached the whole process group: the parent says what happened
    else:
        report.send(None)


class ImageTreeReader:
    """The image's tree: from `records` when they hold this image, else read and recorded in a
    worker process that starts at once, while the caller goes on (a record that says it holds
    the tree but is damaged is read again when the tree is asked for).

    The worker is not a daemon: if `tree` is never asked for, the interpreter waits for it at
    exit, so the next run finds the tree recorded."""

    def __init__(self, sysfs_ubi: Path, records: Records, image_sha1: str) -> None:
        self.sysfs_ubi, self.records = sysfs_ubi, records
        self.key = image_key(image_sha1)
        self._tree: Tree | None = None
        self._worker: OneShot | None = None
        if not records.holds(RECORD, self.key):
            self._worker = OneShot(_worker, (sysfs_ubi, records, self.key), "read sysfs image")

    def tree(self) -> Tree:
        if self._tree is None and self._worker is None:
            self._tree = (recorded_image_tree(self.records, self.key)
                          or read_and_record(self.sysfs_ubi, self.records, self.key))
        elif self._tree is None and self._worker is not None:
            problem, exit_code = self._worker.wait()  # None: done, or it died without a word
            self._worker = None
            if problem is not None:
                raise DfotaError(str(problem))
            self._tree = recorded_image_tree(self.records, self.key)
            if self._tree is None:
                raise DfotaError(f"reading the image stopped (exit code {exit_code})",
                                 self.sysfs_ubi)
        assert self._tree is not None
        return self._tree
