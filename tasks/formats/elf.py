"""abl.elf: Qualcomm-layout ELF images (ELF32 ARM, or ELF64 AArch64 when reading)."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.common.exceptions import ELFError
from elftools.construct import ConstructError
from elftools.elf.elffile import ELFFile

from dfota.core.errors import DfotaError

ELF_MAGIC = b"\x7fELF"
SUPPORTED_MACHINES = ("EM_ARM", "EM_AARCH64")

PT_NULL = 0
PT_LOAD = 1
PF_X = 0x1
PF_R = 0x4
# Qualcomm segment types kept in p_flags bits 24..26 (and the hash segment's extra bit 21).
QC_PHDR_FLAGS = 0x07000000
QC_HASH_FLAGS = 0x02200000

_EM_ARM = 40
_EHDR32 = struct.Struct("<16sHHIIIIIHHHHHH")
_PHDR32 = struct.Struct("<8I")
_HASH_OFFSET = 0x1000
_CODE_OFFSET = 0x3000
_ALIGN = 0x1000
_HASH_HEADER = struct.Struct("<10I")
_EF_ARM_EABI_VER5 = 0x05000000
_EHDR_SIZES = {1: 52, 2: 64}  # by EI_CLASS


@dataclass(frozen=True)
class Segment:
    """One program header."""

    p_type: str  # "PT_LOAD", "PT_NULL", ... or hex for a type pyelftools does not name
    offset: int
    filesz: int
    memsz: int
    vaddr: int
    flags: int

    @property
    def end(self) -> int:
        return self.offset + self.filesz


@dataclass(frozen=True)
class ElfImage:
    """The identity and program headers of an ELF image."""

    elf_class: int  # 32 or 64
    machine: str  # "EM_ARM" or "EM_AARCH64"
    entry: int
    segments: tuple[Segment, ...]

    @property
    def load_segments(self) -> tuple[Segment, ...]:
        return tuple(s for s in self.segments if s.p_type == "PT_LOAD")


def _name(value: str | int) -> str:
    return value if isinstance(value, str) else f"0x{value:x}"


def parse_abl_elf(data: bytes, path: str | os.PathLike[str]) -> ElfImage:
    """Parse and check an ELF image held in memory."""
    size = len(data)
    if data[:4] != ELF_MAGIC:
        raise DfotaError(f"not an ELF file (magic {data[:4]!r}, expected {ELF_MAGIC!r})", path)
    header_size = _EHDR_SIZES.get(data[4] if size > 4 else 0)
    if header_size is not None and size < header_size:
        raise DfotaError(
            f"file ends inside the ELF header ({size} bytes, need {header_size}); "
            "the file is truncated",
            path,
        )
    try:
        image = _read_headers(ELFFile(io.BytesIO(data)), size, path)
    except (ELFError, ConstructError, struct.error, ValueError, KeyError, EOFError) as exc:
        raise DfotaError(f"not a valid ELF file ({exc})", path) from exc
    for index, segment in enumerate(image.segments):
        if segment.end > size:
            raise DfotaError(
                f"segment {index} ends at {segment.end}, beyond the file ({size} bytes); "
                "the file is truncated",
                path,
            )
    if not image.load_segments:
        raise DfotaError("no PT_LOAD segment", path)
    return image


def _read_headers(elf: ELFFile, size: int, path: str | os.PathLike[str]) -> ElfImage:
    """The machine and the program headers (pyelftools' errors are left to the caller)."""
    machine = _name(elf["e_machine"])
    if machine not in SUPPORTED_MACHINES:
        raise DfotaError(f"unsupported machine {machine} (expected ARM or AArch64)", path)
    phoff, phnum, phentsize = elf["e_phoff"], elf["e_phnum"], elf["e_phentsize"]
    expected_entsize = elf.structs.Elf_Phdr.sizeof()
    if phnum and phentsize != expected_entsize:
        raise DfotaError(
            f"program header entry size {phentsize} (expected {expected_entsize})", path
        )
    table_end = phoff + phnum * phentsize
    if table_end > size:
        raise DfotaError(
            f"program header table ends at {table_end}, beyond the file ({size} bytes); "
            "the file is truncated",
            path,
        )
    return ElfImage(elf_class=elf.elfclass, machine=machine, entry=elf["e_entry"],
                    segments=tuple(_segment(elf.get_segment(i).header) for i in range(phnum)))


def _segment(header: Mapping[str, Any]) -> Segment:
    return Segment(
        p_type=_name(header["p_type"]),
        offset=header["p_offset"],
        filesz=header["p_filesz"],
        memsz=header["p_memsz"],
        vaddr=header["p_vaddr"],
        flags=header["p_flags"],
    )


def read_abl_elf(path: Path) -> ElfImage:
    """Read an abl.elf file and check its program headers against its size."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DfotaError(f"cannot read ELF file: {exc.strerror or exc}", path) from exc
    return parse_abl_elf(data, path)


def _align(n: int, a: int = _ALIGN) -> int:
    return (n + a - 1) // a * a


def build_abl_elf(code: bytes, *, entry: int = 0x9FA00000) -> bytes:
    """An ELF32 ARM image in the Qualcomm layout: PHDR (PT_NULL), hash segment, PT_LOAD.

    The code is loaded at `entry`; the hash segment holds a 40-byte header followed by the
    SHA-256 of each segment (all zero for the hash segment itself).
    """
    if not code:
        raise DfotaError("abl code is empty")
    hash_vaddr = _align(entry + len(code))
    if entry < 0 or hash_vaddr + _ALIGN > 1 << 32:
        raise DfotaError(f"abl code at 0x{entry:x} does not fit a 32-bit address space")
    phnum = 3
    headers_size = _EHDR32.size + phnum * _PHDR32.size
    hash_size = _HASH_HEADER.size + phnum * 32

    phdrs = (
        _PHDR32.pack(PT_NULL, 0, 0, 0, headers_size, 0, QC_PHDR_FLAGS, 0)
        + _PHDR32.pack(
            PT_NULL, _HASH_OFFSET, hash_vaddr, hash_vaddr, hash_size, _ALIGN, QC_HASH_FLAGS, _ALIGN
        )
        + _PHDR32.pack(
            PT_LOAD, _CODE_OFFSET, entry, entry, len(code), len(code), PF_R | PF_X, _ALIGN
        )
    )
    ident = ELF_MAGIC + bytes([1, 1, 1, 0]) + bytes(8)  # ELFCLASS32, LSB, EV_CURRENT, SYSV
    ehdr = _EHDR32.pack(
        ident,
        2,
        _EM_ARM,
        1,
        entry,
        _EHDR32.size,
        0,
        _EF_ARM_EABI_VER5,
        _EHDR32.size,
        _PHDR32.size,
        phnum,
        40,
        0,
        0,
    )
    headers = ehdr + phdrs
    hashes = hashlib.sha256(headers).digest() + bytes(32) + hashlib.sha256(code).digest()
    hash_header = _HASH_HEADER.pack(0, 6, 0, 0, 0, len(hashes), 0, 0, 0, 0)
    hash_segment = hash_header + hashes

    out = bytearray(_CODE_OFFSET + len(code))
    out[: len(headers)] = headers
    out[_HASH_OFFSET : _HASH_OFFSET + len(hash_segment)] = hash_segment
    out[_CODE_OFFSET:] = code
    return bytes(out)
