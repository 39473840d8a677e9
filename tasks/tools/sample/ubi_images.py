"""The sample's UBI images as the vendor makes them with mtd-utils: `sdxlemur-sysfs.ubi`
(rootfs, usrfs, cachefs, systemrw) and `NON-HLOS.ubi` (modem), on the sdxlemur NAND's geometry,
with the superblock UUID and inode times mkfs.ubifs leaves to chance made fixed."""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dfota.core.errors import DfotaError
from dfota.core.tree import DIR, SYMLINK
from dfota.tools.sample.content import SEED
from dfota.tools.sample.images import modem_files
from dfota.tools.sample.nodes import Node, Tree, under_kept, write_tree
from dfota.tools.sample.vendor_tools import run, tool

# sdxlemur NAND geometry
MIN_IO = 4096
PEB_SIZE = 256 * 1024
LEB_SIZE = 253952
MAX_LEB_COUNT = 2146
SYSFS_VOLUMES = (("rootfs", 0), ("usrfs", 1), ("cachefs", 2), ("systemrw", 3))
# the volumes' sizes in LEBs, as on a module's 512 MiB NAND: the rootfs's room for updates
# (and for the bench's 210 MB of /system), a cache for the updater's copies; only the LEBs
# that hold data take room in the image
SYSFS_VOLUME_LEBS = {"rootfs": 1200, "usrfs": 16, "cachefs": 256, "systemrw": 24}
MODEM_VOLUME = "modem"
DEVICE_NODES = (  # name, type, mode, major, minor: what the UBI image has under dev/
    ("console", "c", 0o600, 5, 1),
    ("kmsg", "c", 0o644, 1, 11),
    ("null", "c", 0o666, 1, 3),
    ("ptmx", "c", 0o666, 5, 2),
    ("random", "c", 0o666, 1, 8),
    ("tty", "c", 0o666, 5, 0),
    ("urandom", "c", 0o666, 1, 9),
    ("zero", "c", 0o666, 1, 5),
)


def _ubi_rootfs(rootfs: Mapping[str, Node]) -> Tree:
    """What the rootfs volume holds: the rootfs with empty firmware/ and dev/ (mount points)."""
    return {rel: node for rel, node in rootfs.items() if not under_kept(rel)}


def devtable(tree: Mapping[str, Node], devices: bool) -> str:
    """mkfs.ubifs device table: every file and folder root:root with its mode, and dev/."""
    lines = ["/\td\t755\t0\t0\t-\t-\t-\t-\t-"]
    for rel, node in sorted(tree.items()):
        if node.kind == SYMLINK:
            continue
        if any(c.isspace() for c in rel):
            raise DfotaError(f"a device table cannot name {rel!r}")
        kind = "d" if node.kind == DIR else "f"
        lines.append(f"/{rel}\t{kind}\t{node.mode:o}\t0\t0\t-\t-\t-\t-\t-")
    if devices:
        lines.append("/dev/pts\td\t755\t0\t0\t-\t-\t-\t-\t-")
        for name, kind, mode, major, minor in DEVICE_NODES:
            lines.append(f"/dev/{name}\t{kind}\t{mode:o}\t0\t0\t{major}\t{minor}\t-\t-\t-")
    return "\n".join(lines) + "\n"


UBIFS_MAGIC = 0x06101831
_UBIFS_CH = struct.Struct("<IIQIBB2x")
_UBIFS_INO_NODE = 0
_UBIFS_PAD_NODE = 5
_UBIFS_SB_NODE = 6


def _ubifs_crc(node: bytes | bytearray) -> int:
    return zlib.crc32(node[8:]) ^ 0xFFFFFFFF


