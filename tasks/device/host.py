"""The module as the host sets it up and inspects it: every filesystem visible, no hook.

`HostSide` builds a device (its mount points, /tmp, partitions and properties, and the tree
under /system from `EntrySpec`s), copies it, and reads what an update is judged by: the
entries of a filesystem, their keys, the device's digest and its `DeviceState`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypedDict, TypeVar

from dfota.core.tree import DIR, FILE, SYMLINK, Entry
from dfota.device.contents import Content, Stored, size_of, whole
from dfota.device.paths import Paths
from dfota.device.storage import (
    Filesystem,
    FsError,
    FsNode,
    Meta,
    Mount,
    Partition,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

# path -> (kind, mode, uid, gid, content for a file or target for a symlink)
EntrySpec = tuple[str, int, int, int, "bytes | str | Stored"]
_D = TypeVar("_D", bound="HostSide")


@dataclass(frozen=True)
class DeviceState:
    """What an update is judged by: the tree under /system and the partitions' sha1s."""

    system: dict[str, Entry]
    partitions: dict[str, str] = field(default_factory=dict)


class SetUp(TypedDict, total=False):
    """What `HostSide.from_system` takes besides the entries and partitions."""

    system_capacity: int | None
    cache_capacity: int | None
    capacities: Mapping[str, int | None] | None  # other mount points
    mounted: Iterable[str]
    properties: Mapping[str, str] | None


