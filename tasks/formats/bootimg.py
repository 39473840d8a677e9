"""Android boot images (header v0-v2), ARM zImages with appended DTBs, flattened device trees."""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeAlias, TypedDict

from dfota.core.errors import DfotaError

if TYPE_CHECKING:
    from typing_extensions import Unpack

BOOT_MAGIC = b"ANDROID!"
HEADER_V0 = struct.Struct("<8s10I16s512s32s1024s")
HEADER_V1_EXTRA = struct.Struct("<IQI")
HEADER_V2_EXTRA = struct.Struct("<IQ")
HEADER_SIZES = {
    0: HEADER_V0.size,
    1: HEADER_V0.size + HEADER_V1_EXTRA.size,
    2: HEADER_V0.size + HEADER_V1_EXTRA.size + HEADER_V2_EXTRA.size,
}
SUPPORTED_VERSIONS = tuple(HEADER_SIZES)
PAGE_SIZES = (2048, 4096, 8192, 16384)
# The header_version field sits at the same offset in every header version (v0..v4).
_VERSION_OFFSET = 40
NAME_LEN = 16
CMDLINE_LEN = 512
EXTRA_CMDLINE_LEN = 1024

ZIMAGE_MAGIC = 0x016F2818
FDT_MAGIC = 0xD00DFEED
_FDT_BEGIN_NODE = 1
_FDT_END_NODE = 2
_FDT_PROP = 3
_FDT_END = 9


@dataclass(frozen=True)
class Section:
    """One payload of a boot image: where it lies in the file and how long it is."""

    name: str
    offset: int
    size: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class BootImage:
    """The parsed header of an Android boot image (v0, v1 or v2)."""

    header_version: int
    page_size: int
    kernel_size: int
    kernel_addr: int
    ramdisk_size: int
    ramdisk_addr: int
    second_size: int
    second_addr: int
    tags_addr: int
    os_version: int
    name: str
    cmdline: str  # cmdline and extra_cmdline joined
    image_id: bytes  # 32 bytes as stored; all zero means "unset"
    recovery_dtbo_size: int = 0
    recovery_dtbo_offset: int = 0
    header_size: int = 0
    dtb_size: int = 0
    dtb_addr: int = 0
    sections: tuple[Section, ...] = ()  # non-empty sections in file order
    computed_id: bytes = b""  # the id the sections actually hash to (32 bytes)
    file_size: int = 0

    @property
    def image_size(self) -> int:
        """End of the last page-aligned section: the bytes mkbootimg would write."""
        end = self.page_size
        for section in self.sections:
            end = section.offset + _align(section.size, self.page_size)
        return end

    @property
    def id_is_set(self) -> bool:
        return any(self.image_id)

    @property
    def id_matches(self) -> bool:
        return self.image_id == self.computed_id

    def section(self, name: str) -> Section | None:
        for section in self.sections:
            if section.name == name:
                return section
        return None


def _align(n: int, page: int) -> int:
    return (n + page - 1) // page * page


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", errors="replace")


def compute_image_id(sections: Sequence[bytes]) -> bytes:
    """The mkbootimg id: SHA-1 over each section's bytes then its u32 LE size, zero padded."""
    sha = hashlib.sha1()
    for blob in sections:
        sha.update(blob)
        sha.update(struct.pack("<I", len(blob)))
    return sha.digest().ljust(32, b"\0")


def _header_version(data: bytes, path: str | os.PathLike[str]) -> int:
    """The header version of a boot image, its magic and header length checked."""
    size = len(data)
    if size >= len(BOOT_MAGIC) and data[: len(BOOT_MAGIC)] != BOOT_MAGIC:
        raise DfotaError(
            f"not an Android boot image (magic {data[: len(BOOT_MAGIC)]!r}, "
            f"expected {BOOT_MAGIC!r})",
            path,
        )
    if size < _VERSION_OFFSET + 4:
        raise DfotaError(f"file too short for an Android boot image header ({size} bytes)", path)
    version = int(struct.unpack_from("<I", data, _VERSION_OFFSET)[0])
    if version not in HEADER_SIZES:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise DfotaError(
            f"unsupported boot image header version {version} (supported: {supported})", path
        )
    need = HEADER_SIZES[version]
    if size < need:
        raise DfotaError(
            f"file too short for a v{version} boot image header ({size} bytes, need {need})",
            path,
        )
    return version


