"""What the module's storage is made of: filesystems of nodes, and raw partitions.

A filesystem is a tree of nodes (regular files with their bytes, directories, symlinks) with
mode and owner, and a capacity in bytes that regular files' contents count against (directories
and symlinks take no room). A node keeps the digest of all it is and holds, summed so that a
change costs only the directories above it. Raw partitions are named byte strings that read as
erased (0xff) past what was last written, up to their size. Contents (`dfota.device.contents`)
may be held in memory or left where they lie.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import NamedTuple

from dfota.core.errors import shown_path
from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.device.contents import Content, Stored, filled, prefix, sha1_of, size_of, whole

_UNLIMITED = 1 << 62


class FsError(Exception):
    """A failed system call: `code` is the errno name (ENOENT, ENOSPC, ...)."""

    def __init__(self, code: str, path: str) -> None:
        self.code = code
        self.path = path
        super().__init__(f"{shown_path(path)}: {code}")


class Filesystem:
    """One filesystem: its root, its capacity (None: no limit) and the bytes its files hold."""

    __slots__ = ("capacity", "name", "root", "used")

    def __init__(self, name: str, capacity: int | None) -> None:
        self.name = name
        self.capacity = capacity
        self.used = 0
        self.root = FsNode(DIR, Meta(0o755, 0, 0), self)

    def free(self) -> int:
        return _UNLIMITED if self.capacity is None else max(0, self.capacity - self.used)


SETGID = 0o2000


def inherited_gid(parent: FsNode) -> int:
    """The group of an entry the updater (root) makes in `parent`: the folder's own group when
    it is set-group-ID, else root's (the kernel's rule; found by the differential tests)."""
    return parent.gid if parent.mode & SETGID else 0


class Meta(NamedTuple):  # a tuple: made for every node a run makes
    """A node's mode and owner, as a new node gets them."""

    mode: int
    uid: int
    gid: int


class FsNode:
    """One file, directory or symlink of a filesystem."""

    __slots__ = ("_data", "_digest", "_sha1", "_shares", "_stale", "_stored", "_sum",
                 "children", "fs", "gid", "kind", "link", "mode", "mount", "name", "parent",
                 "uid")

    def __init__(self, kind: str, meta: Meta, fs: Filesystem, parent: FsNode | None = None,
                 name: str = "") -> None:
        self.kind = kind
        mode, self.uid, self.gid = meta
        self.mode = mode & 0o7777
        self.fs = fs
        self._data = b""
        self._stored: Stored | None = None  # a file's bytes not read yet (then `_data` is b"")
        self.link = ""
        self.children: dict[str, FsNode] = {}
        self.mount: Mount | None = None  # set on a directory that is a mount point
        self._sha1: str | None = None
        # the directory holding it (for a filesystem's root: its mount point) and its name
        # there ("" for a root), and the cached digest of all it is and holds (None: to be
        # computed); see `Device.digest`
        self.parent = parent
        self.name = name
        self._digest: str | None = None
        # a directory's children's shares of its digest as last summed, by name (None: to be
        # summed afresh), their sum, and the names whose share may have changed since
        self._shares: dict[str, int] | None = None
        self._sum = 0
        self._stale: set[str] | None = None

    def touch(self) -> None:
        """Forget the digests of this node and of every directory above it, each told which
        of its children changed. The walk stops where the directory above has forgotten its
        digest and knows of this child already (so it has told the ones above it)."""
        node = self
        while True:
            known = node._digest is not None
            node._digest = None
            parent = node.parent
            if parent is None:
                return
            if not known and parent._digest is None and parent._told(node.name):
                return
            parent._mark(node.name)
            node = parent

    def changed_child(self, name: str) -> None:
        """What this directory holds under `name` changed (or may have)."""
        self._mark(name)
        self.touch()

    def forget_children(self) -> None:
        """This directory's children were replaced all at once: every share to be summed
        afresh."""
        self._shares = self._stale = None
        self.touch()

    def _mark(self, name: str) -> None:
        if self._shares is not None:
            if self._stale is None:
                self._stale = {name}
            else:
                self._stale.add(name)

    def _told(self, name: str) -> bool:
        return self._shares is None or (self._stale is not None and name in self._stale)

    def digest(self) -> str:
        """What this node is (type, mode, owner, content or link) and, for a directory,
        everything below it, mounted filesystems included."""
        if self._digest is None:
            if self.kind == FILE:
                self._digest = f"f{self.mode} {self.uid} {self.gid} {self.sha1()}"
            elif self.kind == SYMLINK:
                self._digest = f"l{self.mode} {self.uid} {self.gid} {self.link}"
            else:
                self._digest = self._folder_digest()
        return self._digest

    def _folder_digest(self) -> str:
        """A directory's digest: its mode and owner, how many children it has, the sum of
        their shares (`_share`) and a mounted filesystem's digest. Only the shares of the
        children that changed since the last sum are taken again."""
        children, shares = self.children, self._shares
        if shares is None:
            shares, total, names = {}, 0, list(children)
        else:
            total, names = self._sum, list(self._stale or ())
        for name in names:
            total -= shares.pop(name, 0)
            child = children.get(name)
            if child is not None:
                share = shares[name] = _share(name, child._digest or child.digest())
                total += share
        self._shares, self._sum, self._stale = shares, total & _SHARE_MASK, None
        mounted = self.mount.fs.root.digest() if self.mount is not None else ""
        text = f"{self.mode} {self.uid} {self.gid}\0{len(children)}\0{mounted}\0".encode()
        return "d" + hashlib.blake2b(text + self._sum.to_bytes(_SHARE_BYTES, "little"),
                                     digest_size=16).hexdigest()

    @property
    def data(self) -> bytes:
        """A file's bytes whole (read now if they are `Stored`; a small file's are kept)."""
        return self._data if self._stored is None else self._stored.get()

    @property
    def content(self) -> Content:
        """A file's bytes, as held or left where they lie."""
        return self._data if self._stored is None else self._stored

    @property
    def size(self) -> int:
        """`len(data)`, without reading stored bytes."""
        return len(self._data) if self._stored is None else self._stored.size

    def sha1(self) -> str:
        if self._sha1 is None:
            self._sha1 = sha1_of(self.content)
        return self._sha1

    def set_data(self, data: Content, sha1: str | None = None) -> None:
        """`sha1`: the data's sha1 when the writer knows it (a patch output, say)."""
        size = size_of(data)
        self.fs.used += size - self.size
        self._data, self._stored = (b"", data) if isinstance(data, Stored) else (data, None)
        self._sha1 = sha1
        self.touch()


