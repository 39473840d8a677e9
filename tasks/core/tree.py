"""One model for a file tree, whether it comes from a folder, a zip or a UBI volume.

Every comparison in the project speaks in `Entry` values: path, type, mode, owner, size, sha1,
link target. A tree is a mapping from relative path to entry.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import os
import stat
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from dfota.core.errors import DfotaError, shown_path
from dfota.core.runlog import SILENT, Meter

if TYPE_CHECKING:
    from typing_extensions import Unpack

FILE = "file"
DIR = "dir"
SYMLINK = "symlink"
KINDS = (FILE, DIR, SYMLINK)

_HASH_CHUNK = 1 << 20
_FS_ENCODING = codecs.lookup(sys.getfilesystemencoding()).name  # fixed when Python starts


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a tree. `path` is relative, '/'-separated, without leading or trailing '/'."""

    path: str
    kind: str
    mode: int  # permission bits, setuid/setgid/sticky included (mask 0o7777)
    uid: int = 0
    gid: int = 0
    size: int = 0
    sha1: str = ""  # regular files only
    link: str = ""  # symlinks only: the link text

    def to_json(self) -> dict[str, object]:
        # by hand: dataclasses.asdict is slow enough to show on a rootfs of thousands
        return {"path": self.path, "kind": self.kind, "mode": self.mode, "uid": self.uid,
                "gid": self.gid, "size": self.size, "sha1": self.sha1, "link": self.link}

    @staticmethod
    def from_json(data: Mapping[str, object]) -> Entry:
        return Entry(**data)  # type: ignore[arg-type]

    def same_content(self, other: Entry) -> bool:
        """Type and content agree (sha1 for files, link text for symlinks)."""
        return self.kind == other.kind and self.sha1 == other.sha1 and self.link == other.link

    def same_metadata(self, other: Entry) -> bool:
        return (self.mode, self.uid, self.gid) == (other.mode, other.uid, other.gid)


Tree = dict[str, Entry]


@dataclass(frozen=True, slots=True)
class FolderScan:
    """What a folder walk found: the entries, and the warnings to show the user."""

    entries: Tree
    empty_dirs: tuple[str, ...]
    warnings: tuple[str, ...]
    # regular files with more hard links than names in the walk: (their names, link count)
    outside_links: tuple[tuple[tuple[str, ...], int], ...] = ()


def sha1_file(path: str | Path, expect: os.stat_result | None = None) -> str:
    """The sha1 of a file's content.

    With `expect` (the file's lstat from a folder walk) the very file walked is read: a path
    that is no longer that regular file (swapped for a link to a host file, a FIFO, another
    file) is refused instead of read.
    """
    return _read_hashed(path, expect, with_crc=False)[0]


def sha1_and_crc(path: str | Path, expect: os.stat_result) -> tuple[str, int]:
    """`sha1_file` of the file a walk saw as `expect`, and its CRC-32 from the same read (the
    zip writer then writes its header before its data, reading it once)."""
    return _read_hashed(path, expect, with_crc=True)


def _read_hashed(path: str | Path, expect: os.stat_result | None,
                 with_crc: bool) -> tuple[str, int]:
    digest, crc = hashlib.sha1(), 0
    flags = os.O_RDONLY | (os.O_NOFOLLOW | os.O_NONBLOCK if expect is not None else 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if expect is not None and exc.errno in _GONE:
            raise changed_error(path) from exc
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    try:
        with os.fdopen(fd, "rb") as f:
            if expect is not None:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (
                        expect.st_dev, expect.st_ino):
                    raise changed_error(path)
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                if with_crc:
                    crc = zlib.crc32(chunk, crc)
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    return digest.hexdigest(), crc


# what reading an entry a walk has just seen raises when the tree changed meanwhile: gone
# (deleted, or a folder above it swapped), a link where a file was, a folder where a link was
_GONE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.EINVAL})


def changed_error(path: str | os.PathLike[str]) -> DfotaError:
    return DfotaError("changed while it was being read; run again", path)


def sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def checked_name(name: str, where: Path) -> str:
    """A name as the project carries it: valid UTF-8 without NUL (decisions: names).

    Names are read from the host in the file-system encoding. Under a locale that is not UTF-8
    (a Latin-1 one, say) a non-ASCII name would be read as other characters, so the zip would
    depend on the locale: such a name is refused with the way out.
    """
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DfotaError("file name is not valid UTF-8; rename it", where) from None
    if _FS_ENCODING != "utf-8" and not name.isascii():
        raise DfotaError(f"file name is not ASCII and this locale reads names as {_FS_ENCODING}: "
                         "run under a UTF-8 locale (LC_ALL=C.UTF-8) or with PYTHONUTF8=1", where)
    return name


class FolderScanning(TypedDict, total=False):
    """How `scan_folder` walks a folder (each optional; see there)."""

    skip_top: Iterable[str]  # top-level entries left out (default: none)
    build_owner: tuple[int, int] | None  # (uid, gid) recorded as root
    hash_file: Callable[[str, os.stat_result], str] | None  # default: `sha1_file`
    known: Callable[[str, os.stat_result], str | None] | None  # a sha1 kept (None: to hash)
    meter: Meter
    seen: Callable[[str], None] | None


def scan_folder(root: Path, **how: Unpack[FolderScanning]) -> FolderScan:
    """Walk `root` without following symlinks and describe every entry below it.

    `skip_top` names top-level entries left out (with everything under them). Entries owned by
    the `build_owner` uid (or gid) are recorded as owned by root (0), others as they are.
    `known` gives the sha1 a cache keeps for a file as the walk saw it (asked once per file);
    the others are hashed by `hash_file`, with `meter` showing the progress of that hashing
    (nothing when there is none).
    Device nodes, FIFOs and sockets cannot live in a zip: they are skipped with a warning.
    A tree that changes under the walk (an entry gone, a link swapped for a folder) is
    refused: `<path>: changed while it was being read; run again`. `seen` is called with each
    entry's relative path as soon as the walk has seen it (tests change the tree there).
    """
    if not root.is_dir():
        raise DfotaError("is not a folder", root)
    root = root.resolve()  # the folder itself may be a link; nothing below it is followed
    build_owner = how.get("build_owner")
    entries: Tree = {}
    warnings: list[str] = []
    # paths as text, the loop kept lean: every `doit` walks the rootfs (thousands of entries)
    top = os.fspath(root)
    walked = list(_walk(root, set(how.get("skip_top", ())), how.get("seen")))
    sha1s = _file_sha1s(top, walked, how, f"hashing {root.name}")
    owner_uid, owner_gid = build_owner if build_owner is not None else (-1, -1)
    linked: dict[tuple[int, int], list[str]] = {}
    for rel, st in walked:
        if not rel.isascii():  # an ASCII name is always fine (and most are)
            checked_name(rel, root / rel)
        mode = st.st_mode
        uid = 0 if st.st_uid == owner_uid else st.st_uid
        gid = 0 if st.st_gid == owner_gid else st.st_gid
        if stat.S_ISREG(mode):
            entries[rel] = Entry(rel, FILE, mode & 0o7777, uid, gid, st.st_size, sha1s[rel])
            if st.st_nlink > 1:
                linked.setdefault((st.st_dev, st.st_ino), []).append(rel)
        elif stat.S_ISDIR(mode):
            entries[rel] = Entry(rel, DIR, mode & 0o7777, uid, gid)
        elif stat.S_ISLNK(mode):
            target = _readlink(f"{top}/{rel}")
            if not target.isascii():
                checked_name(target, root / rel)
            entries[rel] = Entry(rel, SYMLINK, 0o777, uid, gid, len(os.fsencode(target)), "",
                                 target)
        else:
            warnings.append(f"{shown_path(root / rel)}: {_special_kind(mode)} cannot be packed; "
                            "left out")
    entries = dict(sorted(entries.items()))
    nlinks = {rel: st.st_nlink for rel, st in walked if rel in sha1s}
    outside = tuple((tuple(names), nlinks[names[0]]) for names in linked.values()
                    if nlinks[names[0]] > len(names))
    return FolderScan(entries, tuple(empty_dirs(entries)), tuple(warnings), outside)


