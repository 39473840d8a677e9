"""The module as its recovery sees it: mounts, lookups and the system calls that change it.

`Device` is built in layers, each a module of its own: the storage it is made of
(`dfota.device.storage`), trials and the proof's instruments (`dfota.device.trials`), path
resolution (`dfota.device.paths`), the host's set-up and inspection (`dfota.device.host`), and
here what the updater does. The recovery's root holds the mount points `/system`, `/cache` (and
any others given) and `/tmp`. Each mutating call reports itself once through the hook the
updater sets, after the change is made.
"""

from __future__ import annotations

from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.device.contents import Content, prefix, sha1_of, size_of
from dfota.device.host import HostSide
from dfota.device.items import (
    NOT_FOLLOWED,
    data_item,
    listing_item,
    mount_item,
    owner_item,
    partition_item,
    room_item,
)
from dfota.device.paths import PATH_MAX
from dfota.device.storage import (
    SETGID,
    FsError,
    FsNode,
    Loaded,
    Meta,
    Partition,
    inherited_gid,
)


class Device(HostSide):
    """The recovery's view of the module. Build one with `Device.from_system`."""

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

    # --- lookups --------------------------------------------------------------------------------

    def free_space(self, path: str) -> int:
        fs = self.stat(path).fs
        self._read(room_item(fs, None))
        return fs.free()

    def load(self, path: str) -> Loaded:
        """A regular file read, links followed (its bytes as held or left where they lie)."""
        node = self.stat(path)
        if node.kind != FILE:
            raise FsError("EISDIR", path)
        if self.reads is not None:
            self._read(data_item(node))
            self._read(owner_item(node))
        return Loaded(node.content, node.sha1(), node.mode, node.uid, node.gid)

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

    def write_file(self, path: str, data: Content, *, new_mode: int,
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
            node = self._made(where.parent, where.name, FILE, new_mode)
        elif node.kind == DIR:
            raise FsError("EISDIR", path)
        size = size_of(data)
        if self.reads is not None:
            self._read(data_item(node))  # not set: what it had decides the room needed
            if size > node.size:
                self._read(room_item(node.fs, size - node.size))
        room = node.fs.free() + node.size  # once truncated
        # the same bytes again (a re-run after a power loss rewrites what is there) change
        # nothing: no undo to keep, no digest to forget
        if not (size <= room and node.size == size and _holds(node, data, sha1)):
            self._set_data(node, b"")
            self._set_data(node, data if size <= room else prefix(data, room),
                           sha1 if size <= room else None)
        if meta is not None:
            self._chown(node, meta[1], meta[2], meta[0])
        self._done(f"write {path}")
        if size > room:
            raise FsError("ENOSPC", path)

    def mkdir(self, path: str, mode: int) -> None:
        where = self._resolve(path, False, False)
        if where.node is not None or where.parent is None:
            raise FsError("EEXIST", path)
        # a folder made in a set-group-ID folder is set-group-ID too (the kernel's rule)
        self._made(where.parent, where.name, DIR, mode | (where.parent.mode & SETGID))
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
        self._made(where.parent, where.name, SYMLINK, 0o777).link = target
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

    def set_owner_mode(self, node: FsNode, uid: int | None, gid: int | None,
                       mode: int | None, what: str) -> None:
        """chown/chmod on a node already found, a step of its own; None leaves a field as
        it is."""
        self._chown(node, uid, gid, mode)
        self._done(f"chmod {what}")

    def _chown(self, node: FsNode, uid: int | None, gid: int | None, mode: int | None) -> None:
        """`set_owner_mode` as part of the caller's step."""
        new = (node.uid if uid is None else uid, node.gid if gid is None else gid,
               node.mode if mode is None else mode & 0o7777)
        if uid is None or gid is None or mode is None:
            self._read(owner_item(node))  # what is kept depends on what was there
        else:
            self._set(owner_item(node), new)
        if new != (node.uid, node.gid, node.mode):  # the same again changes nothing
            self._remember(node, "uid", "gid", "mode")
            node.uid, node.gid, node.mode = new

    def write_partition(self, name: str, data: Content, digest: bytes | None = None) -> bool:
        """Write `data` (sha1 `digest`, when known); False when it does not fit."""
        part = self.partitions[name]
        fits = part.size is None or size_of(data) <= part.size
        written = data if fits or part.size is None else prefix(data, part.size)
        self._set(partition_item(part), written)
        self._remember(part, "content", "digests")
        part.write(written, digest if fits else None)
        self._done(f"write partition {name}")
        return fits

    def _made(self, parent: FsNode, name: str, kind: str, mode: int) -> FsNode:
        """A new entry the updater (root) makes in `parent`, in the folder's group when it
        is set-group-ID."""
        self._remember_child(parent, name)
        node = parent.children[name] = FsNode(kind, Meta(mode, 0, inherited_gid(parent)),
                                              parent.fs, parent, name)
        return node


def _holds(node: FsNode, data: Content, sha1: str | None) -> bool:
    """Whether a file of `data`'s size holds those bytes already."""
    current = node.content
    if current is data:
        return True
    if isinstance(current, bytes) and isinstance(data, bytes):
        return current == data
    return node.sha1() == (sha1 or sha1_of(data))


def _inside(node: FsNode, ancestor: FsNode) -> bool:
    if node is ancestor:
        return True
    return any(_inside(node, child) for child in ancestor.children.values()
               if child.kind == DIR)

