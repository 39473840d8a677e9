"""The fake module the host updater works on: filesystems, mount points, raw partitions, and
the module's own zip reader.

A filesystem is a tree of nodes (regular files with their bytes, directories, symlinks) with
mode and owner, and a capacity in bytes that regular files' contents count against (directories
and symlinks take no room). The recovery's root holds the mount points `/system`, `/cache`
(and any others given) and `/tmp`; a filesystem is visible at its mount point only while
mounted. Raw partitions are named byte strings that read as erased (0xff) past what was last
written, up to their size.

Path rules are those of Linux: `..` and symlinks are resolved while walking, absolute link
targets start again at the recovery's root, 40 links at most. Each mutating call reports itself
once through the hook the updater sets, after the change is made.

The zip reader is the device's, not Python's: central directory only, entries sorted by name
bytes with the first of duplicates kept, stored and deflated only, no ZIP64, CRCs never checked,
and a corrupt deflated entry cut short (see `DeviceZip`).
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import hashlib
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from dfota.core.errors import quoted, shown_path
from dfota.core.tree import DIR, FILE, SYMLINK, Entry

_MAX_LINKS = 40
NAME_MAX = 255  # bytes in one component of a path (Linux)
PATH_MAX = 4096  # bytes in a path given to the kernel, its closing NUL included
_UNLIMITED = 1 << 62
_INFLATE_BUFFER = 32 * 1024

# path -> (kind, mode, uid, gid, content for a file or target for a symlink)
EntrySpec = tuple[str, int, int, int, "bytes | str | Stored"]


class FsError(Exception):
    """A failed system call: `code` is the errno name (ENOENT, ENOSPC, ...)."""

    def __init__(self, code: str, path: str) -> None:
        self.code = code
        self.path = path
        super().__init__(f"{shown_path(path)}: {code}")


class _Fs:
    __slots__ = ("capacity", "name", "root", "used")

    def __init__(self, name: str, capacity: int | None) -> None:
        self.name = name
        self.capacity = capacity
        self.used = 0
        self.root = FsNode(DIR, 0o755, 0, 0, self)

    def free(self) -> int:
        return _UNLIMITED if self.capacity is None else max(0, self.capacity - self.used)


SETGID = 0o2000


def inherited_gid(parent: FsNode) -> int:
    """The group of an entry the updater (root) makes in `parent`: the folder's own group when
    it is set-group-ID, else root's (the kernel's rule; found by the differential tests)."""
    return parent.gid if parent.mode & SETGID else 0


class FsNode:
    """One file, directory or symlink of a filesystem."""

    __slots__ = ("_data", "_digest", "_sha1", "_shares", "_stale", "_stored", "_sum",
                 "children", "fs", "gid", "kind", "link", "mode", "mount", "name", "parent",
                 "uid")

    def __init__(self, kind: str, mode: int, uid: int, gid: int, fs: _Fs,  # noqa: PLR0913
                 parent: FsNode | None = None, name: str = "") -> None:
        self.kind = kind
        self.mode = mode & 0o7777
        self.uid = uid
        self.gid = gid
        self.fs = fs
        self._data = b""
        self._stored: Stored | None = None  # a file's bytes not read yet (then `_data` is b"")
        self.link = ""
        self.children: dict[str, FsNode] = {}
        self.mount: _Mount | None = None  # set on a directory that is a mount point
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
        """A file's bytes (read now if they were `Stored`)."""
        if self._stored is not None:
            self._data, self._stored = self._stored.get(), None
        return self._data

    @property
    def size(self) -> int:
        """`len(data)`, without reading stored bytes."""
        return len(self._data) if self._stored is None else self._stored.size

    def sha1(self) -> str:
        if self._sha1 is None:
            self._sha1 = hashlib.sha1(self.data).hexdigest()
        return self._sha1

    def set_data(self, data: bytes | Stored, sha1: str | None = None) -> None:
        """`sha1`: the data's sha1 when the writer knows it (a patch output, say); given for
        `Stored` bytes."""
        size = data.size if isinstance(data, Stored) else len(data)
        self.fs.used += size - self.size
        self._data, self._stored = (b"", data) if isinstance(data, Stored) else (data, None)
        self._sha1 = sha1
        self.touch()


class Stored:
    """A file's bytes left where they are (a zip's entry, say) until the module first uses
    them: `load` reads them (and checks they are still what was hashed). Every copy of a
    device shares one, so they are read once."""

    __slots__ = ("_data", "load", "size")

    def __init__(self, size: int, load: Callable[[], bytes], data: bytes | None = None) -> None:
        """`data`: the bytes, when read already."""
        self.size = size
        self.load = load
        self._data = data

    def get(self) -> bytes:
        if self._data is None:
            data = self.load()
            if len(data) != self.size:
                raise ValueError(f"stored bytes: {len(data)} read, {self.size} expected")
            self._data = data
        return self._data


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
class _Mount:
    point: str
    fs: _Fs
    active: bool


