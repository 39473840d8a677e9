"""The UBIFS in a volume of a UBI image (dfota.formats.ubi): its file tree and file contents.

ubi_reader parses the superblock, the master node, inodes and directory-entry keys; index
branches and data-node headers are unpacked here, in place in the mapped image (parsing tens
of thousands of nodes into ubi_reader's objects cost more than decompressing them). Names
that are not UTF-8 make ubi_reader's own walk raise `UnicodeDecodeError`, and it checks no
node CRC, so file data is never verified: the index is walked here, every node's CRC is
checked (data nodes included, on every read), and names are kept as bytes decoded with
`surrogateescape` (a path that is not UTF-8 holds lone surrogates).

Only the committed index is read, as the flashing tools write it (mkfs.ubifs output); an image
dumped from a running device may hold journal entries that are not in it.
"""

from __future__ import annotations

import hashlib
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import cast

from ubireader import ubi_io
from ubireader.ubifs import defines as fs_defs
from ubireader.ubifs import misc as fs_misc
from ubireader.ubifs import nodes as fs_nodes
from ubireader.ubifs import ubifs as ubifs_cls

from dfota.core.errors import DfotaError, shown_path
from dfota.core.tree import DIR, FILE, SYMLINK, Entry, Tree
from dfota.formats.ubi import (
    NODE_HEADER,
    UbiVolume,
    choose_volume,
    mapped_view,
    open_ubi,
    quiet_ubi_reader,
)