def fix_ubifs(image: bytearray, uuid: bytes, epoch: int) -> int:
    """Make a mkfs.ubifs image reproducible: a fixed superblock uuid and fixed inode times.

    Returns the number of inode nodes rewritten. Each changed node gets its CRC again.
    """
    magic, _crc, _sqnum, length, node_type, _group = _UBIFS_CH.unpack_from(image, 0)
    if magic != UBIFS_MAGIC or node_type != _UBIFS_SB_NODE:
        raise DfotaError("mkfs.ubifs output does not start with a UBIFS superblock")
    min_io, leb_size, leb_cnt = struct.unpack_from("<III", image, 32)
    log_lebs, lpt_lebs, orph_lebs = struct.unpack_from("<III", image, 56)
    image[108:124] = uuid
    struct.pack_into("<I", image, 4, _ubifs_crc(image[:length]))
    changed = 0
    for leb in range(3 + log_lebs + lpt_lebs + orph_lebs, leb_cnt):  # the main area
        start, offset = leb * leb_size, 0
        while offset + _UBIFS_CH.size <= leb_size and start + offset < len(image):
            pos = start + offset
            magic, crc, _sqnum, length, node_type, _group = _UBIFS_CH.unpack_from(image, pos)
            if magic != UBIFS_MAGIC:  # padding bytes or free space: on to the next I/O unit
                offset += -offset % min_io or min_io
                continue
            if length < _UBIFS_CH.size or offset + length > leb_size:
                raise DfotaError(f"UBIFS node with a bad length at LEB {leb} offset {offset}")
            if crc != _ubifs_crc(image[pos : pos + length]):
                raise DfotaError(f"UBIFS node with a bad CRC at LEB {leb} offset {offset}")
            if node_type == _UBIFS_INO_NODE:
                struct.pack_into("<QQQIII", image, pos + 56, epoch, epoch, epoch, 0, 0, 0)
                struct.pack_into("<I", image, pos + 4, _ubifs_crc(image[pos : pos + length]))
                changed += 1
            step = length
            if node_type == _UBIFS_PAD_NODE:
                step += struct.unpack_from("<I", image, pos + _UBIFS_CH.size)[0]
            offset += step + (-step % 8)
    return changed


def mkfs_ubifs(folder: Path, dest: Path, device_table: str, label: str, epoch: int) -> None:
    table = dest.with_suffix(".devtable")
    table.write_text(device_table)
    run([tool("mkfs.ubifs", "mtd-utils"), "-m", str(MIN_IO), "-e", str(LEB_SIZE),
         "-c", str(MAX_LEB_COUNT), "-F", "-U", "-D", str(table), "-r", str(folder),
         "-o", str(dest)])
    image = bytearray(dest.read_bytes())
    if fix_ubifs(image, hashlib.sha256(SEED + label.encode()).digest()[:16], epoch) == 0:
        raise DfotaError("no inode found in the mkfs.ubifs output", dest)
    dest.write_bytes(image)


@dataclass(frozen=True, slots=True)
class UbiVolume:
    name: str
    vol_id: int
    image: Path | None = None
    size: int = 0  # bytes (at least the image's); 0: the image's size
    autoresize: bool = False


def ubinize(dest: Path, volumes: Iterable[UbiVolume], image_seq: int, cfg: Path) -> None:
    sections = []
    for vol in volumes:
        lines = [f"[{vol.name}_volume]", "mode=ubi", f"vol_id={vol.vol_id}", "vol_type=dynamic",
                 f"vol_name={vol.name}"]
        if vol.image is not None:
            lines += [f"image={vol.image}",
                      f"vol_size={max(vol.size, vol.image.stat().st_size)}"]
        else:
            lines.append(f"vol_size={vol.size}")
        if vol.autoresize:
            lines.append("vol_flags=autoresize")
        sections.append("\n".join(lines) + "\n")
    cfg.write_text("\n".join(sections))
    run([tool("ubinize", "mtd-utils"), "-o", str(dest), "-m", str(MIN_IO), "-p",
         str(PEB_SIZE), "-s", str(MIN_IO), "-Q", str(image_seq), str(cfg)])


def sysfs_ubi(rootfs: Mapping[str, Node], work: Path, dest: Path, label: str,
              epoch: int) -> None:
    """sdxlemur-sysfs.ubi: rootfs (0), usrfs (1, autoresize), cachefs (2), systemrw (3)."""
    tree = _ubi_rootfs(rootfs)
    write_tree(tree, work / f"{label}-rootfs", epoch)
    ubifs = work / f"{label}-rootfs.ubifs"
    mkfs_ubifs(work / f"{label}-rootfs", ubifs, devtable(tree, devices=True), label, epoch)
    lebs = SYSFS_VOLUME_LEBS
    ubinize(dest, [
        UbiVolume("rootfs", 0, ubifs, size=lebs["rootfs"] * LEB_SIZE),
        UbiVolume("usrfs", 1, size=lebs["usrfs"] * LEB_SIZE, autoresize=True),
        UbiVolume("cachefs", 2, size=lebs["cachefs"] * LEB_SIZE),
        UbiVolume("systemrw", 3, size=lebs["systemrw"] * LEB_SIZE),
    ], epoch & 0x7FFFFFFF, work / f"{label}-ubinize.cfg")


def modem_ubi(work: Path, dest: Path, epoch: int) -> None:
    tree = modem_files()
    write_tree(tree, work / "modem", epoch)
    ubifs = work / "modem.ubifs"
    mkfs_ubifs(work / "modem", ubifs, devtable(tree, devices=False), "modem", epoch)
    ubinize(dest, [UbiVolume(MODEM_VOLUME, 0, ubifs)], (epoch + 1) & 0x7FFFFFFF,
            work / "modem-ubinize.cfg")
