"""What a run reads and changes, as the power-loss proof (`dfota.device.power_loss`) follows it.

An item is one thing about the device a run may read or change: what a folder holds under a
name, the names it holds, a file's bytes, a node's owner and mode, whether a filesystem is
mounted, a filesystem's free room, a partition's bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dfota.device.storage import Filesystem, FsNode, Mount, Partition

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


def mount_item(mount: Mount) -> Item:
    return (("m", id(mount)), "m", mount, None)


def room_item(fs: Filesystem, needed: int | None) -> Item:
    return (("f", id(fs)), "f", fs, needed)


def partition_item(part: Partition) -> Item:
    return (("p", id(part)), "p", part, None)


def item_value(item: Item) -> object:
    """What `item` is on the device now."""
    _, kind, obj, detail = item
    if kind == "c":
        return obj.children.get(detail)
    if kind in ("d", "p"):
        return obj.content  # bytes, or `Stored` (equal to the same bytes)
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
        if "_data" in attrs or "_stored" in attrs:
            items.append(data_item(obj))
        if "mode" in attrs:
            items.append(owner_item(obj))
        if "children" in attrs:
            items.append(listing_item(obj))
            items += [child_item(obj, name) for name in obj.children]
        return items
    if isinstance(obj, Filesystem):
        return [room_item(obj, None)]
    if isinstance(obj, Mount):
        return [mount_item(obj)]
    if isinstance(obj, Partition):
        return [partition_item(obj)]
    return []