def _unpack_header(data: bytes, version: int) -> BootImage:
    """The header's fields as stored (the sections not yet laid out nor checked)."""
    (
        _magic,
        kernel_size,
        kernel_addr,
        ramdisk_size,
        ramdisk_addr,
        second_size,
        second_addr,
        tags_addr,
        page_size,
        _version,
        os_version,
        name,
        cmdline,
        image_id,
        extra_cmdline,
    ) = HEADER_V0.unpack_from(data, 0)
    dtbo_size = dtbo_offset = header_size = dtb_size = dtb_addr = 0
    if version >= 1:
        dtbo_size, dtbo_offset, header_size = HEADER_V1_EXTRA.unpack_from(data, HEADER_V0.size)
    if version >= 2:
        dtb_size, dtb_addr = HEADER_V2_EXTRA.unpack_from(data, HEADER_SIZES[1])
    return BootImage(
        header_version=version,
        page_size=page_size,
        kernel_size=kernel_size,
        kernel_addr=kernel_addr,
        ramdisk_size=ramdisk_size,
        ramdisk_addr=ramdisk_addr,
        second_size=second_size,
        second_addr=second_addr,
        tags_addr=tags_addr,
        os_version=os_version,
        name=_cstr(name),
        cmdline=_cstr(cmdline) + _cstr(extra_cmdline),
        image_id=image_id,
        recovery_dtbo_size=dtbo_size,
        recovery_dtbo_offset=dtbo_offset,
        header_size=header_size,
        dtb_size=dtb_size,
        dtb_addr=dtb_addr,
        file_size=len(data),
    )


def _section_sizes(header: BootImage) -> list[tuple[str, int]]:
    """Every section the header version has, in file order, empty ones too."""
    sizes = [("kernel", header.kernel_size), ("ramdisk", header.ramdisk_size),
             ("second", header.second_size)]
    if header.header_version >= 1:
        sizes.append(("recovery_dtbo", header.recovery_dtbo_size))
    if header.header_version >= 2:
        sizes.append(("dtb", header.dtb_size))
    return sizes


def parse_boot_image(data: bytes, path: str | os.PathLike[str]) -> BootImage:
    """Parse and check the header and section layout of a boot image held in memory."""
    header = _unpack_header(data, _header_version(data, path))
    page_size, size = header.page_size, len(data)
    if page_size not in PAGE_SIZES:
        allowed = ", ".join(str(p) for p in PAGE_SIZES)
        raise DfotaError(f"unsupported boot image page size {page_size} (allowed: {allowed})", path)
    if header.kernel_size == 0:
        raise DfotaError("boot image has an empty kernel (kernel_size 0)", path)

    offset = page_size  # the header occupies the first page
    hashed: list[bytes] = []
    sections: list[Section] = []
    for sec_name, sec_size in _section_sizes(header):
        if offset + sec_size > size:
            raise DfotaError(
                f"{sec_name} section ends at {offset + sec_size}, beyond the file ({size} bytes)",
                path,
            )
        hashed.append(data[offset : offset + sec_size])
        if sec_size:
            sections.append(Section(sec_name, offset, sec_size))
        offset += _align(sec_size, page_size)
    return replace(header, sections=tuple(sections), computed_id=compute_image_id(hashed))