_CH = NODE_HEADER  # the common header every UBIFS node starts with
# directory entry after the common header: key (parent inode number, name hash), inode
# number, unused, type, name length, cookie
_DENT = struct.Struct("<I12xQBBHI")
assert _DENT.size == struct.calcsize(fs_defs.UBIFS_DENT_NODE_FORMAT)
# data node after the common header: key (inode number, type and block number, 8 unused
# bytes), size, compression type, compressed size
_DATA = struct.Struct("<II8xIHH")
assert _DATA.size == struct.calcsize(fs_defs.UBIFS_DATA_NODE_FORMAT)
_DATA_NODE = struct.Struct(_CH.format + _DATA.format[1:])  # both, unpacked at once
_DATA_MIN = _DATA_NODE.size
# inode node after the common header: key (inode number, 12 bytes unused), size, uid, gid,
# mode, flags, data length (the rest: times, link count, extended attributes, unused)
_INO = struct.Struct("<I12x8xQ24x12x4xIIIII44x")
assert _INO.size == fs_defs.UBIFS_INO_NODE_SZ
_IDX = struct.Struct("<HH")  # index node after the common header: child count, level
_BRANCH = struct.Struct("<IIIII")  # branch: LEB, offset, length, key (8 bytes)
assert _BRANCH.size == fs_defs.UBIFS_BRANCH_SZ + 8 - fs_defs.UBIFS_SK_LEN
_BLOCK = fs_defs.UBIFS_BLOCK_SIZE
_KEY_BLOCK_MASK = fs_defs.UBIFS_S_KEY_BLOCK_MASK
_KEY_INO_MASK = fs_defs.UBIFS_S_KEY_HASH_MASK
_KEY_TYPE_SHIFT = fs_defs.UBIFS_S_KEY_BLOCK_BITS
_ROOT_INO = fs_defs.UBIFS_ROOT_INO
_DATA_KEY = fs_defs.UBIFS_DATA_KEY
_FILE, _FILE_BLOCK = itemgetter(0), itemgetter(0, 1)  # of a _DataRef
_ITYPES = {  # directory-entry type -> file type bits of the inode mode
    fs_defs.UBIFS_ITYPE_REG: stat.S_IFREG, fs_defs.UBIFS_ITYPE_DIR: stat.S_IFDIR,
    fs_defs.UBIFS_ITYPE_LNK: stat.S_IFLNK, fs_defs.UBIFS_ITYPE_BLK: stat.S_IFBLK,
    fs_defs.UBIFS_ITYPE_CHR: stat.S_IFCHR, fs_defs.UBIFS_ITYPE_FIFO: stat.S_IFIFO,
    fs_defs.UBIFS_ITYPE_SOCK: stat.S_IFSOCK,
}
_SPECIAL_KINDS = {stat.S_IFCHR: "char device", stat.S_IFBLK: "block device",
                  stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


@dataclass(frozen=True, slots=True)
class SpecialNode:
    """A device node, FIFO or socket: in the image, but never in a tree or a zip."""

    path: str
    kind: str  # "char device", "block device", "fifo" or "socket"
    mode: int
    uid: int
    gid: int
    major: int = 0
    minor: int = 0


# a data node: its file's inode number, block number in the file (4 KiB each), LEB, offset
_DataRef = tuple[int, int, int, int]
# a regular file: its size and its data nodes, by block
_FileData = tuple[int, tuple[_DataRef, ...]]


@dataclass(frozen=True)
class UbifsTree:
    """The files of one UBIFS volume: `entries` as the project's tree, special files apart.

    `read` and `chunks` give a file's content, read again from the image with every data
    node's CRC checked (UBIFS keeps a CRC per node; nothing covers a whole file).
    """

    image: Path
    volume: str
    entries: Tree
    special: tuple[SpecialNode, ...]
    _lebs: Mapping[int, int] = field(repr=False, compare=False)  # LEB -> file offset
    _leb_size: int = field(repr=False, compare=False)
    _files: Mapping[str, _FileData] = field(repr=False, compare=False)
    volumes: tuple[UbiVolume, ...] = ()  # every volume of the image, by volume id

    @property
    def device_nodes(self) -> tuple[str, ...]:
        return tuple(n.path for n in self.special)

    def non_utf8_paths(self) -> list[str]:
        return [p for p in self.entries if not _is_utf8(p)]

    def chunks(self, path: str) -> Iterator[bytes]:
        """The content of the regular file `path`, block by block."""
        if path not in self._files:
            raise DfotaError(f"{shown_path(path)} is not a regular file of volume "
                             f"{self.volume}", self.image)
        with mapped_view(self.image) as view:
            reader = _LebReader(self.image, self.volume, self._lebs, self._leb_size, view)
            yield from reader.file_chunks(path, self._files[path])

    def read(self, path: str) -> bytes:
        return b"".join(self.chunks(path))


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _LebReader:
    """Nodes of one volume, read in place from the image mapped in memory, CRC checked. A node
    is addressed by its position in the image: the callers unpack what they need in place
    (tens of thousands of nodes: copying each and parsing it into objects cost seconds). A
    slice of `data` never outlives a call: the image cannot be unmapped while one lives."""

    def __init__(self, image: Path, volume: str, lebs: Mapping[int, int], leb_size: int,
                 data: memoryview) -> None:
        self.image, self.volume, self.lebs, self.leb_size = image, volume, lebs, leb_size
        self.data = data

    def fail(self, message: str) -> DfotaError:
        return DfotaError(f"volume {self.volume}: {message}", self.image)

    def node(self, lnum: int, offs: int,
             what: Callable[[], str] | None = None) -> tuple[int, int, int]:
        """(node type, position in the image, length) of the node at `lnum`:`offs`; `what`
        names the node's owner in errors (called only then)."""

        def where() -> str:
            return f"{what() + ': ' if what else ''}the UBIFS node at LEB {lnum} offset {offs}"
        start = self.lebs.get(lnum)
        if start is None:
            raise self.fail(f"{where()} lies in a logical erase block the image does not hold "
                            "(truncated or damaged)")
        if offs < 0 or offs + _CH.size > self.leb_size:
            raise self.fail(f"{where()} lies outside its erase block")
        pos = start + offs
        if pos + _CH.size > len(self.data):
            raise self.fail(f"the image ends inside {where()} (truncated)")
        magic, crc, _sqnum, length, node_type, _group = _CH.unpack_from(self.data, pos)
        if magic != fs_defs.UBIFS_NODE_MAGIC:
            raise self.fail(f"{where()} is missing (damaged)")
        if length < _CH.size or offs + length > self.leb_size:
            raise self.fail(f"{where()} has an impossible length {length}")
        if pos + length > len(self.data):
            raise self.fail(f"the image ends inside {where()} (truncated)")
        if zlib.crc32(self.data[pos + 8:pos + length]) ^ 0xFFFFFFFF != crc:
            raise self.fail(f"{where()} fails its CRC (damaged)")
        return node_type, pos, length

    def file_chunks(self, path: str, file: _FileData) -> Iterator[bytes]:
        size, refs = file
        done = 0
        for inum, block, lnum, offs in refs:
            start = block * _BLOCK
            if start < done:
                raise self.fail(f"{shown_path(path)}: data block {block} appears twice")
            if start > done:  # a hole reads as zeros
                yield bytes(start - done)
                done = start
            data = self.data_block(inum, block, lnum, offs) \
                or self.checked_data_block(path, (inum, block, lnum, offs))  # says what is wrong
            if done + len(data) > size:
                raise self.fail(f"{shown_path(path)}: data beyond the file's size {size}")
            done += len(data)
            yield data
        if done < size:
            yield bytes(size - done)

    def data_block(self, inum: int, block: int, lnum: int, offs: int) -> bytes | None:
        """The content of a data node that passes every check of `checked_data_block`, all
        at once; None if one fails (`checked_data_block` then says which)."""
        start, view = self.lebs.get(lnum), self.data
        if start is None or offs < 0 or offs + _DATA_MIN > self.leb_size \
                or start + offs + _DATA_MIN > len(view):
            return None
        pos = start + offs
        magic, crc, _sqnum, length, node_type, _group, high, low, size, compr_type, _plain = \
            _DATA_NODE.unpack_from(view, pos)
        if magic != fs_defs.UBIFS_NODE_MAGIC or node_type != fs_defs.UBIFS_DATA_NODE \
                or length < _DATA_MIN or offs + length > self.leb_size \
                or pos + length > len(view) or high & _KEY_INO_MASK != inum \
                or low & _KEY_BLOCK_MASK != block or size > _BLOCK \
                or zlib.crc32(view[pos + 8:pos + length]) ^ 0xFFFFFFFF != crc:
            return None
        data = _decompressed(compr_type, size, view[pos + _DATA_MIN:pos + length])
        return data if data is not None and len(data) == size else None

    def checked_data_block(self, path: str, ref: _DataRef) -> bytes:
        inum, block, lnum, offs = ref
        node_type, pos, length = self.node(
            lnum, offs, lambda: f"{shown_path(path)}, data block {block}")
        if node_type != fs_defs.UBIFS_DATA_NODE or length < _CH.size + _DATA.size:
            raise self.fail(f"{shown_path(path)}: the index points at a node that is not its "
                            f"data (LEB {lnum} offset {offs})")
        high, low, size, compr_type, _plain = _DATA.unpack_from(self.data, pos + _CH.size)
        if (high & _KEY_INO_MASK, low & _KEY_BLOCK_MASK) != (inum, block):
            raise self.fail(f"{shown_path(path)}: the index points at another file's data "
                            f"(LEB {lnum} offset {offs})")
        if size > _BLOCK:
            raise self.fail(f"{shown_path(path)}: data block {block} claims {size} bytes")
        data = _decompressed(compr_type, size, self.data[pos + _DATA_MIN:pos + length])
        if data is None or len(data) != size:
            raise self.fail(f"{shown_path(path)}: data block {block} does not decompress "
                            f"to its {size} bytes (compression type {compr_type})")
        return data


def _decompressed(compr_type: int, size: int, payload: memoryview) -> bytes | None:
    # ubi_reader's decompress takes any buffer; stored data comes back as it is
    data = fs_misc.decompress(compr_type, size, cast("bytes", payload))
    return None if data is None else data if type(data) is bytes else bytes(data)


# ---------------------------------------------------------------------------------------------
# The committed index


@dataclass(slots=True)
class _Inode:
    mode: int
    uid: int
    gid: int
    size: int
    flags: int
    data: bytes


@dataclass(slots=True)
class _Index:
    inodes: dict[int, _Inode] = field(default_factory=dict)
    dents: dict[int, list[tuple[bytes, int, int]]] = field(default_factory=dict)
    data: list[_DataRef] = field(default_factory=list)  # as the index lists them


class _IndexWalk:
    """Every leaf node the committed index points at: inodes, directory entries, and where
    the data nodes lie (read, and CRC checked, with the file's content)."""

    def __init__(self, reader: _LebReader) -> None:
        self.reader, self.data = reader, reader.data
        self.index = _Index()
        self.stack: list[tuple[int, int]] = []
        # node type -> what takes it in, from (LEB, offset, position in the image, length)
        self.takes: dict[int, Callable[[int, int, int, int], None]] = {
            fs_defs.UBIFS_IDX_NODE: self.branches, fs_defs.UBIFS_INO_NODE: self.inode,
            fs_defs.UBIFS_DENT_NODE: self.dent, fs_defs.UBIFS_XENT_NODE: self.xent}

    def walk(self, root: tuple[int, int]) -> _Index:
        reader = self.reader
        self.stack.append(root)
        seen: set[tuple[int, int]] = set()
        while self.stack:
            lnum, offs = self.stack.pop()
            if (lnum, offs) in seen:
                raise reader.fail(f"the UBIFS index points twice at LEB {lnum} offset {offs}")
            seen.add((lnum, offs))
            node_type, pos, length = reader.node(lnum, offs)
            take = self.takes.get(node_type)
            if take is None:
                raise reader.fail(f"unexpected UBIFS node type {node_type} in the index at "
                                  f"LEB {lnum} offset {offs}")
            try:
                take(lnum, offs, pos, length)
            except (struct.error, ZeroDivisionError, IndexError, KeyError) as exc:
                raise reader.fail(f"malformed UBIFS node at LEB {lnum} offset {offs} "
                                  f"({exc})") from exc
        return self.index

    def branches(self, lnum: int, offs: int, pos: int, length: int) -> None:
        data, body = self.data, pos + _CH.size
        child_cnt, level = _IDX.unpack_from(data, body)
        if child_cnt == 0:
            raise self.reader.fail(f"empty UBIFS index node at LEB {lnum} offset {offs}")
        # a branch may carry a hash after its key (authenticated UBIFS)
        branch_size = (length - _CH.size - _IDX.size) // child_cnt
        if branch_size < _BRANCH.size:
            raise self.reader.fail(f"UBIFS index node at LEB {lnum} offset {offs} is too "
                                   f"short for its {child_cnt} branches")
        first = body + _IDX.size
        # (the unpacking iterator holds its slice of the image: never kept in a name)
        branch = _BRANCH if branch_size == _BRANCH.size else \
            struct.Struct(f"{_BRANCH.format}{branch_size - _BRANCH.size}x")
        found = list(branch.iter_unpack(data[first:first + child_cnt * branch_size]))
        found.reverse()
        if level == 0:  # data nodes are read, and CRC checked, with the file's content
            refs = [(high & _KEY_INO_MASK, low & _KEY_BLOCK_MASK, b_lnum, b_offs)
                    for b_lnum, b_offs, _len, high, low in found
                    if low >> _KEY_TYPE_SHIFT == _DATA_KEY]
            self.index.data.extend(refs)
            if len(refs) == len(found):
                return
            found = [b for b in found if b[4] >> _KEY_TYPE_SHIFT != _DATA_KEY]
        self.stack.extend([b[:2] for b in found])

    def inode(self, _lnum: int, _offs: int, pos: int, length: int) -> None:
        body = pos + _CH.size
        if length < _CH.size + _INO.size:  # ubi_reader says what is wrong
            fs_nodes.ino_node(bytes(self.data[body:pos + length]))
        inum, size, uid, gid, mode, flags, data_len = _INO.unpack_from(self.data, body)
        data = bytes(self.data[body + _INO.size:pos + length])
        if len(data) != data_len:
            raise self.reader.fail(f"inode {inum & _KEY_INO_MASK} has a bad data length")
        self.index.inodes[inum & _KEY_INO_MASK] = _Inode(mode, uid, gid, size, flags, data)

    def dent(self, lnum: int, offs: int, pos: int, length: int) -> None:
        data, body = self.data, pos + _CH.size
        parent, inum, _pad, itype, nlen, _cookie = _DENT.unpack_from(data, body)
        name = bytes(data[body + _DENT.size:min(body + _DENT.size + nlen, pos + length)])
        if len(name) != nlen:
            raise self.reader.fail(f"directory entry at LEB {lnum} offset {offs} is cut")
        self.index.dents.setdefault(parent & _KEY_INO_MASK, []).append((name, inum, itype))

    def xent(self, _lnum: int, _offs: int, _pos: int, _length: int) -> None:
        """An extended attribute's entry: not part of the tree."""


# ---------------------------------------------------------------------------------------------
# The tree


@dataclass(frozen=True, slots=True)
class _Files:
    entries: Tree
    special: tuple[SpecialNode, ...]
    data: dict[str, _FileData]  # the regular files, by path


def _device_numbers(data: bytes) -> tuple[int, int]:
    if len(data) not in (4, 8):
        return 0, 0
    dev = int.from_bytes(data, "little")
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


class _TreeBuild:
    """The directory entries followed from the root: the tree, special files apart, with each
    regular file's content hashed (read once per inode, every data node CRC checked)."""

    def __init__(self, reader: _LebReader, index: _Index) -> None:
        self.reader, self.index = reader, index
        self.entries: Tree = {}
        self.special: list[SpecialNode] = []
        self.files: dict[str, _FileData] = {}
        self.hashes: dict[int, str] = {}
        self.refs_of = {inum: tuple(refs) for inum, refs in
                        groupby(sorted(index.data, key=_FILE_BLOCK), key=_FILE)}
        self.visited_dirs = {_ROOT_INO}
        self.seen_paths: set[str] = set()
        self.stack: list[tuple[int, str]] = [(_ROOT_INO, "")]
        # file type bits -> what takes the entry in, from (path, inode number, inode)
        self.takes: dict[int, Callable[[str, int, _Inode], None]] = {
            stat.S_IFDIR: self.directory, stat.S_IFLNK: self.symlink,
            stat.S_IFREG: self.regular, **dict.fromkeys(_SPECIAL_KINDS, self.special_file)}

    def build(self) -> _Files:
        root = self.index.inodes.get(_ROOT_INO)
        if root is None or not stat.S_ISDIR(root.mode):
            raise self.reader.fail("the UBIFS has no root directory")
        while self.stack:
            dir_inum, dir_path = self.stack.pop()
            for raw, inum, itype in sorted(self.index.dents.get(dir_inum, []), reverse=True):
                path = self.path_of(dir_path, raw)
                ino = self.inode_of(path, inum, itype)
                take = self.takes.get(stat.S_IFMT(ino.mode))
                if take is None:
                    raise self.reader.fail(f"{shown_path(path)} has an unknown file type")
                take(path, inum, ino)
        return _Files(dict(sorted(self.entries.items())),
                      tuple(sorted(self.special, key=lambda n: n.path)), self.files)

    def path_of(self, dir_path: str, raw: bytes) -> str:
        if not raw or raw in (b".", b"..") or b"/" in raw or b"\0" in raw:
            raise self.reader.fail(f"directory entry {raw!r} in {shown_path(dir_path or '/')} "
                                   "is not a valid name")
        name = raw.decode("utf-8", "surrogateescape")
        path = f"{dir_path}/{name}" if dir_path else name
        if path in self.seen_paths:
            raise self.reader.fail(f"{shown_path(path)}: two directory entries of that name")
        self.seen_paths.add(path)
        return path

    def inode_of(self, path: str, inum: int, itype: int) -> _Inode:
        ino = self.index.inodes.get(inum)
        if ino is None:
            raise self.reader.fail(f"{shown_path(path)} points at inode {inum}, which the "
                                   "index does not hold")
        if _ITYPES.get(itype) != stat.S_IFMT(ino.mode):
            raise self.reader.fail(f"{shown_path(path)}: directory entry and inode disagree "
                                   "on the file type")
        return ino

    def directory(self, path: str, inum: int, ino: _Inode) -> None:
        if inum in self.visited_dirs:
            raise self.reader.fail(f"{shown_path(path)}: directory reached twice")
        self.visited_dirs.add(inum)
        self.entries[path] = Entry(path, DIR, stat.S_IMODE(ino.mode), ino.uid, ino.gid)
        self.stack.append((inum, path))

    def symlink(self, path: str, _inum: int, ino: _Inode) -> None:
        target = ino.data.decode("utf-8", "surrogateescape")
        self.entries[path] = Entry(path, SYMLINK, 0o777, ino.uid, ino.gid, len(ino.data), "",
                                   target)

    def regular(self, path: str, inum: int, ino: _Inode) -> None:
        file = self.files[path] = (ino.size, self.refs_of.get(inum, ()))
        if inum not in self.hashes:
            digest = hashlib.sha1()
            for chunk in self.reader.file_chunks(path, file):
                digest.update(chunk)
            self.hashes[inum] = digest.hexdigest()
        self.entries[path] = Entry(path, FILE, stat.S_IMODE(ino.mode), ino.uid, ino.gid,
                                   ino.size, self.hashes[inum])

    def special_file(self, path: str, _inum: int, ino: _Inode) -> None:
        major, minor = _device_numbers(ino.data)
        self.special.append(SpecialNode(path, _SPECIAL_KINDS[stat.S_IFMT(ino.mode)],
                                        stat.S_IMODE(ino.mode), ino.uid, ino.gid, major, minor))


# ---------------------------------------------------------------------------------------------
# Reading a volume


def read_ubifs(image: Path, volume: str | None = None, *,
               peb_size: int | None = None) -> UbifsTree:
    """The file tree of the UBIFS in `volume` (by name; None: the volume with the lowest id).

    Every node read is CRC checked, file contents included (their sha1 is in the entries).
    """
    with open_ubi(image, peb_size) as (found, all_volumes):
        chosen = choose_volume(image, all_volumes, volume)
        name = chosen.info.name
        with quiet_ubi_reader(image, f"read the UBIFS of volume {name}"):
            vol = found.images[0].volumes[name]
            fs = ubifs_cls(ubi_io.leb_virtual_file(found, vol.get_blocks(found.blocks)))
            master, sb = fs.master_node, fs.superblock_node
    if master is None:
        raise DfotaError(f"volume {name}: no valid UBIFS master node", image)
    if sb.leb_size != chosen.leb_size:
        raise DfotaError(f"volume {name}: the UBIFS was made for {sb.leb_size}-byte erase "
                         f"blocks, the volume has {chosen.leb_size}", image)
    if chosen.info.leb_count < sb.leb_cnt:
        raise DfotaError(f"volume {name} holds {chosen.info.leb_count} of the "
                         f"{sb.leb_cnt} erase blocks of its file system: the image is "
                         "truncated or damaged", image)

    with mapped_view(image) as view:
        reader = _LebReader(image, name, chosen.lebs, chosen.leb_size, view)
        reader.node(0, 0, lambda: "superblock")  # ubi_reader does not check its CRC
        index = _IndexWalk(reader).walk((master.root_lnum, master.root_offs))
        files = _TreeBuild(reader, index).build()
        return UbifsTree(image, name, files.entries, files.special, chosen.lebs,
                         chosen.leb_size, files.data, tuple(v.info for v in all_volumes))