# A directory's digest sums its children's shares modulo 2**2048, so that a change costs the
# children that changed, not the directory's size. A share is 2,048 bits of SHAKE-256 of the
# child's name and digest: at that width, finding two sets of children with the same sum (the
# generalized birthday attack on such sums) takes more entries than a filesystem holds.
_SHARE_BYTES = 256
_SHARE_MASK = (1 << 8 * _SHARE_BYTES) - 1


def _share(name: str, digest: str) -> int:
    # names and link targets hold no NUL: the joined text reads one way only
    text = f"{name}\0{digest}".encode("utf-8", "surrogateescape")
    return int.from_bytes(hashlib.shake_256(text).digest(_SHARE_BYTES), "little")


@dataclass
class Mount:
    """A mount point, the filesystem it shows and whether it is mounted now."""

    point: str
    fs: Filesystem
    active: bool


@dataclass
class Partition:
    """A raw partition: what was last written, and its size (None: no limit)."""

    content: Content
    size: int | None = None
    # sha1 of the first n bytes, by n: the same image is checked at every power-loss replay
    digests: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def data(self) -> bytes:
        """What was last written, whole."""
        return whole(self.content)

    def digest(self, count: int) -> bytes | None:
        """sha1 of what `read(count)` gives, or None past the partition's end."""
        if count not in self.digests:
            view = self.view(count)
            if view is None:
                return None
            self.digests[count] = bytes.fromhex(sha1_of(view))
        return self.digests[count]

    def write(self, data: Content, digest: bytes | None = None) -> None:
        """`digest`: sha1 of `data`, when the writer knows it."""
        self.content = data
        self.digests = {size_of(data): digest} if digest is not None else {}

    def view(self, count: int) -> Content | None:
        """The first `count` bytes as the flash reads them; None past the partition's end."""
        held = size_of(self.content)
        if count <= held:
            return prefix(self.content, count) if count < held else self.content
        if self.size is None or count > self.size:
            return None
        return filled(self.content, count, b"\xff")

    def read(self, count: int) -> bytes | None:
        """`view(count)` whole."""
        view = self.view(count)
        return None if view is None else whole(view)


class Loaded(NamedTuple):  # a tuple: made for every read a script does
    """A file or partition as read, with the metadata apply_patch copies."""

    data: Content
    sha1: str
    mode: int
    uid: int
    gid: int

