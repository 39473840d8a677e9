"""The module modeled on the host (`dfota.device.fs.Device`) from a targetfiles zip, and how
its state differs from the one a package must leave.

/system comes from SYSTEM/, the partitions from the boot image and the MULTIFOTA images; each
file is hashed from the bytes read, unless the zip learned its sha1 from an earlier verify's
hashing of the very same zip (by its sha256); the bytes the package reads are checked against
that sha1 as they are read.
"""

from __future__ import annotations

import functools
import zipfile
import zlib
from collections.abc import Iterator, Mapping

from dfota.build.targetfiles import (
    BOOT_IMAGE,
    SYSTEM,
    boot_partition,
    partition_map,
    system_path,
    system_tree,
)
from dfota.core.errors import DfotaError, quoted, shown_path
from dfota.core.tree import FILE, SYMLINK, Entry, Tree
from dfota.core.volumes import DEFAULT_VOLUMES, Volumes
from dfota.device.contents import HOLD, PIECE, Content, Stored, checked, may_hold
from dfota.device.fs import Device
from dfota.device.host import EntrySpec, entry_key
from dfota.device.storage import Partition
from dfota.formats.filelists import FileLists
from dfota.formats.zipio import ZipSource

MINOR_PREFIX = "MULTIFOTA/"


def minor_partitions(src: ZipSource, lists: FileLists) -> dict[str, str]:
    """MULTIFOTA image -> partition, as the package writer maps them."""
    mapping = dict(partition_map(src))
    mapping.update({image: part for image, part in lists.multifota if part})
    return {image: part for image, part in mapping.items()
            if MINOR_PREFIX + image in src.members}


def device_from_targetfiles(src: ZipSource, minor: Mapping[str, str],
                            volumes: Volumes = DEFAULT_VOLUMES, *,
                            stored: dict[str, Stored] | None = None) -> tuple[Device, Tree]:
    """A module running this targetfiles: /system from SYSTEM/, partitions from the images,
    the system volume and /cache of `volumes`' sizes; and its `system_tree`. Each file and
    image is read once, its sha1 taken from the bytes read.

    `stored`: given, the files' bytes are hashed as they are read but not kept: the device
    reads a file again, in pieces, each time it uses its bytes (a few of thousands, for a
    package), from the zip, which must stay open meanwhile, and it must still have that
    sha1. `stored` is filled with every file's and image's `Stored`, by member. An image
    is read whole while the run's budget of bytes held allows (`contents.HOLD`), else left
    in the zip too."""
    contents: dict[str, bytes | Stored] = {}
    for name in src.names(SYSTEM + "/"):
        if src.members[name].kind != FILE:
            continue
        if stored is None:
            contents[name] = src.read_hashed(name)
        else:
            contents[name] = stored[name] = _left_in(src, name)
    tree = system_tree(src)
    entries: dict[str, EntrySpec] = {}
    for path, entry in tree.items():
        content: bytes | str | Stored = (contents[system_path(path)] if entry.kind == FILE
                                         else entry.link if entry.kind == SYMLINK else b"")
        entries[path] = (entry.kind, entry.mode, entry.uid, entry.gid, content)
    images = {boot_partition(src): BOOT_IMAGE}
    images.update({part: MINOR_PREFIX + image for image, part in minor.items()
                   if MINOR_PREFIX + image in src.members})
    partitions: dict[str, Partition] = {}
    for part, name in images.items():
        # an image is held while the run's budget allows (a kernel's patch reads it whole)
        image: Content = src.read_hashed(name) \
            if stored is None or may_hold(src.members[name].size, HOLD) else _left_in(src, name)
        if stored is not None:
            stored[name] = image if isinstance(image, Stored) else \
                Stored(len(image), functools.partial(_read_again, src, name), data=image)
        # its sha1 known: the device and each copy of it do not hash the image again
        partitions[part] = Partition(image, None,
                                     {src.members[name].size: bytes.fromhex(src.sha1(name))})
    device = Device.from_system(entries, partitions, sha1s={
        p: e.sha1 for p, e in tree.items() if e.kind == FILE},
        system_capacity=volumes.system, cache_capacity=volumes.cache)
    return device, tree


def _left_in(src: ZipSource, name: str) -> Stored:
    """A member hashed now (read in pieces, its CRC checked) and read again, in pieces, each
    time it is used."""
    return Stored(src.members[name].size, functools.partial(_read_again, src, name),
                  sha1=src.sha1(name))


def _read_again(src: ZipSource, name: str) -> Iterator[bytes]:
    """A member's bytes read again in pieces: still those hashed."""
    def changed() -> Exception:
        return DfotaError(f"entry {quoted(name)} changed while it was being verified",
                          src.path)

    return checked(_member_pieces(src, name), src.sha1(name), changed)


def _member_pieces(src: ZipSource, name: str) -> Iterator[bytes]:
    try:
        with src.open(name) as member:
            while piece := member.read(PIECE):
                yield piece
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise DfotaError(f"entry {quoted(name)} is corrupt ({exc})", src.path) from exc


def tree_differences(actual: Mapping[str, Entry], expected: Mapping[str, Entry]) -> list[str]:
    """One line per path whose type, content, link target, mode or owner differs.

    A symlink is compared by its target only: the updater cannot set a link's owner or mode.
    """
    lines = []
    for path in sorted(set(actual) | set(expected)):
        a, e = actual.get(path), expected.get(path)
        where = f"/system/{shown_path(path)}"
        if a is None:  # e is not None then: `path` comes from one of the two
            lines.append(f"{where}: missing (expected {e.kind})")  # type: ignore[union-attr]
        elif e is None:
            lines.append(f"{where}: should not be there ({a.kind})")
        elif a.kind != e.kind:
            lines.append(f"{where}: is a {a.kind}, expected a {e.kind}")
        elif a.kind == SYMLINK:
            if a.link != e.link:
                lines.append(f"{where}: points to {quoted(a.link)}, expected {quoted(e.link)}")
        elif a.kind == FILE and a.sha1 != e.sha1:
            lines.append(f"{where}: content differs")
        elif (a.mode, a.uid, a.gid) != (e.mode, e.uid, e.gid):
            lines.append(f"{where}: mode {a.mode:04o} owner {a.uid}:{a.gid}, expected "
                         f"{e.mode:04o} {e.uid}:{e.gid}")
    return lines


def state_differences(device: Device, expected: Tree,
                      partitions: Mapping[str, str]) -> list[str]:
    """What differs between `device` and the state a package must leave (/system as
    `expected`, each partition of `partitions` with that sha1), one line each."""
    if device.keys() == {path: entry_key(e) for path, e in expected.items()} and \
            partitions.items() <= device.partition_sha1s().items():
        return []  # what tree_differences compares is the same: no difference
    state = device.state()
    lines = tree_differences(state.system, expected)
    for name, sha1 in partitions.items():
        if state.partitions.get(name) != sha1:
            lines.append(f"partition {name}: content differs from the target's image")
    return lines
