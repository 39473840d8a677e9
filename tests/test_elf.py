"""abl.elf writer (Qualcomm layout) and reader (pyelftools)."""

from __future__ import annotations

import hashlib
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfota.core.errors import DfotaError
from dfota.formats.elf import (
    QC_HASH_FLAGS,
    QC_PHDR_FLAGS,
    ElfImage,
    Segment,
    build_abl_elf,
    parse_abl_elf,
    read_abl_elf,
)

CODE = bytes((i * 31 + 7) % 256 for i in range(70_000))


def need_tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the Debian package binutils")
    return found


def write(tmp_path: Path, data: bytes, name: str = "abl.elf") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def expect_error(tmp_path: Path, data: bytes, pattern: str) -> None:
    path = write(tmp_path, data)
    with pytest.raises(DfotaError, match=pattern) as info:
        read_abl_elf(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ")
    assert "\n" not in text


def aarch64_elf(code: bytes, entry: int = 0x9FA00000) -> bytes:
    """A minimal ELF64 AArch64 executable: header, one PT_LOAD, code at 0x1000."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 183, 1, entry, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, entry, entry, len(code), len(code), 0x1000)
    head = ehdr + phdr
    return head + bytes(0x1000 - len(head)) + code


def test_round_trip(tmp_path: Path) -> None:
    image = read_abl_elf(write(tmp_path, build_abl_elf(CODE)))
    assert isinstance(image, ElfImage)
    assert image.elf_class == 32
    assert image.machine == "EM_ARM"
    assert image.entry == 0x9FA00000
    assert image.segments == (
        Segment("PT_NULL", 0, 52 + 3 * 32, 0, 0, QC_PHDR_FLAGS),
        Segment("PT_NULL", 0x1000, 40 + 3 * 32, 0x1000, 0x9FA12000, QC_HASH_FLAGS),
        Segment("PT_LOAD", 0x3000, len(CODE), len(CODE), 0x9FA00000, 0x5),
    )
    assert image.load_segments == image.segments[2:]


def test_code_and_hash_segment_contents() -> None:
    data = build_abl_elf(CODE, entry=0x8F600000)
    assert len(data) == 0x3000 + len(CODE)
    assert data[0x3000:] == CODE
    header = struct.unpack_from("<10I", data, 0x1000)
    assert header[1] == 6  # MBN header version
    assert header[5] == 3 * 32  # hash table size
    hashes = data[0x1000 + 40 : 0x1000 + 40 + 96]
    assert hashes[:32] == hashlib.sha256(data[:148]).digest()
    assert hashes[32:64] == bytes(32)
    assert hashes[64:] == hashlib.sha256(CODE).digest()
    assert parse_abl_elf(data, "abl.elf").entry == 0x8F600000


def test_build_is_reproducible() -> None:
    assert build_abl_elf(CODE) == build_abl_elf(bytes(CODE))


def test_build_rejects_empty_code_and_bad_entry() -> None:
    with pytest.raises(DfotaError, match="empty"):
        build_abl_elf(b"")
    with pytest.raises(DfotaError, match="32-bit address space"):
        build_abl_elf(CODE, entry=0xFFFF0000)


def test_readelf_shows_qualcomm_layout(tmp_path: Path) -> None:
    readelf = need_tool("readelf")
    path = write(tmp_path, build_abl_elf(CODE))
    out = subprocess.run(
        [readelf, "-hlW", str(path)], check=True, capture_output=True, text=True
    ).stdout
    assert re.search(r"Class:\s+ELF32", out)
    assert re.search(r"Machine:\s+ARM", out)
    assert re.search(r"Entry point address:\s+0x9fa00000", out)
    assert re.search(r"Number of program headers:\s+3$", out, re.MULTILINE)
    rows = re.findall(r"^\s+(NULL|LOAD)\s+(0x[0-9a-f]+)\s+(0x[0-9a-f]+).*$", out, re.MULTILINE)
    assert [(kind, int(off, 16)) for kind, off, _ in rows] == [
        ("NULL", 0),
        ("NULL", 0x1000),
        ("LOAD", 0x3000),
    ]
    load = next(line for line in out.splitlines() if line.strip().startswith("LOAD"))
    assert re.search(r"\sR E\s+0x1000$", load)
    assert (
        "There are no sections in this file"
        in subprocess.run(
            [readelf, "-S", str(path)], check=True, capture_output=True, text=True
        ).stdout
    )


def test_objdump_shows_qualcomm_segment_flags(tmp_path: Path) -> None:
    objdump = need_tool("objdump")
    path = write(tmp_path, build_abl_elf(CODE))
    out = subprocess.run(
        [objdump, "-p", str(path)], check=True, capture_output=True, text=True
    ).stdout
    flags = re.findall(r"flags (\S+)(?: (\w+))?$", out, re.MULTILINE)
    assert flags == [("---", "7000000"), ("---", "2200000"), ("r-x", "")]


def test_aarch64_elf64_is_accepted(tmp_path: Path) -> None:
    data = aarch64_elf(b"\x1f\x20\x03\xd5" * 64)
    readelf = need_tool("readelf")
    path = write(tmp_path, data)
    out = subprocess.run([readelf, "-hW", str(path)], check=True, capture_output=True, text=True)
    assert "AArch64" in out.stdout
    image = read_abl_elf(path)
    assert (image.elf_class, image.machine, image.entry) == (64, "EM_AARCH64", 0x9FA00000)
    assert image.segments == (Segment("PT_LOAD", 0x1000, 256, 256, 0x9FA00000, 5),)


# --- errors ------------------------------------------------------------------------------------


def test_text_file_is_not_elf(tmp_path: Path) -> None:
    expect_error(tmp_path, b"LA: 0x9FA00000\nthis is not an ELF\n", r"not an ELF file \(magic")


def test_empty_file_is_not_elf(tmp_path: Path) -> None:
    expect_error(tmp_path, b"", r"not an ELF file \(magic b''")


def test_x86_64_binary_is_rejected(tmp_path: Path) -> None:
    true = Path("/bin/true").resolve()
    data = true.read_bytes()
    assert data[18:20] == struct.pack("<H", 62)  # the machine really is x86-64
    expect_error(tmp_path, data, r"unsupported machine EM_X86_64 \(expected ARM or AArch64\)$")


def test_truncated_inside_load_segment(tmp_path: Path) -> None:
    data = build_abl_elf(CODE)[: 0x3000 + 1000]
    expect_error(
        tmp_path,
        data,
        rf"segment 2 ends at {0x3000 + len(CODE)}, beyond the file \({0x3000 + 1000} bytes\); "
        "the file is truncated$",
    )


def test_truncated_inside_hash_segment(tmp_path: Path) -> None:
    expect_error(tmp_path, build_abl_elf(CODE)[:0x1010], r"segment 1 ends at 4232, beyond the file")


def test_truncated_inside_program_header_table(tmp_path: Path) -> None:
    expect_error(
        tmp_path,
        build_abl_elf(CODE)[:100],
        r"program header table ends at 148, beyond the file \(100 bytes\); the file is truncated$",
    )


def test_truncated_inside_elf_header(tmp_path: Path) -> None:
    expect_error(tmp_path, build_abl_elf(CODE)[:30], r"inside the ELF header \(30 bytes, need 52\)")


def test_garbage_header(tmp_path: Path) -> None:
    data = b"\x7fELF" + bytes(range(7, 207))
    expect_error(tmp_path, data, r"not a valid ELF file \(Invalid EI_CLASS")


def test_no_load_segment(tmp_path: Path) -> None:
    data = bytearray(build_abl_elf(CODE))
    data[52 + 2 * 32 : 52 + 2 * 32 + 4] = struct.pack("<I", 0)  # third phdr: PT_LOAD -> PT_NULL
    expect_error(tmp_path, bytes(data), r"no PT_LOAD segment$")


def test_aarch64_truncated(tmp_path: Path) -> None:
    data = aarch64_elf(b"\0" * 4096)[:0x1800]
    expect_error(tmp_path, data, r"segment 0 ends at 8192, beyond the file \(6144 bytes\)")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DfotaError, match="cannot read ELF file"):
        read_abl_elf(tmp_path / "abl.elf")


@settings(max_examples=400, deadline=None)
@given(
    cut=st.integers(min_value=0, max_value=0x3000 + 64),
    flips=st.lists(st.tuples(st.integers(4, 160), st.integers(1, 255)), max_size=8),
)
def test_damaged_files_raise_only_dfota_errors(cut: int, flips: list[tuple[int, int]]) -> None:
    data = bytearray(build_abl_elf(b"\x01" * 64)[:cut])
    for index, mask in flips:
        if index < len(data):
            data[index] ^= mask
    try:
        image = parse_abl_elf(bytes(data), "abl.elf")
    except DfotaError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(segment.end <= len(data) for segment in image.segments)
        assert image.load_segments