@dataclass
class Partition:
    """A raw partition: what was last written, and its size (None: no limit)."""

    data: bytes
    size: int | None = None
    # sha1 of the first n bytes, by n: the same image is checked at every power-loss replay
    digests: dict[int, bytes] = field(default_factory=dict, repr=False, compare=False)

    def digest(self, count: int) -> bytes | None:
        """sha1 of what `read(count)` gives, or None past the partition's end."""
        if count not in self.digests:
            data = self.read(count)
            if data is None:
                return None
            self.digests[count] = hashlib.sha1(data).digest()
        return self.digests[count]

    def write(self, data: bytes, digest: bytes | None = None) -> None:
        """`digest`: sha1 of `data`, when the writer knows it."""
        self.data = data
        self.digests = {len(data): digest} if digest is not None else {}

    def read(self, count: int) -> bytes | None:
        """The first `count` bytes as the flash reads them; None past the partition's end."""
        if count <= len(self.data):
            return self.data[:count]
        if self.size is None or count > self.size:
            return None
        return self.data + b"\xff" * (count - len(self.data))


# --- what a run reads and changes, for the power-loss proof (`dfota.device.power_loss`) -----------

# (key, kind, object, detail): one thing about the device a run may read or change. The key
# names it (two items with one key are the same thing); kinds: "c" what a folder holds under a
# name (detail), "l" the names a folder holds, "d" a file's bytes, "o" a node's owner and mode,
# "m" whether a filesystem is mounted, "f" a filesystem's free room (detail: the bytes needed,
# None: the exact figure), "p" a partition's bytes, "x" something not followed (never the same)
Item = tuple[tuple[object, ...], str, Any, Any]
NOT_FOLLOWED: Item = (("x",), "x", None, None)


def child_item(folder: FsNode, name: str) -> Item:
    return (("c", id(folder), name), "c", folder, name)


def listing_item(folder: FsNode) -> Item:
    return (("l", id(folder)), "l", folder, None)


def data_item(node: FsNode) -> Item:
    return (("d", id(node)), "d", node, None)


def owner_item(node: FsNode) -> Item:
    return (("o", id(node)), "o", node, None)


def mount_item(mount: _Mount) -> Item:
    return (("m", id(mount)), "m", mount, None)


def room_item(fs: _Fs, needed: int | None) -> Item:
    return (("f", id(fs)), "f", fs, needed)


def partition_item(part: Partition) -> Item:
    return (("p", id(part)), "p", part, None)


def item_value(item: Item) -> object:
    """What `item` is on the device now."""
    _, kind, obj, detail = item
    if kind == "c":
        return obj.children.get(detail)
    if kind in ("d", "p"):
        return obj.data
    if kind == "o":
        return (obj.uid, obj.gid, obj.mode)
    if kind == "l":
        return tuple(sorted(obj.children))
    if kind == "m":
        return obj.active
    if kind == "f":
        free = obj.free()
        return free if detail is None else free >= detail
    return object()  # "x": never equal to what was seen


def same_value(item: Item, value: object, other: object) -> bool:
    """Whether two values of `item` are the same to a run (a node by identity)."""
    if value is other:
        return True
    return item[1] not in ("c", "x") and value == other


def changed_items(obj: object, attrs: Sequence[str]) -> list[Item]:
    """The items a change of `obj`'s `attrs` changes."""
    if isinstance(obj, FsNode):
        items = []
        if "_data" in attrs:
            items.append(data_item(obj))
        if "mode" in attrs:
            items.append(owner_item(obj))
        if "children" in attrs:
            items.append(listing_item(obj))
            items += [child_item(obj, name) for name in obj.children]
        return items
    if isinstance(obj, _Fs):
        return [room_item(obj, None)]
    if isinstance(obj, _Mount):
        return [mount_item(obj)]
    if isinstance(obj, Partition):
        return [partition_item(obj)]
    return []


class Loaded(NamedTuple):  # a tuple: made for every read a script does
    """A file or partition read whole, with the metadata apply_patch copies."""

    data: bytes
    sha1: str
    mode: int
    uid: int
    gid: int


@functools.lru_cache(maxsize=8192)  # a script names the same paths at every re-run
def _components(path: str) -> tuple[str, ...]:
    """The components of `path` still to walk, last first, without the empty and "." ones."""
    return tuple(p for p in reversed(path.split("/")) if p not in ("", "."))


@functools.lru_cache(maxsize=8192)
def _too_long(path: str) -> bool:
    """Whether the kernel refuses `path` (ENAMETOOLONG): PATH_MAX bytes or more, or a
    component longer than NAME_MAX bytes."""
    raw = path.encode("utf-8", "surrogateescape")
    return len(raw) >= PATH_MAX or any(len(part) > NAME_MAX for part in raw.split(b"/"))


@dataclass(frozen=True)
class DeviceState:
    """What an update is judged by: the tree under /system and the partitions' sha1s."""

    system: dict[str, Entry]
    partitions: dict[str, str] = field(default_factory=dict)


class _Where(NamedTuple):  # a tuple: made for every path a script resolves
    parent: FsNode | None  # None for the root and for paths ending in '..'
    name: str
    node: FsNode | None  # None when nothing is there yet


