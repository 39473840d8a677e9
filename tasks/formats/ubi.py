"""UBI images (`sdxlemur-sysfs.ubi`, `NON-HLOS.ubi`): erase blocks, volume table, volumes.

This module and dfota.formats.ubifs (the file system inside a volume) are the only ones that
import ubi_reader. ubi_reader finds the erase blocks, the volume table and the volumes, and
parses the superblock, the master node, inodes and directory-entry keys. Around it:

- it prints to stdout and calls `sys.exit` on fatal errors: it runs with stdout and stderr
  captured, `SystemExit` and its other exceptions become one `DfotaError` naming the image;
- a bad header CRC gives an `AttributeError` inside it, a damaged volume-table record is
  dropped silently: every erase-counter and volume-id header and both volume-table copies are
  checked here first, and a damaged one is named;
- `guess_peb_size` can return a wrong or negative size: a guess that does not fit the file
  falls back to the sdxlemur geometry (256 KiB erase blocks).

The UBIFS superblock at the start of each volume is read here too, its CRC checked: its
geometry is what sizes the volume's file system (dfota.formats.ubifs_room).
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import re
import struct
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ubireader import ubi as ubi_mod
from ubireader import ubi_io
from ubireader.ubi import defines as ubi_defs
from ubireader.ubi.headers import ec_hdr, vid_hdr
from ubireader.ubifs import defines as fs_defs
from ubireader.ubifs import nodes as fs_nodes

from dfota.core.errors import DfotaError

# sdxlemur NAND geometry: the fallback when the erase-block size cannot be guessed
PEB_SIZE = 256 * 1024
MIN_IO = 4096

_LAYOUT_VOLUME_ID = 0x7FFFEFFF
_VTBL_REC_SZ = ubi_defs.UBI_VTBL_REC_SZ
_VTBL_BYTES = ubi_defs.UBI_MAX_VOLUMES * _VTBL_REC_SZ
_HDR_SZ = ubi_defs.UBI_EC_HDR_SZ  # EC and VID headers are both 64 bytes
_EC_MAGIC_SEARCH = re.compile(ubi_defs.UBI_EC_HDR_MAGIC)  # as ubi_reader searches it

# UBIFS common header: magic, crc, sqnum, len, type, group
NODE_HEADER = struct.Struct("<4sIQIBB2x")


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



@contextlib.contextmanager
def opened_image(image: Path) -> Iterator[BinaryIO]:
    try:
        f = open(image, "rb")  # noqa: SIM115 (closed below; errors are translated)
    except FileNotFoundError:
        raise DfotaError("file not found", image) from None
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", image) from exc
    with f:
        yield f


def _mapped(image: Path) -> mmap.mmap:
    with opened_image(image) as f:
        try:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise DfotaError(f"cannot read file ({exc})", image) from exc


@contextlib.contextmanager
def mapped_image(image: Path) -> Iterator[mmap.mmap]:
    """The image mapped read-only (a UBIFS is read node by node all over it)."""
    with _mapped(image) as data:
        yield data


@contextlib.contextmanager
def mapped_view(image: Path) -> Iterator[memoryview]:
    """The image mapped read-only, as a memoryview: its slices copy nothing. No slice may
    outlive the block: one alive stops the unmapping. An error in flight may hold one in its
    traceback (Ctrl-C inside a decompressor): the mapping then goes with the traceback, and
    the error goes on (not "cannot close exported pointers")."""
    data = _mapped(image)
    view = memoryview(data)
    try:
        yield view
    except BaseException:
        with contextlib.suppress(BufferError):
            view.release()
            data.close()
        raise
    view.release()
    data.close()


@contextlib.contextmanager
def quiet_ubi_reader(image: Path, doing: str) -> Iterator[None]:
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


@dataclass(frozen=True, slots=True)
class VolumeBlocks:
    """A volume and where its logical erase blocks lie in the image."""

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
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            guessed = guessed_peb_size(data)
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


def guessed_peb_size(data: mmap.mmap) -> int | None:
    """ubi_reader's `guess_peb_size` (the gap between UBI headers seen most often), the same
    result searched in place: by chunks (a header across two is missed), each header's
    position counted as ubi_reader counts it, the first gap of the highest count."""
    positions: list[int] = []
    shift = 0
    for chunk in range(0, len(data) + 1, ubi_defs.FILE_CHUNK_SZ):
        for found in _EC_MAGIC_SEARCH.finditer(data, chunk, chunk + ubi_defs.FILE_CHUNK_SZ):
            start = found.start() - chunk
            positions.append(start + shift if shift else start)
            shift = shift or start
        shift += ubi_defs.FILE_CHUNK_SZ
    gaps = Counter(positions[i] - positions[i - 1] for i in range(len(positions)))
    return max(gaps, key=gaps.__getitem__) if gaps else None


def _check_headers(image: Path, f: BinaryIO, peb: int, count: int) -> None:
    """Every erase block starts with an intact EC header, and its VID header (if any) is
    intact; both volume-table copies are intact and equal."""
    tables: list[tuple[int, bytes]] = []
    for n in range(count):
        table = _check_block(image, f, peb, n)
        if table is not None:
            tables.append((n, table))
    _check_volume_tables(image, tables)


def _check_block(image: Path, f: BinaryIO, peb: int, n: int) -> bytes | None:
    """The headers of erase block `n` checked; the volume table it holds, if it holds one."""
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
        return None  # a free erase block
    vid = vid_hdr(raw_vid)
    if raw_vid[:4] != ubi_defs.UBI_VID_HDR_MAGIC or vid.errors:
        raise DfotaError(f"volume-id header of {where} is corrupt", image)
    if vid.vol_id != _LAYOUT_VOLUME_ID:
        return None
    f.seek(n * peb + ec.data_offset)
    return f.read(_VTBL_BYTES)


def _check_volume_tables(image: Path, tables: list[tuple[int, bytes]]) -> None:
    """Both copies of the volume table (by erase block) are there, intact and equal."""
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
def open_ubi(image: Path, peb_size: int | None
             ) -> Iterator[tuple[ubi_mod.ubi, list[VolumeBlocks]]]:
    """The image checked, then opened by ubi_reader: its blocks, and the volumes by id."""
    with opened_image(image) as f:
        file_size = os.fstat(f.fileno()).st_size
        if file_size == 0:
            raise DfotaError("is empty, not a UBI image", image)
        if f.read(4) != ubi_defs.UBI_EC_HDR_MAGIC:
            raise DfotaError("is not a UBI image (no UBI header at its start)", image)
        peb = _choose_peb_size(image, file_size, f, peb_size)
        _check_headers(image, f, peb, file_size // peb)

    with quiet_ubi_reader(image, "open the UBI image"):
        ubi_file = ubi_io.ubi_file(str(image), peb)
    try:
        with quiet_ubi_reader(image, "read the UBI image"):
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


def _volumes(image: Path, found: ubi_mod.ubi, peb: int) -> list[VolumeBlocks]:
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
        volumes.append(VolumeBlocks(info, lebs, leb_size))
    return sorted(volumes, key=lambda v: v.info.vol_id)


def _superblock(image: Path, volume: str, offset: int | None,
                leb_size: int) -> UbifsGeometry | None:
    """The geometry in the UBIFS superblock at the start of a volume's LEB 0 (its CRC
    checked); None when the volume holds no UBIFS there."""
    if offset is None:
        return None
    with opened_image(image) as f:
        f.seek(offset)
        raw = f.read(min(leb_size, fs_defs.UBIFS_COMMON_HDR_SZ + fs_defs.UBIFS_SB_NODE_SZ))
    if len(raw) < NODE_HEADER.size or NODE_HEADER.unpack_from(raw)[0] != fs_defs.UBIFS_NODE_MAGIC \
            or NODE_HEADER.unpack_from(raw)[4] != fs_defs.UBIFS_SB_NODE:
        return None
    _magic, crc, _sqnum, length, _type, _group = NODE_HEADER.unpack_from(raw)
    if length > len(raw) or length < NODE_HEADER.size or _crc(raw[8:length]) != crc:
        raise DfotaError(f"volume {volume}: the UBIFS superblock fails its CRC (damaged)",
                         image)
    body = raw[NODE_HEADER.size:NODE_HEADER.size + fs_defs.UBIFS_SB_NODE_SZ]
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


def choose_volume(image: Path, volumes: list[VolumeBlocks], wanted: str | None
                  ) -> VolumeBlocks:
    """The volume named `wanted` (None: the one with the lowest id), holding data."""
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


def list_volumes(image: Path, *, peb_size: int | None = None) -> list[UbiVolume]:
    """The volumes of a UBI image, by volume id."""
    with open_ubi(image, peb_size) as (_found, volumes):
        return [v.info for v in volumes]
