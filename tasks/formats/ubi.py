"""Read UBI images (`sdxlemur-sysfs.ubi`, `NON-HLOS.ubi`) and the UBIFS in their volumes.

The only module that imports ubi_reader. ubi_reader finds the erase blocks, the volume table
and the volumes, and parses the superblock, the master node, inodes and directory-entry keys;
index branches and data-node headers are unpacked here, in place in the mapped image (parsing
tens of thousands of nodes into ubi_reader's objects cost more than decompressing them). Around
it:

- it prints to stdout and calls `sys.exit` on fatal errors: it runs with stdout and stderr
  captured, `SystemExit` and its other exceptions become one `DfotaError` naming the image;
- a bad header CRC gives an `AttributeError` inside it, a damaged volume-table record is
  dropped silently: every erase-counter and volume-id header and both volume-table copies are
  checked here first, and a damaged one is named;
- `guess_peb_size` can return a wrong or negative size: a guess that does not fit the file
  falls back to the sdxlemur geometry (256 KiB erase blocks);
- names that are not UTF-8 make its walk raise `UnicodeDecodeError`, and it checks no node
  CRC, so file data is never verified: the index is walked here, every node's CRC is checked
  (data nodes included, on every read), and names are kept as bytes decoded with
  `surrogateescape` (a path that is not UTF-8 holds lone surrogates).

Only the committed index is read, as the flashing tools write it (mkfs.ubifs output); an image
dumped from a running device may hold journal entries that are not in it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import mmap
import os
import stat
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple

from ubireader import ubi as ubi_mod
from ubireader import ubi_io
from ubireader.ubi import defines as ubi_defs
from ubireader.ubi.headers import ec_hdr, vid_hdr
from ubireader.ubifs import defines as fs_defs
from ubireader.ubifs import misc as fs_misc
from ubireader.ubifs import nodes as fs_nodes
from ubireader.ubifs import ubifs as ubifs_cls
from ubireader.utils import guess_peb_size

from dfota.core.errors import DfotaError, shown_path
from dfota.core.tree import DIR, FILE, SYMLINK, Entry, Tree

# sdxlemur NAND geometry: the fallback when the erase-block size cannot be guessed
PEB_SIZE = 256 * 1024
MIN_IO = 4096

_LAYOUT_VOLUME_ID = 0x7FFFEFFF
_VTBL_REC_SZ = ubi_defs.UBI_VTBL_REC_SZ
_VTBL_BYTES = ubi_defs.UBI_MAX_VOLUMES * _VTBL_REC_SZ
_HDR_SZ = ubi_defs.UBI_EC_HDR_SZ  # EC and VID headers are both 64 bytes

_CH = struct.Struct("<4sIQIBB2x")  # UBIFS common header: magic, crc, sqnum, len, type, group
_DENT = struct.Struct(fs_defs.UBIFS_DENT_NODE_FORMAT)
# data node after the common header: key (inode number, type and block number, 8 unused
# bytes), size, compression type, compressed size
_DATA = struct.Struct("<II8xIHH")
assert _DATA.size == struct.calcsize(fs_defs.UBIFS_DATA_NODE_FORMAT)
_IDX = struct.Struct("<HH")  # index node after the common header: child count, level
_BRANCH = struct.Struct("<IIIII")  # branch: LEB, offset, length, key (8 bytes)
assert _BRANCH.size == fs_defs.UBIFS_BRANCH_SZ + 8 - fs_defs.UBIFS_SK_LEN
_INO_SZ = fs_defs.UBIFS_INO_NODE_SZ
_BLOCK = fs_defs.UBIFS_BLOCK_SIZE
_KEY_BLOCK_MASK = fs_defs.UBIFS_S_KEY_BLOCK_MASK
_KEY_INO_MASK = fs_defs.UBIFS_S_KEY_HASH_MASK
_KEY_TYPE_SHIFT = fs_defs.UBIFS_S_KEY_BLOCK_BITS
_ROOT_INO = fs_defs.UBIFS_ROOT_INO
_ITYPES = {  # directory-entry type -> file type bits of the inode mode
    fs_defs.UBIFS_ITYPE_REG: stat.S_IFREG, fs_defs.UBIFS_ITYPE_DIR: stat.S_IFDIR,
    fs_defs.UBIFS_ITYPE_LNK: stat.S_IFLNK, fs_defs.UBIFS_ITYPE_BLK: stat.S_IFBLK,
    fs_defs.UBIFS_ITYPE_CHR: stat.S_IFCHR, fs_defs.UBIFS_ITYPE_FIFO: stat.S_IFIFO,
    fs_defs.UBIFS_ITYPE_SOCK: stat.S_IFSOCK,
}
_SPECIAL_KINDS = {stat.S_IFCHR: "char device", stat.S_IFBLK: "block device",
                  stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


def _crc(data: bytes) -> int:
    return zlib.crc32(data) ^ 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class UbifsGeometry:
    """What sizes a UBIFS, as its superblock says (`mkfs.ubifs` writes it) or as the kernel
    chooses when it formats an empty volume at its first mount."""

    leb_size: int
    leb_cnt: int  # LEBs the file system spans now
    max_leb_cnt: int  # LEBs it may grow to (mkfs.ubifs -c): the kernel grows it at mount
    log_lebs: int
    lpt_lebs: int
    orph_lebs: int
    jhead_cnt: int  # data journal heads, as the superblock counts them
    fanout: int


@dataclass(frozen=True, slots=True)
class UbiVolume:
    """One volume of a UBI image, from the volume table and the blocks present."""

    name: str
    vol_id: int
    vol_type: str  # "dynamic" or "static"
    leb_count: int  # logical erase blocks the image holds for it
    reserved_pebs: int  # its size on the flash, in LEBs (one LEB per PEB)
    autoresize: bool
    leb_size: int = 0
    ubifs: UbifsGeometry | None = None  # the superblock of the UBIFS it holds, if any

    @property
    def empty(self) -> bool:
        return self.leb_count == 0


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


class _DataRef(NamedTuple):
    inum: int
    block: int  # block number inside the file (4 KiB each)
    lnum: int
    offs: int


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
    _files: Mapping[str, tuple[int, tuple[_DataRef, ...]]] = field(repr=False, compare=False)
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
        size, refs = self._files[path]
        with _mapped(self.image) as data:
            reader = _LebReader(self.image, self.volume, self._lebs, self._leb_size, data)
            yield from reader.file_chunks(path, size, refs)

    def read(self, path: str) -> bytes:
        return b"".join(self.chunks(path))


def _is_utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@contextlib.contextmanager
def _opened(image: Path) -> Iterator[BinaryIO]:
    try:
        f = open(image, "rb")  # noqa: SIM115 (closed below; errors are translated)
    except FileNotFoundError:
        raise DfotaError("file not found", image) from None
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", image) from exc
    with f:
        yield f


@contextlib.contextmanager
def _mapped(image: Path) -> Iterator[mmap.mmap]:
    """The image mapped read-only (a UBIFS is read node by node all over it)."""
    with _opened(image) as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise DfotaError(f"cannot read file ({exc})", image) from exc
    with data:
        yield data


@contextlib.contextmanager
def _library(image: Path, doing: str) -> Iterator[None]:
    """Run ubi_reader silenced; whatever it raises or exits with becomes one DfotaError."""
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            yield
    except DfotaError:
        raise
    except SystemExit:
        said = [line.strip() for line in chatter.getvalue().splitlines() if line.strip()]
        detail = said[-1] if said else "ubi_reader gave up"
        raise DfotaError(f"cannot {doing}: {detail}", image) from None
    except Exception as exc:
        raise DfotaError(f"cannot {doing}: {type(exc).__name__}: {exc}", image) from exc


# ---------------------------------------------------------------------------------------------
# UBI: erase blocks, volume table, volumes


@dataclass(frozen=True, slots=True)
class _Volume:
    info: UbiVolume
    lebs: Mapping[int, int]  # LEB number -> file offset of its data
    leb_size: int


def _choose_peb_size(image: Path, file_size: int, f: BinaryIO, wanted: int | None) -> int:
    def fits(size: int) -> bool:
        if size <= 0 or size % MIN_IO or file_size % size:
            return False
        f.seek(size if file_size > size else 0)
        return f.read(4) == ubi_defs.UBI_EC_HDR_MAGIC

    if wanted is not None:
        candidates = [wanted]
    else:
        with _library(image, "guess the erase-block size"):
            guessed = guess_peb_size(str(image))
        candidates = [PEB_SIZE] if guessed is None else [guessed, PEB_SIZE]
    for size in candidates:
        if fits(size):
            return size
    size = candidates[-1]
    if file_size % size:
        raise DfotaError(f"is truncated: {file_size} bytes is not a whole number of "
                         f"{size}-byte erase blocks", image)
    raise DfotaError(f"has no UBI header at offset {size}: not a UBI image of "
                     f"{size}-byte erase blocks", image)


def _check_headers(image: Path, f: BinaryIO, peb: int, count: int) -> None:  # noqa: C901
    """Every erase block starts with an intact EC header, and its VID header (if any) is
    intact; both volume-table copies are intact and equal."""
    tables: list[tuple[int, bytes]] = []
    for n in range(count):
        f.seek(n * peb)
        raw = f.read(_HDR_SZ)
        where = f"erase block {n} (offset {n * peb})"
        if raw[:4] != ubi_defs.UBI_EC_HDR_MAGIC:
            raise DfotaError(f"{where} has no UBI erase-counter header", image)
        ec = ec_hdr(raw)
        if ec.errors:
            raise DfotaError(f"erase-counter header of {where} is corrupt (CRC mismatch)",
                             image)
        if not (_HDR_SZ <= ec.vid_hdr_offset <= peb - _HDR_SZ
                and ec.vid_hdr_offset + _HDR_SZ <= ec.data_offset < peb):
            raise DfotaError(f"erase-counter header of {where} has impossible offsets", image)
        f.seek(n * peb + ec.vid_hdr_offset)
        raw_vid = f.read(_HDR_SZ)
        if raw_vid == b"\xff" * _HDR_SZ:
            continue  # a free erase block
        vid = vid_hdr(raw_vid)
        if raw_vid[:4] != ubi_defs.UBI_VID_HDR_MAGIC or vid.errors:
            raise DfotaError(f"volume-id header of {where} is corrupt", image)
        if vid.vol_id == _LAYOUT_VOLUME_ID:
            f.seek(n * peb + ec.data_offset)
            tables.append((n, f.read(_VTBL_BYTES)))
    if len(tables) < 2:
        raise DfotaError(f"has {len(tables)} of the 2 volume-table copies: the volume table "
                         "is missing", image)
    for n, table in tables:
        damaged = [i for i in range(ubi_defs.UBI_MAX_VOLUMES)
                   if _vtbl_record_damaged(table[i * _VTBL_REC_SZ:(i + 1) * _VTBL_REC_SZ])]
        if damaged:
            what = "destroyed" if len(damaged) == ubi_defs.UBI_MAX_VOLUMES else "damaged"
            raise DfotaError(f"volume table in erase block {n} is {what} ({len(damaged)} "
                             "record(s) fail their CRC)", image)
    if any(table != tables[0][1] for _n, table in tables):
        raise DfotaError("the two copies of the volume table differ", image)


def _vtbl_record_damaged(record: bytes) -> bool:
    if len(record) != _VTBL_REC_SZ:
        return True
    return _crc(record[:-4]) != int.from_bytes(record[-4:], "big")


@contextlib.contextmanager
def _ubi(image: Path, peb_size: int | None) -> Iterator[tuple[ubi_mod.ubi, list[_Volume]]]:
    """The image checked, then opened by ubi_reader: its blocks, and the volumes by id."""
    with _opened(image) as f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size == 0:
            raise DfotaError("is empty, not a UBI image", image)
        if f.read(4) != ubi_defs.UBI_EC_HDR_MAGIC:
            raise DfotaError("is not a UBI image (no UBI header at its start)", image)
        peb = _choose_peb_size(image, file_size, f, peb_size)
        _check_headers(image, f, peb, file_size // peb)

    with _library(image, "open the UBI image"):
        ubi_file = ubi_io.ubi_file(str(image), peb)
    try:
        with _library(image, "read the UBI image"):
            try:
                found = ubi_mod.ubi(ubi_file)
            except UnicodeDecodeError:
                raise DfotaError("the volume table holds a volume name that is not UTF-8",
                                 image) from None
            if len(found.images) != 1:
                raise DfotaError(f"holds {len(found.images)} UBI images; expected one", image)
            volumes = _volumes(image, found, peb)
        yield found, volumes
    finally:
        ubi_file.close()


def _volumes(image: Path, found: ubi_mod.ubi, peb: int) -> list[_Volume]:
    volumes = []
    for name, vol in found.images[0].volumes.items():
        rec = vol.vol_rec
        lebs: dict[int, int] = {}
        data_offset = next(iter(found.blocks.values())).ec_hdr.data_offset
        for block in vol.get_blocks(found.blocks).values():
            if block.leb_num in lebs:
                raise DfotaError(f"volume {name}: logical erase block {block.leb_num} is "
                                 "stored twice", image)
            lebs[block.leb_num] = block.file_offset + block.ec_hdr.data_offset
            data_offset = block.ec_hdr.data_offset
        leb_size = peb - data_offset - rec.data_pad
        info = UbiVolume(
            name=name, vol_id=vol.vol_id,
            vol_type="static" if rec.vol_type == ubi_defs.UBI_VID_STATIC else "dynamic",
            leb_count=len(lebs), reserved_pebs=rec.reserved_pebs,
            autoresize=bool(rec.flags & ubi_defs.UBI_VTBL_AUTORESIZE_FLG), leb_size=leb_size,
            ubifs=_superblock(image, name, lebs.get(0), leb_size))
        volumes.append(_Volume(info, lebs, leb_size))
    return sorted(volumes, key=lambda v: v.info.vol_id)


def _superblock(image: Path, volume: str, offset: int | None,
                leb_size: int) -> UbifsGeometry | None:
    """The geometry in the UBIFS superblock at the start of a volume's LEB 0 (its CRC
    checked); None when the volume holds no UBIFS there."""
    if offset is None:
        return None
    with _opened(image) as f:
        f.seek(offset)
        raw = f.read(min(leb_size, fs_defs.UBIFS_COMMON_HDR_SZ + fs_defs.UBIFS_SB_NODE_SZ))
    if len(raw) < _CH.size or _CH.unpack_from(raw)[0] != fs_defs.UBIFS_NODE_MAGIC \
            or _CH.unpack_from(raw)[4] != fs_defs.UBIFS_SB_NODE:
        return None
    _magic, crc, _sqnum, length, _type, _group = _CH.unpack_from(raw)
    if length > len(raw) or length < _CH.size or _crc(raw[8:length]) != crc:
        raise DfotaError(f"volume {volume}: the UBIFS superblock fails its CRC (damaged)",
                         image)
    body = raw[_CH.size:_CH.size + fs_defs.UBIFS_SB_NODE_SZ]
    sb = fs_nodes.sb_node(body.ljust(fs_defs.UBIFS_SB_NODE_SZ, b"\0"))
    geometry = UbifsGeometry(sb.leb_size, sb.leb_cnt, sb.max_leb_cnt, sb.log_lebs,
                             sb.lpt_lebs, sb.orph_lebs, sb.jhead_cnt, sb.fanout)
    if sb.leb_size != leb_size:
        raise DfotaError(f"volume {volume}: the UBIFS was made for {sb.leb_size}-byte erase "
                         f"blocks, the volume has {leb_size}", image)
    if not 0 < sb.leb_cnt <= sb.max_leb_cnt or sb.fanout < 3 or sb.jhead_cnt < 1:
        raise DfotaError(f"volume {volume}: the UBIFS superblock holds impossible sizes "
                         f"({sb.leb_cnt} LEBs of at most {sb.max_leb_cnt}, fanout "
                         f"{sb.fanout}, {sb.jhead_cnt} journal heads)", image)
    return geometry


def list_volumes(image: Path, *, peb_size: int | None = None) -> list[UbiVolume]:
    """The volumes of a UBI image, by volume id."""
    with _ubi(image, peb_size) as (_found, volumes):
        return [v.info for v in volumes]


# ---------------------------------------------------------------------------------------------
# The room a UBIFS volume gives its files
#
# Linux's UBIFS facts (fs/ubifs: ubifs-media.h, ubifs.h, sb.c, super.c, budget.c). The kernel
# grows a file system to its volume at mount, up to the superblock's max_leb_cnt, and formats
# an empty volume itself (create_default_filesystem). Of its LEBs, the superblock (1), the
# master node (2), the log, the LEB-properties tree and the orphan area lie outside the main
# area; statfs's size (`df`, init_constants_master) also keeps from the main area a LEB for
# garbage collection, one for deletions, MIN_INDEX_LEBS for the index and all journal heads
# but one; it counts each LEB less the tail no whole data node fills, and reports the rest as
# file bytes: each 4 KiB block costs a 48-byte node header and its share of an index thrice
# the size of a full one (ubifs_reported_space).

_SB_MST_LEBS = 1 + 2
_MIN_INDEX_LEBS = 2
_NONDATA_JHEADS = 2  # the garbage collector's and the base journal heads
_BLOCK_BYTES = 4096
_MAX_DATA_NODE = 48 + _BLOCK_BYTES
_IDX_NODE, _BRANCH_AND_KEY = 28, 12 + 8
_MIN_MAIN_LEBS = 3 + 6
# create_default_filesystem's choices for an empty volume
_MIN_LEB_CNT = _SB_MST_LEBS + 2 + 2 + 1 + _MIN_MAIN_LEBS
_JOURNAL_PERCENT, _MAX_JOURNAL = 5, 32 * 1024 * 1024
_MIN_JOURNAL_LEBS, _MIN_BUDS = 2 + 3, 3
_REF_NODE = 64
# the LEB-properties tree takes more than its minimum of 2 LEBs only past one LEB of ~5
# bytes per LEB of the volume: tens of thousands of LEBs (gigabytes) at 248 KiB
_LPT_LEBS = 2
_DEFAULT_FANOUT, _DEFAULT_JHEADS = 8, 1


def default_geometry(leb_cnt: int, leb_size: int) -> UbifsGeometry:
    """The UBIFS the kernel makes on an empty volume of `leb_cnt` LEBs at its first mount."""
    journal = leb_cnt * _JOURNAL_PERCENT // 100
    journal = max(journal, _MIN_JOURNAL_LEBS)
    if journal * leb_size > _MAX_JOURNAL:
        journal = _MAX_JOURNAL // leb_size
    log = (2 * _REF_NODE * journal + leb_size - 1) // leb_size + 1
    min_leb_cnt = _MIN_LEB_CNT
    if leb_cnt - min_leb_cnt > 8:
        log += 1
        min_leb_cnt += 1
    orphans = 1 + (leb_cnt - min_leb_cnt > 1)
    return UbifsGeometry(leb_size, leb_cnt, leb_cnt, log, _LPT_LEBS, orphans,
                         _DEFAULT_JHEADS, _DEFAULT_FANOUT)


def ubifs_room(image: Path, volume: UbiVolume) -> int:
    """The bytes of files the UBIFS of `volume` holds on the module: the size `df` reports for
    it once mounted (the volume's LEBs, less what UBIFS keeps, as file bytes), from its
    superblock, or from the file system the kernel makes on it when it is empty.

    The kernel counts flash, not file bytes: compressed files take less, and each file's
    last block and its inode some more; the module's updater asks statfs, as `df` does."""
    if volume.ubifs is not None:
        fs = volume.ubifs
        if volume.reserved_pebs < fs.leb_cnt:
            raise DfotaError(f"volume {volume.name}: its UBIFS spans {fs.leb_cnt} LEBs, the "
                             f"volume reserves only {volume.reserved_pebs}", image)
        leb_cnt = min(volume.reserved_pebs, fs.max_leb_cnt)
    elif volume.empty:
        fs = default_geometry(volume.reserved_pebs, volume.leb_size)
        leb_cnt = volume.reserved_pebs
    else:
        raise DfotaError(f"volume {volume.name} holds no UBIFS (no superblock at its start): "
                         "its size on the module is not known", image)
    main = leb_cnt - _SB_MST_LEBS - fs.log_lebs - fs.lpt_lebs - fs.orph_lebs
    if main < _MIN_MAIN_LEBS:
        raise DfotaError(f"volume {volume.name} has {leb_cnt} LEBs of {fs.leb_size} bytes: too "
                         f"few for a UBIFS ({main} in its main area, {_MIN_MAIN_LEBS} at "
                         "least)", image)
    usable = main - 1 - 1 - _MIN_INDEX_LEBS - (fs.jhead_cnt + _NONDATA_JHEADS) + 1
    flash = usable * (fs.leb_size - fs.leb_size % _MAX_DATA_NODE)
    index_node = _IDX_NODE + _BRANCH_AND_KEY * fs.fanout
    index_node += -index_node % 8
    half_fanout = fs.fanout >> 1 if fs.fanout > 3 else 2
    per_block = _MAX_DATA_NODE + index_node * 3 // (half_fanout - 1)
    return flash * _BLOCK_BYTES // per_block // _BLOCK_BYTES * _BLOCK_BYTES


# ---------------------------------------------------------------------------------------------
# UBIFS inside a volume


class _LebReader:
    """Nodes of one volume, read from the image mapped in memory, CRC checked. A node is
    addressed by its position in the image: the callers unpack what they need in place
    (tens of thousands of nodes: copying each and parsing it into objects cost seconds)."""

    def __init__(self, image: Path, volume: str, lebs: Mapping[int, int], leb_size: int,
                 data: mmap.mmap) -> None:
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

    def file_chunks(self, path: str, size: int, refs: tuple[_DataRef, ...]) -> Iterator[bytes]:
        done = 0
        for ref in refs:
            start = ref.block * _BLOCK
            if start < done:
                raise self.fail(f"{shown_path(path)}: data block {ref.block} appears twice")
            if start > done:  # a hole reads as zeros
                yield bytes(start - done)
                done = start
            data = self.data_block(path, ref)
            if done + len(data) > size:
                raise self.fail(f"{shown_path(path)}: data beyond the file's size {size}")
            done += len(data)
            yield data
        if done < size:
            yield bytes(size - done)

    def data_block(self, path: str, ref: _DataRef) -> bytes:
        node_type, pos, length = self.node(
            ref.lnum, ref.offs, lambda: f"{shown_path(path)}, data block {ref.block}")
        if node_type != fs_defs.UBIFS_DATA_NODE or length < _CH.size + _DATA.size:
            raise self.fail(f"{shown_path(path)}: the index points at a node that is not its "
                            f"data (LEB {ref.lnum} offset {ref.offs})")
        high, low, size, compr_type, _plain = _DATA.unpack_from(self.data, pos + _CH.size)
        if (high & _KEY_INO_MASK, low & _KEY_BLOCK_MASK) != (ref.inum, ref.block):
            raise self.fail(f"{shown_path(path)}: the index points at another file's data "
                            f"(LEB {ref.lnum} offset {ref.offs})")
        if size > _BLOCK:
            raise self.fail(f"{shown_path(path)}: data block {ref.block} claims {size} bytes")
        payload = self.data[pos + _CH.size + _DATA.size:pos + length]
        data = fs_misc.decompress(compr_type, size, payload)
        if data is None or len(data) != size:
            raise self.fail(f"{shown_path(path)}: data block {ref.block} does not decompress "
                            f"to its {size} bytes (compression type {compr_type})")
        return data


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
    data: dict[int, list[_DataRef]] = field(default_factory=dict)


def _walk_index(reader: _LebReader, root: tuple[int, int]) -> _Index:  # noqa: C901
    """Every leaf node the committed index points at: inodes, directory entries, data."""
    index = _Index()
    data = reader.data
    stack = [root]
    seen: set[tuple[int, int]] = set()
    while stack:
        lnum, offs = stack.pop()
        if (lnum, offs) in seen:
            raise reader.fail(f"the UBIFS index points twice at LEB {lnum} offset {offs}")
        seen.add((lnum, offs))
        node_type, pos, length = reader.node(lnum, offs)
        body = pos + _CH.size
        try:
            if node_type == fs_defs.UBIFS_IDX_NODE:
                child_cnt, level = _IDX.unpack_from(data, body)
                if child_cnt == 0:
                    raise reader.fail(f"empty UBIFS index node at LEB {lnum} offset {offs}")
                # a branch may carry a hash after its key (authenticated UBIFS)
                branch_size = (length - _CH.size - _IDX.size) // child_cnt
                if branch_size < _BRANCH.size:
                    raise reader.fail(f"UBIFS index node at LEB {lnum} offset {offs} is too "
                                      f"short for its {child_cnt} branches")
                first = body + _IDX.size
                for i in reversed(range(child_cnt)):
                    b_lnum, b_offs, _len, high, low = _BRANCH.unpack_from(
                        data, first + i * branch_size)
                    if level == 0 and low >> _KEY_TYPE_SHIFT == fs_defs.UBIFS_DATA_KEY:
                        # read (and CRC checked) with the file's content, not here
                        inum = high & _KEY_INO_MASK
                        index.data.setdefault(inum, []).append(
                            _DataRef(inum, low & _KEY_BLOCK_MASK, b_lnum, b_offs))
                    else:
                        stack.append((b_lnum, b_offs))
            elif node_type == fs_defs.UBIFS_INO_NODE:
                ino = fs_nodes.ino_node(data[body:pos + length])
                if len(ino.data) != ino.data_len:
                    raise reader.fail(f"inode {ino.key['ino_num']} has a bad data length")
                index.inodes[ino.key["ino_num"]] = _Inode(ino.mode, ino.uid, ino.gid,
                                                          ino.size, ino.flags, ino.data)
            elif node_type == fs_defs.UBIFS_DENT_NODE:
                key, inum, _pad, itype, nlen, _cookie = _DENT.unpack_from(data, body)
                name = data[body + _DENT.size:min(body + _DENT.size + nlen, pos + length)]
                if len(name) != nlen:
                    raise reader.fail(f"directory entry at LEB {lnum} offset {offs} is cut")
                parent = fs_misc.parse_key(key)["ino_num"]
                index.dents.setdefault(parent, []).append((name, inum, itype))
            elif node_type != fs_defs.UBIFS_XENT_NODE:
                raise reader.fail(f"unexpected UBIFS node type {node_type} in the index at "
                                  f"LEB {lnum} offset {offs}")
        except (struct.error, ZeroDivisionError, IndexError, KeyError) as exc:
            raise reader.fail(f"malformed UBIFS node at LEB {lnum} offset {offs} "
                              f"({exc})") from exc
    return index


def _device_numbers(data: bytes) -> tuple[int, int]:
    if len(data) not in (4, 8):
        return 0, 0
    dev = int.from_bytes(data, "little")
    return (dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00)


def _build_tree(reader: _LebReader, index: _Index, image: Path, volume: str,  # noqa: C901, PLR0913
                lebs: Mapping[int, int], volumes: tuple[UbiVolume, ...] = ()) -> UbifsTree:
    root = index.inodes.get(_ROOT_INO)
    if root is None or not stat.S_ISDIR(root.mode):
        raise reader.fail("the UBIFS has no root directory")
    entries: Tree = {}
    special: list[SpecialNode] = []
    files: dict[str, tuple[int, tuple[_DataRef, ...]]] = {}
    hashes: dict[int, str] = {}
    refs_of = {inum: tuple(sorted(refs, key=lambda r: r.block))
               for inum, refs in index.data.items()}
    visited_dirs = {_ROOT_INO}
    seen_paths: set[str] = set()
    stack: list[tuple[int, str]] = [(_ROOT_INO, "")]
    while stack:
        dir_inum, dir_path = stack.pop()
        for raw, inum, itype in sorted(index.dents.get(dir_inum, []), reverse=True):
            if not raw or raw in (b".", b"..") or b"/" in raw or b"\0" in raw:
                raise reader.fail(f"directory entry {raw!r} in {shown_path(dir_path or '/')} "
                                  "is not a valid name")
            name = raw.decode("utf-8", "surrogateescape")
            path = f"{dir_path}/{name}" if dir_path else name
            if path in seen_paths:
                raise reader.fail(f"{shown_path(path)}: two directory entries of that name")
            seen_paths.add(path)
            ino = index.inodes.get(inum)
            if ino is None:
                raise reader.fail(f"{shown_path(path)} points at inode {inum}, which the "
                                  "index does not hold")
            fmt = stat.S_IFMT(ino.mode)
            if _ITYPES.get(itype) != fmt:
                raise reader.fail(f"{shown_path(path)}: directory entry and inode disagree "
                                  "on the file type")
            perm = stat.S_IMODE(ino.mode)
            if fmt == stat.S_IFDIR:
                if inum in visited_dirs:
                    raise reader.fail(f"{shown_path(path)}: directory reached twice")
                visited_dirs.add(inum)
                entries[path] = Entry(path, DIR, perm, ino.uid, ino.gid)
                stack.append((inum, path))
            elif fmt == stat.S_IFLNK:
                target = ino.data.decode("utf-8", "surrogateescape")
                entries[path] = Entry(path, SYMLINK, 0o777, ino.uid, ino.gid, len(ino.data),
                                      "", target)
            elif fmt == stat.S_IFREG:
                refs = refs_of.get(inum, ())
                files[path] = (ino.size, refs)
                if inum not in hashes:
                    digest = hashlib.sha1()
                    for chunk in reader.file_chunks(path, ino.size, refs):
                        digest.update(chunk)
                    hashes[inum] = digest.hexdigest()
                entries[path] = Entry(path, FILE, perm, ino.uid, ino.gid, ino.size,
                                      hashes[inum])
            elif fmt in _SPECIAL_KINDS:
                major, minor = _device_numbers(ino.data)
                special.append(SpecialNode(path, _SPECIAL_KINDS[fmt], perm, ino.uid, ino.gid,
                                           major, minor))
            else:
                raise reader.fail(f"{shown_path(path)} has an unknown file type")
    return UbifsTree(image, volume, dict(sorted(entries.items())),
                     tuple(sorted(special, key=lambda n: n.path)), lebs, reader.leb_size,
                     files, volumes)


def read_ubifs(image: Path, volume: str | None = None, *,
               peb_size: int | None = None) -> UbifsTree:
    """The file tree of the UBIFS in `volume` (by name; None: the volume with the lowest id).

    Every node read is CRC checked, file contents included (their sha1 is in the entries).
    """
    with _ubi(image, peb_size) as (found, all_volumes):
        chosen = _choose_volume(image, all_volumes, volume)
        name = chosen.info.name
        with _library(image, f"read the UBIFS of volume {name}"):
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

    with _mapped(image) as data:
        reader = _LebReader(image, name, chosen.lebs, chosen.leb_size, data)
        reader.node(0, 0, lambda: "superblock")  # ubi_reader does not check its CRC
        index = _walk_index(reader, (master.root_lnum, master.root_offs))
        return _build_tree(reader, index, image, name, chosen.lebs,
                           tuple(v.info for v in all_volumes))


def _choose_volume(image: Path, volumes: list[_Volume], wanted: str | None) -> _Volume:
    if not volumes:
        raise DfotaError("holds no volume", image)
    if wanted is None:
        chosen = volumes[0]
    else:
        named = [v for v in volumes if v.info.name == wanted]
        if not named:
            raise DfotaError(f"has no volume {wanted!r} (volumes: "
                             + ", ".join(v.info.name for v in volumes) + ")", image)
        chosen = named[0]
    if chosen.info.empty:
        raise DfotaError(f"volume {chosen.info.name} is empty: it holds no file system",
                         image)
    return chosen
