"""Where a path leads on the module, by the rules of Linux.

`..` and symlinks are resolved while walking, absolute link targets start again at the
recovery's root, 40 links at most; a filesystem is visible at its mount point only while
mounted. The kernel refuses (ENAMETOOLONG) a path of PATH_MAX bytes or more and a component
longer than NAME_MAX bytes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from dfota.core.tree import DIR, SYMLINK
from dfota.device.items import child_item, mount_item
from dfota.device.storage import FsError, FsNode
from dfota.device.trials import Trials

_MAX_LINKS = 40
NAME_MAX = 255  # bytes in one component of a path (Linux)
PATH_MAX = 4096  # bytes in a path given to the kernel, its closing NUL included


@functools.lru_cache(maxsize=8192)  # a script names the same paths at every re-run
def _components(path: str) -> tuple[str, ...]:
    """The components of `path` still to walk, last first, without the empty and "." ones."""
    return tuple(p for p in reversed(path.split("/")) if p not in ("", "."))


@functools.lru_cache(maxsize=8192)
def _refused(path: str) -> str | None:
    """Why the kernel refuses `path` outright (ENOENT for "", ENAMETOOLONG); None if not."""
    if path == "":
        return "ENOENT"
    return "ENAMETOOLONG" if _too_long(path) else None


@functools.lru_cache(maxsize=8192)
def _too_long(path: str) -> bool:
    """Whether the kernel refuses `path` (ENAMETOOLONG): PATH_MAX bytes or more, or a
    component longer than NAME_MAX bytes."""
    raw = path.encode("utf-8", "surrogateescape")
    return len(raw) >= PATH_MAX or any(len(part) > NAME_MAX for part in raw.split(b"/"))


class Where(NamedTuple):  # a tuple: made for every path a script resolves
    parent: FsNode | None  # None for the root and for paths ending in '..'
    name: str
    node: FsNode | None  # None when nothing is there yet


class Paths(Trials):
    """Path resolution on a device whose recovery's root is `root`."""

    root: FsNode

    def _resolve(self, path: str, follow: bool, every_mount: bool,
                 start: FsNode | None = None) -> Where:
        """Where `path` leads. A path without links to follow and without ".." (nearly
        every one a script names) is walked here in one pass, inline (it is the hot path of
        every run); any other by `_walk`."""
        refused = _refused(path)
        if refused is not None:
            raise FsError(refused, path)
        parts = _components(path)  # last first
        must_dir = path.endswith("/")
        current = start or self.root
        parent: FsNode | None = None
        name = ""
        for left in range(len(parts) - 1, -1, -1):
            step = parts[left]
            if step == ".." or current.kind != DIR:  # `_walk` takes ".." and says ENOTDIR
                return self._walk(path, follow, every_mount, start)
            child = current.children.get(step)
            if self.reads is not None:
                self._note(current, step, child)
            if child is None:
                return _missing(current, step, path, left > 0)
            if child.mount is not None and (child.mount.active or every_mount):
                child = child.mount.fs.root
            if child.kind == SYMLINK and (left or follow or must_dir):
                return self._walk(path, follow, every_mount, start)
            if not left:
                if must_dir and child.kind != DIR:
                    raise FsError("ENOTDIR", path)
                return Where(current, step, child)
            parent, current, name = current, child, step
        return Where(parent, name, current)

    def _walk(self, path: str, follow: bool, every_mount: bool,
              start: FsNode | None) -> Where:
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
            child = self._child(current, name, path, every_mount)
            if child is not None and child.kind == SYMLINK and (parts or follow or must_dir):
                hops += 1
                parts.extend(_link_parts(child.link, path, hops))
                if child.link.startswith("/"):
                    stack = [stack[0]]
                continue
            if not parts:
                return _last(current, name, child, path)
            if child is None:
                raise FsError("ENOENT", path)
            stack.append((name, child))
        name, node = stack[-1]
        return Where(stack[-2][1] if len(stack) > 1 else None, name, node)

    def _child(self, folder: FsNode, name: str, path: str, every_mount: bool) -> FsNode | None:
        """What `folder` holds under `name`: the root of the filesystem mounted there when it
        is mounted (or `every_mount`); None when nothing is there."""
        if folder.kind != DIR:
            raise FsError("ENOTDIR", path)
        child = folder.children.get(name)
        if self.reads is not None:
            self._note(folder, name, child)
        if child is not None and child.mount is not None and (child.mount.active or every_mount):
            return child.mount.fs.root
        return child

    def _note(self, folder: FsNode, name: str, child: FsNode | None) -> None:
        """A lookup read what `folder` holds under `name` (and whether what is there is
        mounted)."""
        self._read(child_item(folder, name))
        if child is not None and child.mount is not None:
            self._read(mount_item(child.mount))

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


def _missing(folder: FsNode, name: str, path: str, more: bool) -> Where:
    """Nothing is in `folder` under `name`: ENOENT when `more` of `path` is to walk, else
    the place where something may be made."""
    if more:
        raise FsError("ENOENT", path)
    return Where(folder, name, None)


def _last(folder: FsNode, name: str, node: FsNode | None, path: str) -> Where:
    """Where the last component of `path` leads (`node`, None when nothing is there): a path
    ending in "/" must lead to a folder."""
    if node is not None and path.endswith("/") and node.kind != DIR:
        raise FsError("ENOTDIR", path)
    return Where(folder, name, node)


def _link_parts(link: str, path: str, hops: int) -> list[str]:
    """The components a link's target puts before the rest of `path`, last first; `hops`:
    the links followed so far, this one included."""
    if hops > _MAX_LINKS:
        raise FsError("ELOOP", path)
    if link == "":
        raise FsError("ENOENT", path)
    if _too_long(link):
        raise FsError("ENAMETOOLONG", path)
    return [p for p in reversed(link.split("/")) if p not in ("", ".")]