class HostSide(Paths):
    """A device as the host builds, copies and inspects it (the base of `Device`)."""

    def __init__(
        self,
        *,
        capacities: Mapping[str, int | None] | None = None,
        mounted: Iterable[str] = ("/cache",),
        partitions: Mapping[str, Content | Partition] | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        """`capacities` maps each mount point to its size in bytes (None: no limit);
        /system and /cache always exist. `mounted` are mounted when recovery starts."""
        super().__init__()
        caps = {"/system": None, "/cache": None, **(capacities or {})}
        self.rootfs = Filesystem("rootfs", None)
        self.root = self.rootfs.root
        self.mounts: dict[str, Mount] = {}
        self.initially_mounted = frozenset(mounted)
        for point in sorted(caps):
            if not point.startswith("/") or point.rstrip("/") != point or point == "/":
                raise ValueError(f"bad mount point {point!r}")
            fs = Filesystem(point, caps[point])
            holder = self._host_mkdirs(point)
            holder.mount = Mount(point, fs, point in self.initially_mounted)
            fs.root.parent = holder
            holder.touch()
            self.mounts[point] = holder.mount
        self._host_mkdirs("/tmp")
        self.partitions: dict[str, Partition] = {
            name: p if isinstance(p, Partition) else Partition(p)
            for name, p in (partitions or {}).items()
        }
        self.properties = dict(properties or {})

    @classmethod
    def from_system(cls: type[_D], entries: Mapping[str, EntrySpec],
                    partitions: Mapping[str, Content | Partition] | None = None, *,
                    sha1s: Mapping[str, str] | None = None, **setup: Unpack[SetUp]) -> _D:
        """A module whose /system holds `entries` (paths relative to /system); missing
        parent directories are made 0755 root:root. `capacities` adds other mount points.
        `sha1s`: files' sha1s already known, by the same paths."""
        caps = {**(setup.get("capacities") or {}), "/system": setup.get("system_capacity"),
                "/cache": setup.get("cache_capacity")}
        device = cls(capacities=caps, mounted=setup.get("mounted", ("/cache",)),
                     partitions=partitions, properties=setup.get("properties"))
        known = sha1s or {}
        for path in sorted(entries):
            device.put("/system/" + path.strip("/"), *entries[path], sha1=known.get(path))
        return device

    def _host_mkdirs(self, path: str) -> FsNode:
        node = self.root
        for name in (p for p in path.split("/") if p):
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = FsNode(DIR, Meta(0o755, 0, 0), node.fs, node, name)
                node.changed_child(name)
            elif child.mount is not None:
                child = child.mount.fs.root
            if child.kind != DIR:
                raise ValueError(f"{path}: {name} is not a directory")
            node = child
        return node

    def put(self, path: str, *spec: Unpack[EntrySpec], sha1: str | None = None) -> None:
        """Create or replace one entry, whatever is mounted (for setting up a test state);
        `sha1`: a file's, when known (given for `Stored` bytes)."""
        kind, mode, uid, gid, content = spec
        parent_path, _, name = path.rstrip("/").rpartition("/")
        parent = self._host_mkdirs(parent_path)
        old = parent.children.get(name)
        if kind == DIR:
            if old is not None and old.kind == DIR:
                old.mode, old.uid, old.gid = mode & 0o7777, uid, gid
                old.touch()
                return
            node = FsNode(DIR, Meta(mode, uid, gid), parent.fs, parent, name)
        elif kind == SYMLINK:
            if isinstance(content, Stored):
                raise ValueError("a symlink's target is given as text")
            node = FsNode(SYMLINK, Meta(0o777, uid, gid), parent.fs, parent, name)
            node.link = content if isinstance(content, str) else content.decode(
                "utf-8", "surrogateescape")
        elif kind == FILE:
            node = FsNode(FILE, Meta(mode, uid, gid), parent.fs, parent, name)
            node.set_data(content if isinstance(content, Stored)
                          else content.encode("utf-8", "surrogateescape")
                          if isinstance(content, str) else bytes(content), sha1)
        else:
            raise ValueError(f"unknown kind {kind!r}")
        if old is not None:
            self._release(old)
        parent.children[name] = node
        parent.changed_child(name)

    def copy(self: _D) -> _D:
        """An independent copy (contents are shared: bytes never change in place)."""
        twin = type(self).__new__(type(self))
        fss: dict[int, Filesystem] = {}

        def fs_copy(fs: Filesystem, holder: FsNode | None) -> Filesystem:
            if id(fs) not in fss:
                new = Filesystem.__new__(Filesystem)
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
                new.mount = Mount(node.mount.point, fs_copy(node.mount.fs, new),
                                  node.mount.active)
                twin.mounts[node.mount.point] = new.mount
            return new

        twin.mounts = {}
        twin.rootfs = fs_copy(self.rootfs, None)
        twin.root = twin.rootfs.root
        twin.initially_mounted = self.initially_mounted
        twin.partitions = {n: Partition(p.content, p.size, dict(p.digests))
                           for n, p in self.partitions.items()}
        twin.properties = dict(self.properties)
        twin.hook = None
        twin._journal = None
        twin.reads = None
        twin.watch = None
        return twin

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
                tuple((name, p.size, p.digest(size_of(p.content)))
                      for name, p in self.partitions.items()))

    def partition_sha1s(self) -> dict[str, str]:
        return {name: (p.digest(size_of(p.content)) or b"").hex()
                for name, p in sorted(self.partitions.items())}

    def state(self) -> DeviceState:
        return DeviceState(self.entries("/system"), self.partition_sha1s())

    def host_read(self, path: str) -> bytes | None:
        """A file's content with every filesystem visible (links followed); None if absent."""
        content = self.host_content(path)
        return None if content is None else whole(content)

    def host_content(self, path: str) -> Content | None:
        """`host_read`, the bytes as held or left where they lie."""
        try:
            node = self.stat(path, every_mount=True)
        except FsError:
            return None
        return node.content if node.kind == FILE else None

    def read_in(self, mount_point: str, path: str) -> bytes | None:
        """A file read as the running system sees it: `mount_point`'s filesystem is `/`."""
        try:
            where = self._resolve(path, True, False, start=self.mounts[mount_point].fs.root)
        except FsError:
            return None
        node = where.node
        return node.data if node is not None and node.kind == FILE else None


def entry_key(entry: Entry) -> tuple[object, ...]:
    """What a check of the result compares of an entry (`Device.keys` gives the same): a
    symlink by its target only, as the updater cannot set a link's owner or mode."""
    if entry.kind == SYMLINK:
        return (SYMLINK, entry.link)
    if entry.kind == FILE:
        return (FILE, entry.mode, entry.uid, entry.gid, entry.sha1)
    return (DIR, entry.mode, entry.uid, entry.gid)


def _walk(node: FsNode, prefix: str) -> Iterator[tuple[str, FsNode]]:
    for name in sorted(node.children):
        child = node.children[name]
        if child.mount is not None:
            child = child.mount.fs.root
        rel = f"{prefix}/{name}" if prefix else name
        yield rel, child
        if child.kind == DIR:
            yield from _walk(child, rel)

