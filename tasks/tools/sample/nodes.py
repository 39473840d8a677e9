"""The sample's trees as plain data (a path -> `Node` mapping), and writing one to disk with
exact modes and one modification time."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dfota.core.tree import DIR, FILE, SYMLINK


@dataclass(frozen=True, slots=True)
class Node:
    """One entry of a sample tree: a file (data), a directory, or a symlink (link text)."""

    kind: str
    mode: int  # permission bits incl. setuid; 0o777 for symlinks
    data: bytes = b""
    link: str = ""


def file_node(data: bytes | str, mode: int = 0o644) -> Node:
    return Node(FILE, mode, data.encode() if isinstance(data, str) else data)


def dir_node(mode: int = 0o755) -> Node:
    return Node(DIR, mode)


def link_node(target: str) -> Node:
    return Node(SYMLINK, 0o777, link=target)


Tree = dict[str, Node]


def under_kept(rel: str) -> bool:
    """Inside the rootfs's own firmware/ or dev/ (the folders themselves are not)."""
    return rel.startswith(("firmware/", "dev/"))


def with_parents(tree: Tree) -> Tree:
    """The tree with a folder for every parent it lacks, sorted by path."""
    out = dict(tree)
    for path in tree:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            out.setdefault("/".join(parts[:depth]), dir_node())
    return dict(sorted(out.items()))


def write_tree(tree: Mapping[str, Node], dest: Path, mtime: int) -> None:
    """Create `tree` under `dest` with exact modes and one mtime (umask and owner proof)."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in sorted(tree):
        node, path = tree[rel], dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if node.kind == DIR:
            path.mkdir(exist_ok=True)
        elif node.kind == SYMLINK:
            os.symlink(node.link, path)
        else:
            path.write_bytes(node.data)
    # modes and times last, deepest first, so no later write touches them
    for rel in sorted(tree, key=lambda r: (-r.count("/"), r)):
        node, path = tree[rel], dest / rel
        if node.kind != SYMLINK:
            os.chmod(path, node.mode)
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    os.chmod(dest, 0o755)
    os.utime(dest, (mtime, mtime))


def fix_modes_and_times(folder: Path, epoch: int) -> None:
    """Every entry under `folder` 0755 (folders) or 0644 (files), with mtime `epoch`."""
    for path in [*folder.rglob("*"), folder]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.utime(path, (epoch, epoch))