class Device:
    """The recovery's view of the module. Build one with `Device.from_system`."""

    def __init__(
        self,
        *,
        capacities: Mapping[str, int | None] | None = None,
        mounted: Iterable[str] = ("/cache",),
        partitions: Mapping[str, bytes | Partition] | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        """`capacities` maps each mount point to its size in bytes (None: no limit);
        /system and /cache always exist. `mounted` are mounted when recovery starts."""
        caps = {"/system": None, "/cache": None, **(capacities or {})}
        self.rootfs = _Fs("rootfs", None)
        self.root = self.rootfs.root
        self.mounts: dict[str, _Mount] = {}
        self.initially_mounted = frozenset(mounted)
        for point in sorted(caps):
            if not point.startswith("/") or point.rstrip("/") != point or point == "/":
                raise ValueError(f"bad mount point {point!r}")
            fs = _Fs(point, caps[point])
            holder = self._host_mkdirs(point)
            holder.mount = _Mount(point, fs, point in self.initially_mounted)
            fs.root.parent = holder
            holder.touch()
            self.mounts[point] = holder.mount
        self._host_mkdirs("/tmp")
        self.partitions: dict[str, Partition] = {
            name: p if isinstance(p, Partition) else Partition(bytes(p))
            for name, p in (partitions or {}).items()
        }
        self.properties = dict(properties or {})
        self.hook: Callable[[str], None] | None = None
        self._journal: list[Callable[[], None]] | None = None
        # the power-loss proof's instruments (`dfota.device.power_loss`): what a run reads (and what
        # it sets whatever was there: True) is appended to `reads`, and `watch` hears of
        # each change before it is made
        self.reads: list[tuple[Item, object, bool]] | None = None
        self.watch: Callable[[Item], None] | None = None

    @classmethod
    def from_system(  # noqa: PLR0913
        cls,
        entries: Mapping[str, EntrySpec],
        partitions: Mapping[str, bytes | Partition] | None = None,
        *,
        system_capacity: int | None = None,
        cache_capacity: int | None = None,
        capacities: Mapping[str, int | None] | None = None,
        mounted: Iterable[str] = ("/cache",),
        properties: Mapping[str, str] | None = None,
        sha1s: Mapping[str, str] | None = None,
    ) -> Device:
        """A module whose /system holds `entries` (paths relative to /system); missing
        parent directories are made 0755 root:root. `capacities` adds other mount points.
        `sha1s`: files' sha1s already known, by the same paths."""
        caps = {**(capacities or {}), "/system": system_capacity, "/cache": cache_capacity}
        device = cls(capacities=caps, mounted=mounted, partitions=partitions,
                     properties=properties)
        known = sha1s or {}
        for path in sorted(entries):
            device.put("/system/" + path.strip("/"), *entries[path], sha1=known.get(path))
        return device

    # --- host-side set-up and inspection (every filesystem visible, no hook) ---------------

    def _host_mkdirs(self, path: str) -> FsNode:
        node = self.root
        for name in (p for p in path.split("/") if p):
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = FsNode(DIR, 0o755, 0, 0, node.fs, node, name)
                node.changed_child(name)
            elif child.mount is not None:
                child = child.mount.fs.root
            if child.kind != DIR:
                raise ValueError(f"{path}: {name} is not a directory")
            node = child
        return node

    def put(self, path: str, kind: str, mode: int, uid: int, gid: int,  # noqa: PLR0913
            content: bytes | str | Stored = b"", *, sha1: str | None = None) -> None:
        """Create or replace one entry, whatever is mounted (for setting up a test state);
        `sha1`: a file's, when known (given for `Stored` bytes)."""
        parent_path, _, name = path.rstrip("/").rpartition("/")
        parent = self._host_mkdirs(parent_path)
        old = parent.children.get(name)
        if kind == DIR:
            if old is not None and old.kind == DIR:
                old.mode, old.uid, old.gid = mode & 0o7777, uid, gid
                old.touch()
                return
            node = FsNode(DIR, mode, uid, gid, parent.fs, parent, name)
        elif kind == SYMLINK:
            if isinstance(content, Stored):
                raise ValueError("a symlink's target is given as text")
            node = FsNode(SYMLINK, 0o777, uid, gid, parent.fs, parent, name)
            node.link = content if isinstance(content, str) else content.decode(
                "utf-8", "surrogateescape")
        elif kind == FILE:
            node = FsNode(FILE, mode, uid, gid, parent.fs, parent, name)
            node.set_data(content if isinstance(content, Stored)
                          else content.encode("utf-8", "surrogateescape")
                          if isinstance(content, str) else bytes(content), sha1)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        if old is not None:
            self._release(old)
        parent.children[name] = node
        parent.changed_child(name)

    def copy(self) -> Device:
        """An independent copy (contents are shared: bytes never change in place)."""
        twin = Device.__new__(Device)
        fss: dict[int, _Fs] = {}

        def fs_copy(fs: _Fs, holder: FsNode | None) -> _Fs:
            if id(fs) not in fss:
                new = _Fs.__new__(_Fs)
                new.name, new.capacity, new.used = fs.name, fs.capacity, fs.used
                fss[id(fs)] = new
                new.root = clone(fs.root, holder)
            return fss[id(fs)]

        def clone(node: FsNode, parent: FsNode | None) -> FsNode:
            new = FsNode.__new__(FsNode)
            new.kind, new.mode, new.uid, new.gid = node.kind, node.mode, node.uid, node.gid
            new._data, new._stored = node._data, node._stored
            new.link, new._sha1 = node.link, node._sha1
            new.fs = fss[id(node.fs)]
            new.parent, new.name, new._digest = parent, node.name, node._digest
            new._shares = None if node._shares is None else dict(node._shares)
            new._sum = node._sum
            new._stale = None if node._stale is None else set(node._stale)
            new.mount = None
            new.children = {name: clone(child, new) for name, child in node.children.items()}
            if node.mount is not None:
                new.mount = _Mount(node.mount.point, fs_copy(node.mount.fs, new),
                                   node.mount.active)
                twin.mounts[node.mount.point] = new.mount
            return new

        twin.mounts = {}
        twin.rootfs = fs_copy(self.rootfs, None)
        twin.root = twin.rootfs.root
        twin.initially_mounted = self.initially_mounted
        twin.partitions = {n: Partition(p.data, p.size, dict(p.digests))
                           for n, p in self.partitions.items()}
        twin.properties = dict(self.properties)
        twin.hook = None
        twin._journal = None
        twin.reads = None
        twin.watch = None
        return twin

    # --- trials: changes undone ---------------------------------------------------------------

    @contextlib.contextmanager
    def trial(self) -> Iterator[Device]:
        """Everything the device undergoes inside is undone on leaving: a re-run tried on the
        state a power loss left, without copying the whole tree. The hook is kept too."""
        outer, hook = self._journal, self.hook
        self._journal = []
        try:
            yield self
        finally:
            journal, self._journal = self._journal, outer
            for undo in reversed(journal):
                undo()
            self.hook = hook

    def _remember(self, obj: object, *attrs: str) -> None:
        """Record `obj`'s `attrs` as they are now, to be restored when a trial ends; `obj` is
        about to change, so a node's digest is forgotten (now and when restored)."""
        node = obj if isinstance(obj, FsNode) else None
        every_child = "children" in attrs  # the whole dict replaced
        if node is not None:
            _forget(node, every_child)
        if self.watch is not None:
            for item in changed_items(obj, attrs):
                self.watch(item)
        if self._journal is not None:
            saved = [(name, getattr(obj, name)) for name in attrs]

            def undo() -> None:
                for name, value in saved:
                    setattr(obj, name, value)
                if node is not None:
                    _forget(node, every_child)

            self._journal.append(undo)

    def _remember_child(self, parent: FsNode, name: str) -> None:
        """Record what `parent` holds under `name` now (or that it holds nothing), as
        `_remember` does."""
        parent.changed_child(name)
        if self.watch is not None:
            self.watch(child_item(parent, name))
            self.watch(listing_item(parent))
        if self._journal is not None:
            children, old = parent.children, parent.children.get(name)

            def undo() -> None:
                if old is None:
                    children.pop(name, None)
                else:
                    children[name] = old
                parent.changed_child(name)

            self._journal.append(undo)

    def journal_length(self) -> int:
        return 0 if self._journal is None else len(self._journal)

    def undo_trial(self) -> None:
        """Undo what the trial under way changed so far; the trial goes on."""
        assert self._journal is not None
        journal, self._journal = self._journal, []
        for undo in reversed(journal):
            undo()

    def changed_in_trial(self, since: int = 0) -> bool:
        """Whether the trial under way changed anything (after its first `since` changes)."""
        return self._journal is not None and len(self._journal) > since

    def _read(self, item: Item) -> None:
        """Note that the run depends on `item` as it is now (when reads are followed)."""
        if self.reads is not None:
            self.reads.append((item, item_value(item), False))

    def _set(self, item: Item, value: object) -> None:
        """Note that the run sets `item` to `value`, whatever it was."""
        if self.reads is not None:
            self.reads.append((item, value, True))

    def _set_data(self, node: FsNode, data: bytes, sha1: str | None = None) -> None:
        self._remember(node, "_data", "_stored", "_sha1")
        self._remember(node.fs, "used")
        node.set_data(data, sha1)

    def _release(self, node: FsNode) -> None:
        """Give back the room of a node leaving its filesystem (with all below it)."""
        if node.kind == FILE:
            self._set_data(node, b"")
        for child in node.children.values():
            self._release(child)

    def entries(self, mount_point: str = "/system") -> dict[str, Entry]:
        """Every entry under a filesystem, by path relative to it, in sorted order."""
        out: dict[str, Entry] = {}
        for rel, node in _walk(self.mounts[mount_point].fs.root, ""):
            if node.kind == DIR:
                out[rel] = Entry(rel, DIR, node.mode, node.uid, node.gid)
            elif node.kind == SYMLINK:
                size = len(node.link.encode("utf-8", "surrogateescape"))
                out[rel] = Entry(rel, SYMLINK, 0o777, node.uid, node.gid, size, "", node.link)
            else:
                out[rel] = Entry(rel, FILE, node.mode, node.uid, node.gid, node.size,
                                 node.sha1())
        return dict(sorted(out.items()))

    def keys(self, mount_point: str = "/system") -> dict[str, tuple[object, ...]]:
        """`entry_key` of every entry under a filesystem: what `entries` gives, built fast
        enough to compare after each of hundreds of power-loss replays."""
        # a loop over a stack, unsorted, the tuples of entry_key written out: this runs for
        # every entry after every replay (tests hold it equal to entry_key of `entries`)
        out: dict[str, tuple[object, ...]] = {}
        stack = [(self.mounts[mount_point].fs.root, "")]
        while stack:
            folder, prefix = stack.pop()
            for name, node in folder.children.items():
                if node.mount is not None:
                    node = node.mount.fs.root
                rel = prefix + name
                if node.kind == FILE:
                    out[rel] = (FILE, node.mode, node.uid, node.gid, node.sha1())
                elif node.kind == SYMLINK:
                    out[rel] = (SYMLINK, node.link)
                else:
                    out[rel] = (DIR, node.mode, node.uid, node.gid)
                    stack.append((node, rel + "/"))
        return out

    def digest(self) -> tuple[object, ...]:
        """All the updater can see of the device: every filesystem (type, mode, owner, content
        and link of each node), what is mounted, and the partitions. Two devices with equal
        digests behave alike under the same script. Only the directories changed since the
        last call are hashed again."""
        return (self.root.digest(), tuple(m.active for m in self.mounts.values()),
                tuple((name, p.size, p.digest(len(p.data)))
                      for name, p in self.partitions.items()))

    def partition_sha1s(self) -> dict[str, str]:
        return {name: (p.digest(len(p.data)) or b"").hex()
                for name, p in sorted(self.partitions.items())}

    def state(self) -> DeviceState:
        return DeviceState(self.entries("/system"), self.partition_sha1s())

    def host_read(self, path: str) -> bytes | None:
        """A file's content with every filesystem visible (links followed); None if absent."""
        try:
            node = self.stat(path, every_mount=True)
        except FsError:
            return None
        return node.data if node.kind == FILE else None

    def read_in(self, mount_point: str, path: str) -> bytes | None:
        """A file read as the running system sees it: `mount_point`'s filesystem is `/`."""
        try:
            where = self._resolve(path, True, False, start=self.mounts[mount_point].fs.root)
        except FsError:
            return None
        node = where.node
        return node.data if node is not None and node.kind == FILE else None

    # --- recovery boot ------------------------------------------------------------------------

    def reboot(self) -> None:
        """What a restart of recovery resets: the mounts, and /tmp (a RAM disk)."""
        for mount in self.mounts.values():
            self._remember(mount, "active")
            mount.active = mount.point in self.initially_mounted
        tmp = self.root.children.get("tmp")
        if tmp is not None and tmp.kind == DIR and tmp.mount is None:
            self._remember(tmp, "children")
            tmp.children = {}

    def mount(self, point: str) -> bool:
        mount = self.mounts.get(point)
        if mount is not None:
            self._read(mount_item(mount))
        if mount is None or mount.active:
            return False
        self._remember(mount, "active")
        mount.active = True
        return True

    def unmount(self, point: str) -> bool:
        mount = self.mounts.get(point)
        if mount is not None:
            self._read(mount_item(mount))
        if mount is None or not mount.active:
            return False
        self._remember(mount, "active")
        mount.active = False
        return True

    def is_mounted(self, point: str) -> bool:
        mount = self.mounts.get(point)
        if mount is not None:
            self._read(mount_item(mount))
        return mount is not None and mount.active

    # --- path resolution ----------------------------------------------------------------------

    def _resolve(self, path: str, follow: bool, every_mount: bool,  # noqa: C901
                 start: FsNode | None = None) -> _Where:
        """Where `path` leads. A path without links to follow and without ".." (nearly
        every one a script names) is walked here in one pass; any other by `_walk`."""
        if path == "":
            raise FsError("ENOENT", path)
        if _too_long(path):
            raise FsError("ENAMETOOLONG", path)
        parts = _components(path)  # last first
        must_dir = path.endswith("/")
        current = start or self.root
        parent: FsNode | None = None
        name = ""
        for left in range(len(parts) - 1, -1, -1):
            step = parts[left]
            if step == "..":
                return self._walk(path, follow, every_mount, start)
            if current.kind != DIR:
                raise FsError("ENOTDIR", path)
            child = current.children.get(step)
            if self.reads is not None:
                self._read(child_item(current, step))
                if child is not None and child.mount is not None:
                    self._read(mount_item(child.mount))
            if child is None:
                if left:
                    raise FsError("ENOENT", path)
                return _Where(current, step, None)
            if child.mount is not None and (child.mount.active or every_mount):
                child = child.mount.fs.root
            if child.kind == SYMLINK and (left or follow or must_dir):
                return self._walk(path, follow, every_mount, start)
            if not left:
                if must_dir and child.kind != DIR:
                    raise FsError("ENOTDIR", path)
                return _Where(current, step, child)
            parent, current, name = current, child, step
        return _Where(parent, name, current)

    def _walk(self, path: str, follow: bool, every_mount: bool,  # noqa: C901
              start: FsNode | None) -> _Where:
        """`_resolve` for any path: links followed (at most `_MAX_LINKS`), ".." taken."""
        top = start or self.root
        stack: list[tuple[str, FsNode]] = [("", top)]
        parts = list(_components(path))
        must_dir = path.endswith("/")
        hops = 0
        while parts:
            name = parts.pop()
            if name == "..":
                if len(stack) > 1:
                    stack.pop()
                continue
            current = stack[-1][1]
            if current.kind != DIR:
                raise FsError("ENOTDIR", path)
            more = bool(parts)
            child = current.children.get(name)
            if self.reads is not None:
                self._read(child_item(current, name))
                if child is not None and child.mount is not None:
                    self._read(mount_item(child.mount))
            if child is None:
                if more:
                    raise FsError("ENOENT", path)
                return _Where(current, name, None)
            if child.mount is not None and (child.mount.active or every_mount):
                child = child.mount.fs.root
            if child.kind == SYMLINK and (more or follow or must_dir):
                hops += 1
                if hops > _MAX_LINKS:
                    raise FsError("ELOOP", path)
                if child.link == "":
                    raise FsError("ENOENT", path)
                if _too_long(child.link):
                    raise FsError("ENAMETOOLONG", path)
                if child.link.startswith("/"):
                    stack = [stack[0]]
                parts.extend(p for p in reversed(child.link.split("/")) if p not in ("", "."))
                continue
            if not more:
                if must_dir and child.kind != DIR:
                    raise FsError("ENOTDIR", path)
                return _Where(current, name, child)
            stack.append((name, child))
        name, node = stack[-1]
        return _Where(stack[-2][1] if len(stack) > 1 else None, name, node)

    def stat(self, path: str, *, every_mount: bool = False) -> FsNode:
        node = self._resolve(path, True, every_mount).node
        if node is None:
            raise FsError("ENOENT", path)
        return node

    def lstat(self, path: str) -> FsNode:
        node = self._resolve(path, False, False).node
        if node is None:
            raise FsError("ENOENT", path)
        return node

    def exists(self, path: str) -> bool:
        try:
            self.stat(path)
        except FsError:
            return False
        return True

    def free_space(self, path: str) -> int:
        fs = self.stat(path).fs
        self._read(room_item(fs, None))
        return fs.free()

    def load(self, path: str) -> Loaded:
        """A regular file read whole, links followed."""
        node = self.stat(path)
        if node.kind != FILE:
            raise FsError("EISDIR", path)
        if self.reads is not None:
            self._read(data_item(node))
            self._read(owner_item(node))
        return Loaded(node.data, node.sha1(), node.mode, node.uid, node.gid)

    def listdir(self, path: str) -> list[str]:
        node = self.stat(path)
        if node.kind != DIR:
            raise FsError("ENOTDIR", path)
        return self.names(node)

    def names(self, folder: FsNode) -> list[str]:
        """What a folder already found holds, sorted."""
        self._read(listing_item(folder))
        return sorted(folder.children)

    def content(self, node: FsNode) -> bytes:
        """The bytes of a file already found."""
        self._read(data_item(node))
        return node.data

    def partition(self, name: str) -> Partition | None:
        part = self.partitions.get(name)
        if part is not None:
            self._read(partition_item(part))
        return part

    # --- mutations (each reports one step through `hook` once done) ------------------------

    def _done(self, what: str) -> None:
        if self.hook is not None:
            self.hook(what)

    def write_file(self, path: str, data: bytes, *, new_mode: int,
                   meta: tuple[int, int, int] | None = None, sha1: str | None = None) -> None:
        """open(O_CREAT|O_TRUNC|O_WRONLY) through links, then write: a new file gets
        `new_mode` root:root, an existing one keeps its metadata unless `meta` (mode, uid,
        gid) is given. Out of room, what fits is written and ENOSPC raised. `sha1`: the
        data's, when the caller knows it."""
        where = self._resolve(path, True, False)
        node = where.node
        if node is None:
            if where.parent is None:
                raise FsError("EISDIR", path)
            self._remember_child(where.parent, where.name)
            node = where.parent.children[where.name] = FsNode(
                FILE, new_mode, 0, inherited_gid(where.parent), where.parent.fs, where.parent,
                where.name)
        elif node.kind == DIR:
            raise FsError("EISDIR", path)
        if self.reads is not None:
            self._read(data_item(node))  # not set: what it had decides the room needed
            if len(data) > node.size:
                self._read(room_item(node.fs, len(data) - node.size))
        room = node.fs.free() + node.size  # once truncated
        # the same bytes again (a re-run after a power loss rewrites what is there) change
        # nothing: no undo to keep, no digest to forget
        if not (len(data) <= room and node.size == len(data)
                and (node.data is data or node.data == data)):
            self._set_data(node, b"")
            self._set_data(node, data if len(data) <= room else data[:room],
                           sha1 if len(data) <= room else None)
        if meta is not None:
            self.set_owner_mode(node, meta[1], meta[2], meta[0], path, step=False)
        self._done(f"write {path}")
        if len(data) > room:
            raise FsError("ENOSPC", path)

    def mkdir(self, path: str, mode: int) -> None:
        where = self._resolve(path, False, False)
        if where.node is not None or where.parent is None:
            raise FsError("EEXIST", path)
        self._remember_child(where.parent, where.name)
        # a folder made in a set-group-ID folder is set-group-ID too (the kernel's rule)
        where.parent.children[where.name] = FsNode(
            DIR, mode | (where.parent.mode & SETGID), 0, inherited_gid(where.parent),
            where.parent.fs, where.parent, where.name)
        self._done(f"mkdir {path}")

    def unlink(self, path: str) -> None:
        where = self._resolve(path, False, False)
        if where.node is None:
            raise FsError("ENOENT", path)
        if where.node.kind == DIR:
            raise FsError("EISDIR", path)
        assert where.parent is not None
        self._remember_child(where.parent, where.name)
        self._release(where.parent.children.pop(where.name))
        self._done(f"unlink {path}")

    def rmdir(self, path: str) -> None:
        where = self._resolve(path, False, False)
        node = where.node
        if node is None:
            raise FsError("ENOENT", path)
        if node.kind != DIR:
            raise FsError("ENOTDIR", path)
        if where.parent is None or node is node.fs.root or node.mount is not None:
            raise FsError("EBUSY", path)
        self._read(listing_item(node))
        if node.children:
            raise FsError("ENOTEMPTY", path)
        self._remember_child(where.parent, where.name)
        del where.parent.children[where.name]
        self._done(f"rmdir {path}")

    def symlink(self, target: str, path: str) -> None:
        if len(target.encode("utf-8", "surrogateescape")) >= PATH_MAX:  # names are not checked
            raise FsError("ENAMETOOLONG", target)
        where = self._resolve(path, False, False)
        if where.node is not None or where.parent is None:
            raise FsError("EEXIST", path)
        self._remember_child(where.parent, where.name)
        node = where.parent.children[where.name] = FsNode(
            SYMLINK, 0o777, 0, inherited_gid(where.parent), where.parent.fs, where.parent,
            where.name)
        node.link = target
        self._done(f"symlink {path}")

    def rename(self, src: str, dst: str) -> None:
        self._read(NOT_FOLLOWED)  # a rename is done again, never taken as done
        old = self._resolve(src, False, False)
        new = self._resolve(dst, False, False)
        node = old.node
        if node is None:
            raise FsError("ENOENT", src)
        if old.parent is None or new.parent is None or node is node.fs.root:
            raise FsError("EBUSY", src)
        if new.parent.fs is not node.fs:
            raise FsError("EXDEV", dst)
        if new.node is node:
            return
        if node.kind == DIR and _inside(new.parent, node):
            raise FsError("EINVAL", dst)
        if new.node is not None:
            if new.node.kind == DIR and node.kind != DIR:
                raise FsError("EISDIR", dst)
            if new.node.kind != DIR and node.kind == DIR:
                raise FsError("ENOTDIR", dst)
            if new.node.kind == DIR and (new.node.children or new.node is new.node.fs.root
                                         or new.node.mount is not None):
                raise FsError("ENOTEMPTY", dst)
            self._release(new.node)
        self._remember_child(old.parent, old.name)
        del old.parent.children[old.name]
        self._remember_child(new.parent, new.name)
        new.parent.children[new.name] = node
        self._remember(node, "parent", "name")
        node.parent, node.name = new.parent, new.name
        self._done(f"rename {src} {dst}")

    def set_owner_mode(self, node: FsNode, uid: int | None, gid: int | None,  # noqa: PLR0913
                       mode: int | None, what: str, *, step: bool = True) -> None:
        """chown/chmod on a node already found; None leaves a field as it is. `step`: it
        is a step of its own (else part of the caller's)."""
        new = (node.uid if uid is None else uid, node.gid if gid is None else gid,
               node.mode if mode is None else mode & 0o7777)
        if uid is None or gid is None or mode is None:
            self._read(owner_item(node))  # what is kept depends on what was there
        else:
            self._set(owner_item(node), new)
        if new != (node.uid, node.gid, node.mode):  # the same again changes nothing
            self._remember(node, "uid", "gid", "mode")
            node.uid, node.gid, node.mode = new
        if step:
            self._done(f"chmod {what}")

    def write_partition(self, name: str, data: bytes, digest: bytes | None = None) -> bool:
        """Write `data` (sha1 `digest`, when known); False when it does not fit."""
        part = self.partitions[name]
        self._set(partition_item(part), data if part.size is None or len(data) <= part.size
                  else data[: part.size])
        fits = part.size is None or len(data) <= part.size
        self._remember(part, "data", "digests")
        if fits:
            part.write(data, digest)
        else:
            part.write(data[: part.size])
        self._done(f"write partition {name}")
        return fits


def _forget(node: FsNode, every_child: bool) -> None:
    if every_child:
        node.forget_children()
    else:
        node.touch()


def entry_key(entry: Entry) -> tuple[object, ...]:
    """What a check of the result compares of an entry (`Device.keys` gives the same): a
    symlink by its target only, as the updater cannot set a link's owner or mode."""
    if entry.kind == SYMLINK:
        return (SYMLINK, entry.link)
    if entry.kind == FILE:
        return (FILE, entry.mode, entry.uid, entry.gid, entry.sha1)
    return (DIR, entry.mode, entry.uid, entry.gid)


def _inside(node: FsNode, ancestor: FsNode) -> bool:
    if node is ancestor:
        return True
    return any(_inside(node, child) for child in ancestor.children.values()
               if child.kind == DIR)


def _walk(node: FsNode, prefix: str) -> Iterator[tuple[str, FsNode]]:
    for name in sorted(node.children):
        child = node.children[name]
        if child.mount is not None:
            child = child.mount.fs.root
        rel = f"{prefix}/{name}" if prefix else name
        yield rel, child
        if child.kind == DIR:
            yield from _walk(child, rel)


# --- the updater's zip reader --------------------------------------------------------------


class ZipFormatError(Exception):
    """The device's zip reader refuses the whole package (updater exit 3)."""


@dataclass(frozen=True)
class ZipEntry:
    name: bytes
    method: int
    comp_size: int
    size: int
    offset: int  # of the data


class DeviceZip:
    """The package as the module's minimal zip reader sees it: central directory only,
    byte-sorted names, the first of duplicate names wins, no CRC check."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._read: dict[ZipEntry, tuple[bytes, bool]] = {}
        self._sha1s: dict[ZipEntry, str] = {}
        found = _central_directory(data)
        found.sort(key=lambda e: e.name)  # stable: among equal names the first stays first
        self.entries: list[ZipEntry] = []
        self.by_name: dict[bytes, ZipEntry] = {}
        for entry in found:
            if entry.name not in self.by_name:
                self.by_name[entry.name] = entry
                self.entries.append(entry)

    def find(self, name: bytes) -> ZipEntry | None:
        return self.by_name.get(name)

    def under(self, prefix: bytes) -> tuple[ZipEntry, ...]:
        """The file entries `package_extract_dir` takes from `prefix`, in its order: the
        sorted names that start with it, directory entries left out."""
        at = bisect.bisect_left(self.entries, prefix, key=lambda e: e.name)
        out = []
        for entry in self.entries[at:]:
            if not entry.name.startswith(prefix):
                break  # names are sorted: the matching ones are all together
            if not entry.name.endswith(b"/"):
                out.append(entry)
        return tuple(out)

    def read(self, entry: ZipEntry) -> tuple[bytes, bool]:
        """(the bytes the device gets, whether it calls the read a success)."""
        if entry not in self._read:  # every power-loss replay reads the same entries
            self._read[entry] = self._read_entry(entry)
        return self._read[entry]

    def sha1(self, entry: ZipEntry) -> str:
        """The sha1 of `read(entry)`'s bytes (kept: replays write the same entries again)."""
        if entry not in self._sha1s:
            self._sha1s[entry] = hashlib.sha1(self.read(entry)[0]).hexdigest()
        return self._sha1s[entry]

    def _read_entry(self, entry: ZipEntry) -> tuple[bytes, bool]:
        start = entry.offset
        if entry.method == 0:
            data = self.data[start : start + entry.size]
            return data, len(data) == entry.size
        if entry.method != 8:
            return b"", False
        return _inflate(self.data[start : start + entry.comp_size], entry.size)


def _u16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])