def read_boot_image(path: Path) -> BootImage:
    """Read a boot image file and parse its header."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DfotaError(f"cannot read boot image: {exc.strerror or exc}", path) from exc
    return parse_boot_image(data, path)


def section_bytes(data: bytes, image: BootImage, name: str) -> bytes:
    """The bytes of one section (b"" when the image has no such section)."""
    section = image.section(name)
    return b"" if section is None else data[section.offset : section.end]


class Mkbootimg(TypedDict, total=False):
    """What `mkbootimg --header_version 0` takes besides the kernel and the cmdline, by its
    option names; each has mkbootimg's default (`_Mkbootimg`)."""

    name: str  # --board
    page_size: int
    base: int
    kernel_offset: int
    ramdisk_offset: int
    second_offset: int
    tags_offset: int
    ramdisk: bytes
    second: bytes
    os_version: int  # the raw header field ((version << 11) | patch level)


@dataclass(frozen=True, slots=True)
class _Mkbootimg:
    """A header v0 boot image as mkbootimg makes it, from its options."""

    kernel: bytes
    cmdline: str
    name: str = ""
    page_size: int = 4096
    base: int = 0x80000000
    kernel_offset: int = 0x00008000
    ramdisk_offset: int = 0x01000000
    second_offset: int = 0x00F00000
    tags_offset: int = 0x00000100
    ramdisk: bytes = b""
    second: bytes = b""
    os_version: int = 0

    def checked_text(self) -> tuple[bytes, bytes]:
        """The cmdline and the board name as the header stores them, their limits checked."""
        if self.page_size not in PAGE_SIZES:
            raise DfotaError(f"unsupported boot image page size {self.page_size}")
        if not self.kernel:
            raise DfotaError("boot image kernel is empty")
        try:
            cmd = self.cmdline.encode("ascii")
            board = self.name.encode("ascii")
        except UnicodeEncodeError as exc:
            raise DfotaError(f"boot image name and cmdline must be ASCII: {exc}") from exc
        if len(cmd) > CMDLINE_LEN + EXTRA_CMDLINE_LEN:
            raise DfotaError(
                f"boot image cmdline is {len(cmd)} bytes, more than "
                f"{CMDLINE_LEN + EXTRA_CMDLINE_LEN}"
            )
        if len(board) > NAME_LEN:
            raise DfotaError(f"boot image name is {len(board)} bytes, more than {NAME_LEN}")
        return cmd, board

    def address(self, offset: int, present: bool = True) -> int:
        return (self.base + offset) & 0xFFFFFFFF if present else 0

    def image(self) -> bytes:
        cmd, board = self.checked_text()
        kernel, ramdisk, second = self.kernel, self.ramdisk, self.second
        header = HEADER_V0.pack(
            BOOT_MAGIC,
            len(kernel),
            self.address(self.kernel_offset),
            len(ramdisk),
            self.address(self.ramdisk_offset, bool(ramdisk)),
            len(second),
            self.address(self.second_offset, bool(second)),
            self.address(self.tags_offset),
            self.page_size,
            0,
            self.os_version,
            board,
            cmd[:CMDLINE_LEN],
            compute_image_id([kernel, ramdisk, second]),
            cmd[CMDLINE_LEN:],
        )
        out = bytearray()
        for blob in (header, kernel, ramdisk, second):
            out += blob
            out += bytes(_align(len(out), self.page_size) - len(out))
        return bytes(out)


def build_boot_image(kernel: bytes, *, cmdline: str, **options: Unpack[Mkbootimg]) -> bytes:
    """A header v0 boot image, byte-identical to `mkbootimg --header_version 0`.

    `os_version` is the raw header field ((version << 11) | patch level), as mkbootimg packs it.
    """
    return _Mkbootimg(kernel, cmdline, **options).image()