def _file_sha1s(top: str, walked: list[tuple[str, os.stat_result]], how: FolderScanning,
                title: str) -> dict[str, str]:
    """The sha1 of every regular file of a walk: kept (`known`, asked once each), else hashed
    (`hash_file`, its progress shown by `meter`)."""
    known = how.get("known")
    sha1s: dict[str, str] = {}
    to_hash = []
    for rel, st in walked:
        if stat.S_ISREG(st.st_mode):
            found = known(f"{top}/{rel}", st) if known is not None else None
            if found is None:
                to_hash.append((rel, st))
            sha1s[rel] = found or ""
    if to_hash:
        hasher = how.get("hash_file") or sha1_file
        bar = how.get("meter", SILENT).progress(title, len(to_hash))
        for rel, st in to_hash:
            sha1s[rel] = hasher(f"{top}/{rel}", st)
            bar.advance()
        bar.finish()
    return sha1s


def check_outside_links(scan: FolderScan, root: Path, allow: bool = False) -> list[str]:
    """A regular file with more hard links than names in the scanned tree has a name
    elsewhere: it may be a host file linked in (`ln /etc/shadow rootfs/etc/x`). Refused,
    naming the first such file and its link count, unless `allow`: then one warning each.
    Files whose names are all in the tree pass without a word."""
    def what(names: tuple[str, ...], count: int) -> str:
        return (f"regular file with {count} hard links, only {len(names)} of them in the "
                "rootfs (another name is outside it: a host file?)")

    if scan.outside_links and not allow:
        names, count = scan.outside_links[0]
        raise DfotaError(f"{what(names, count)}; unlink it or copy it in", root / names[0])
    return [f"{shown_path(root / names[0])}: {what(names, count)}; packed as allowed"
            for names, count in scan.outside_links]


def _readlink(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError as exc:
        if exc.errno in _GONE:  # no longer a link
            raise changed_error(path) from exc
        raise DfotaError(f"cannot read link ({exc.strerror})", path) from exc


def _walk(root: Path, skipped: set[str], seen: Callable[[str], None] | None = None
          ) -> Iterator[tuple[str, os.stat_result]]:
    """(relative path, lstat) of every entry, in sorted order, never following links."""
    top = os.fspath(root)  # paths as text: pathlib costs more than the walk itself
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        folder = f"{top}/{rel_dir}" if rel_dir else top
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            if rel_dir and exc.errno in _GONE:  # seen as a folder, no longer one
                raise changed_error(folder) from exc
            raise DfotaError(f"cannot list folder ({exc.strerror})", Path(folder)) from exc
        subdirs = []
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not rel_dir and name in skipped:
                continue
            try:
                st = os.lstat(f"{top}/{rel}")
            except OSError as exc:
                if exc.errno in _GONE:  # listed, then gone
                    raise changed_error(f"{top}/{rel}") from exc
                raise DfotaError(f"cannot read ({exc.strerror})", f"{top}/{rel}") from exc
            if seen is not None:
                seen(rel)
            yield rel, st
            if stat.S_ISDIR(st.st_mode):
                subdirs.append(rel)
        stack.extend(reversed(subdirs))


def _special_kind(mode: int) -> str:
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def empty_dirs(entries: Mapping[str, Entry]) -> list[str]:
    """Directories with nothing under them, in sorted order."""
    with_children = {p.rsplit("/", 1)[0] for p in entries if "/" in p}
    return sorted(p for p, e in entries.items() if e.kind == DIR and p not in with_children)


def digest_tree(entries: Mapping[str, Entry]) -> str:
    """A short fingerprint of a whole tree (names, types, modes, owners, content, links)."""
    digest = hashlib.sha1()
    for path in sorted(entries):
        e = entries[path]
        digest.update(f"{e.path}\0{e.kind}\0{e.mode:o}\0{e.uid}\0{e.gid}\0{e.sha1}\0{e.link}\n"
                      .encode("utf-8", "surrogateescape"))
    return digest.hexdigest()