def _central_directory(data: bytes) -> list[ZipEntry]:  # noqa: C901
    size = len(data)
    if size < 22:
        raise ZipFormatError("too small to be a zip")
    first = _u32(data, 0)
    if first == 0x06054B50:
        raise ZipFormatError("the zip is empty")
    if first != 0x04034B50:
        raise ZipFormatError("does not start with a zip local header")
    end = data.rfind(b"PK\x05\x06", 0, size - 18)
    if end < 0:
        raise ZipFormatError("no end-of-central-directory record")
    count, cd = _u16(data, end + 8), _u32(data, end + 16)
    if count == 0 or cd >= size:
        raise ZipFormatError(f"bad central directory ({count} entries at {cd})")
    if count == 0xFFFF or cd == 0xFFFFFFFF:
        raise ZipFormatError("ZIP64 archives are not supported")
    entries = []
    at = cd
    for index in range(count):
        if at + 46 > size or _u32(data, at) != 0x02014B50:
            raise ZipFormatError(f"central directory entry {index} is damaged")
        made_by, method = _u16(data, at + 4), _u16(data, at + 10)
        comp, full = _u32(data, at + 20), _u32(data, at + 24)
        name_len, extra_len, comment_len = (_u16(data, at + n) for n in (28, 30, 32))
        local = _u32(data, at + 42)
        if at + 46 + name_len > size or name_len >= 4096:
            raise ZipFormatError(f"central directory entry {index} has a bad name")
        name = data[at + 46 : at + 46 + name_len]
        if made_by >> 8 not in (0, 3):
            raise ZipFormatError(f"entry {quoted(name)} was made on host {made_by >> 8}, "
                                 "not MS-DOS or Unix")
        if 0xFFFFFFFF in (comp, full, local):
            raise ZipFormatError(f"entry {quoted(name)} needs ZIP64")
        if local + 30 > size or _u32(data, local) != 0x04034B50:
            raise ZipFormatError(f"entry {quoted(name)} has no local header")
        offset = local + 30 + _u16(data, local + 26) + _u16(data, local + 28)
        entries.append(ZipEntry(name, method, comp, full, offset))
        at += 46 + name_len + extra_len + comment_len
    return entries


def _inflate(raw: bytes, size: int) -> tuple[bytes, bool]:
    """Inflate as the device does: output leaves its 32 KiB buffer only when the buffer is
    full or the stream ends, so a corrupt stream yields whole buffers and then stops."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = raw
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, _INFLATE_BUFFER)
            out += chunk
            if not chunk and len(inflater.unconsumed_tail) == len(pending):
                break  # the input ran out before the stream's end
            pending = inflater.unconsumed_tail
    except zlib.error:
        pass
    if not inflater.eof:
        del out[len(out) - len(out) % _INFLATE_BUFFER :]
        return bytes(out), False
    return bytes(out), len(out) == size