def make_arm_zimage(payload: bytes, dtbs: Sequence[bytes]) -> bytes:
    """An ARM zImage around `payload` with the DTBs appended (CONFIG_ARM_APPENDED_DTB style).

    Header: eight `mov r0, r0`, a branch over the header, then at 0x24 the magic 0x016F2818,
    at 0x28 the start address 0 (position independent) and at 0x2C the end = zImage length.
    """
    code_start = 0x40
    nop = struct.pack("<I", 0xE1A00000)
    branch = struct.pack("<I", 0xEA000000 | ((code_start - (0x20 + 8)) >> 2))
    body = payload + bytes(-len(payload) % 4)  # the appended DTB must be word aligned
    end = code_start + len(body)
    head = nop * 8 + branch + struct.pack("<III", ZIMAGE_MAGIC, 0, end)
    head += struct.pack("<I", 0x04030201)  # endianness marker of newer kernels
    head += bytes(code_start - len(head))
    return head + body + b"".join(dtbs)


# A property value, or a mapping for a nested child node.
PropValue: TypeAlias = (
    "str | int | bytes | bool | Sequence[str] | Sequence[int] | Mapping[str, object]"
)


def _prop_bytes(value: object) -> bytes:
    if value is True:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode() + b"\0"
    if isinstance(value, int):
        return struct.pack(">I", value & 0xFFFFFFFF)
    if isinstance(value, Sequence) and value and all(isinstance(v, str) for v in value):
        return b"".join(v.encode() + b"\0" for v in value)
    if isinstance(value, Sequence) and all(isinstance(v, int) for v in value):
        return b"".join(struct.pack(">I", v & 0xFFFFFFFF) for v in value)
    raise ValueError(f"unsupported device tree property value {value!r}")


def make_dtb(
    model: str,
    compatible: Sequence[str],
    nodes: Mapping[str, Mapping[str, PropValue]] | None = None,
    *,
    properties: Mapping[str, PropValue] | None = None,
) -> bytes:
    """A flattened device tree blob (FDT v17, big-endian), as `dtc -O dtb` lays it out.

    The root gets `model`, `compatible`, `#address-cells` = `#size-cells` = 1 and any extra
    `properties`; `nodes` maps child node names to their properties. A property value is a
    str (string), a sequence of str (string list), an int or sequence of ints (u32 cells),
    bytes (raw), True (empty property) or a mapping (a nested child node).
    """
    root: dict[str, object] = {
        "model": model,
        "compatible": list(compatible),
        "#address-cells": 1,
        "#size-cells": 1,
    }
    root.update(properties or {})
    root.update(nodes or {})

    strings = bytearray()
    offsets: dict[str, int] = {}
    struct_block = bytearray()

    def string_offset(prop: str) -> int:
        if prop not in offsets:
            offsets[prop] = len(strings)
            strings.extend(prop.encode() + b"\0")
        return offsets[prop]

    def emit_node(node_name: str, props: Mapping[str, object]) -> None:
        raw_name = node_name.encode() + b"\0"
        struct_block.extend(struct.pack(">I", _FDT_BEGIN_NODE) + raw_name)
        struct_block.extend(bytes(-len(raw_name) % 4))
        # FDT requires a node's properties before its subnodes.
        for key, value in props.items():
            if isinstance(value, Mapping):
                continue
            blob = _prop_bytes(value)
            struct_block.extend(struct.pack(">III", _FDT_PROP, len(blob), string_offset(key)))
            struct_block.extend(blob + bytes(-len(blob) % 4))
        for key, value in props.items():
            if isinstance(value, Mapping):
                emit_node(key, value)
        struct_block.extend(struct.pack(">I", _FDT_END_NODE))

    emit_node("", root)
    struct_block.extend(struct.pack(">I", _FDT_END))

    header_size = 40
    rsvmap = bytes(16)  # an empty memory reservation map: one terminating entry
    off_rsvmap = header_size
    off_struct = off_rsvmap + len(rsvmap)
    off_strings = off_struct + len(struct_block)
    strings_block = bytes(strings) + bytes(-len(strings) % 4)  # keep appended blobs aligned
    total = off_strings + len(strings_block)
    header = struct.pack(
        ">10I",
        FDT_MAGIC,
        total,
        off_struct,
        off_strings,
        off_rsvmap,
        17,
        16,
        0,
        len(strings),
        len(struct_block),
    )
    return header + rsvmap + bytes(struct_block) + strings_block
