"""Android boot image, zImage and DTB writers and the boot image reader."""

from __future__ import annotations

import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfota.core.errors import DfotaError
from dfota.formats.bootimg import (
    FDT_MAGIC,
    HEADER_V0,
    HEADER_V1_EXTRA,
    HEADER_V2_EXTRA,
    ZIMAGE_MAGIC,
    BootImage,
    build_boot_image,
    make_arm_zimage,
    make_dtb,
    parse_boot_image,
    read_boot_image,
    section_bytes,
)

CMDLINE = "console=ttyMSM0,115200 ubi.mtd=system rootfstype=ubifs root=ubi0:rootfs ro"


def need_tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install the Debian package {package}")
    return found


def sample_dtb(board: str = "mtp") -> bytes:
    return make_dtb(
        f"Qualcomm Technologies, Inc. SDXLEMUR {board.upper()}",
        [f"qcom,sdxlemur-{board}", "qcom,sdxlemur", f"qcom,{board}"],
        {
            "chosen": {"bootargs": "console=ttyMSM0"},
            "memory@80000000": {"device_type": "memory", "reg": [0x80000000, 0x10000000]},
            "soc": {
                "#address-cells": 1,
                "#size-cells": 1,
                "ranges": True,
                "serial@a90000": {
                    "compatible": "qcom,msm-geni-console",
                    "reg": [0xA90000, 0x4000],
                    "status": "okay",
                },
            },
        },
        properties={"qcom,msm-id": [0x1A7, 0x10000], "qcom,board-id": [8, 0]},
    )


def sample_kernel() -> bytes:
    payload = bytes((i * 7 + 3) % 256 for i in range(10_001))
    return make_arm_zimage(payload, [sample_dtb("mtp"), sample_dtb("cdp")])


def mkbootimg(tmp_path: Path, out: str, *args: str, **files: bytes) -> bytes:
    tool = need_tool("mkbootimg", "mkbootimg")
    cmd = [tool]
    for key, blob in files.items():
        src = tmp_path / f"{out}.{key}"
        src.write_bytes(blob)
        cmd += [f"--{key}", str(src)]
    target = tmp_path / out
    subprocess.run([*cmd, *args, "-o", str(target)], check=True, capture_output=True)
    return target.read_bytes()


def craft(
    version: int,
    sections: dict[str, bytes],
    *,
    page_size: int = 4096,
    magic: bytes = b"ANDROID!",
    sizes: dict[str, int] | None = None,
) -> bytes:
    """A v0-v2 header followed by the page-aligned sections; `sizes` overrides header sizes."""
    names = ["kernel", "ramdisk", "second", "recovery_dtbo", "dtb"]
    size = {n: len(sections.get(n, b"")) for n in names}
    size.update(sizes or {})
    header = HEADER_V0.pack(
        magic,
        size["kernel"],
        0x80008000,
        size["ramdisk"],
        0,
        size["second"],
        0,
        0x80000100,
        page_size,
        version,
        0,
        b"",
        b"console=ttyMSM0",
        bytes(32),
        b"",
    )
    if version >= 1:
        header += HEADER_V1_EXTRA.pack(size["recovery_dtbo"], 0, 1648 if version == 1 else 1660)
    if version >= 2:
        header += HEADER_V2_EXTRA.pack(size["dtb"], 0x81F00000)
    out = bytearray(header)
    for blob in [b""] + [sections.get(n, b"") for n in names]:
        out += blob
        out += bytes(-len(out) % page_size)
    return bytes(out)


# --- writer and reader -------------------------------------------------------------------------


def test_round_trip_header_fields(tmp_path: Path) -> None:
    kernel = sample_kernel()
    data = build_boot_image(kernel, cmdline=CMDLINE, name="sdxlemur", os_version=0x1234)
    path = tmp_path / "sdxlemur-boot.img"
    path.write_bytes(data)
    image = read_boot_image(path)
    assert isinstance(image, BootImage)
    assert image.header_version == 0
    assert image.page_size == 4096
    assert image.kernel_size == len(kernel)
    assert image.kernel_addr == 0x80008000
    assert (image.ramdisk_size, image.ramdisk_addr) == (0, 0)
    assert (image.second_size, image.second_addr) == (0, 0)
    assert image.tags_addr == 0x80000100
    assert image.os_version == 0x1234
    assert image.name == "sdxlemur"
    assert image.cmdline == CMDLINE
    assert len(image.image_id) == 32
    assert image.id_is_set and image.id_matches
    assert section_bytes(data, image, "kernel") == kernel


def test_sizes_and_alignment() -> None:
    kernel, ramdisk, second = b"K" * 5000, b"R" * 4096, b"S" * 1
    data = build_boot_image(kernel, cmdline="x", ramdisk=ramdisk, second=second, page_size=2048)
    assert len(data) == 2048 * (1 + 3 + 2 + 1)
    image = parse_boot_image(data, "boot.img")
    offsets = {s.name: (s.offset, s.size) for s in image.sections}
    assert offsets == {
        "kernel": (2048, 5000),
        "ramdisk": (2048 * 4, 4096),
        "second": (2048 * 6, 1),
    }
    assert data[2048 + 5000 : 2048 * 4] == bytes(2048 * 4 - 2048 - 5000)
    assert image.ramdisk_addr == 0x80000000 + 0x01000000
    assert image.second_addr == 0x80000000 + 0x00F00000
    assert image.image_size == len(data)


def test_image_id_is_sha1_of_sections_and_sizes() -> None:
    kernel, ramdisk = b"kernel bytes" * 100, b"ramdisk" * 3
    data = build_boot_image(kernel, cmdline="x", ramdisk=ramdisk)
    expected = hashlib.sha1(
        kernel
        + struct.pack("<I", len(kernel))
        + ramdisk
        + struct.pack("<I", len(ramdisk))
        + struct.pack("<I", 0)
    ).digest()
    image = parse_boot_image(data, "boot.img")
    assert image.image_id == expected + bytes(12)
    assert image.computed_id == image.image_id


def test_modified_kernel_no_longer_matches_id() -> None:
    data = bytearray(build_boot_image(b"A" * 100, cmdline="x"))
    data[4096] ^= 0xFF
    image = parse_boot_image(bytes(data), "boot.img")
    assert image.id_is_set
    assert not image.id_matches


def test_long_cmdline_spills_into_extra_cmdline() -> None:
    cmdline = "a=" + "b" * 700
    data = build_boot_image(b"k", cmdline=cmdline)
    assert data[64 : 64 + 512] == cmdline[:512].encode()
    assert parse_boot_image(data, "boot.img").cmdline == cmdline


def test_trailing_bytes_are_accepted() -> None:
    data = build_boot_image(b"k" * 10, cmdline="x") + b"\xff" * 12345
    image = parse_boot_image(data, "boot.img")
    assert image.kernel_size == 10
    assert image.file_size == len(data)
    assert image.image_size == 8192


def test_build_is_reproducible() -> None:
    assert build_boot_image(sample_kernel(), cmdline=CMDLINE) == build_boot_image(
        sample_kernel(), cmdline=CMDLINE
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cmdline": "x" * 1537}, "cmdline is 1537 bytes"),
        ({"cmdline": "x", "name": "n" * 17}, "name is 17 bytes"),
        ({"cmdline": "caf\u00e9"}, "must be ASCII"),
        ({"cmdline": "x", "page_size": 1024}, "page size 1024"),
    ],
)
def test_build_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(DfotaError, match=message):
        build_boot_image(b"k", **kwargs)


# --- byte identity with AOSP mkbootimg ---------------------------------------------------------


def test_identical_to_mkbootimg_sdxlemur(tmp_path: Path) -> None:
    kernel = sample_kernel()
    ours = build_boot_image(kernel, cmdline=CMDLINE, name="sdxlemur")
    theirs = mkbootimg(
        tmp_path,
        "boot.img",
        "--header_version", "0",
        "--pagesize", "4096",
        "--base", "0x80000000",
        "--cmdline", CMDLINE,
        "--board", "sdxlemur",
        kernel=kernel,
    )  # fmt: skip
    assert ours == theirs


def test_identical_to_mkbootimg_all_sections(tmp_path: Path) -> None:
    kernel, ramdisk, second = b"\x01" * 2049, b"\x02" * 2048, b"\x03" * 77
    cmdline = "root=/dev/ram0 " + "x" * 600  # crosses into extra_cmdline
    os_version = (((11 << 14) | (2 << 7) | 3) << 11) | ((23 << 4) | 5)
    ours = build_boot_image(
        kernel,
        cmdline=cmdline,
        name="sixteen-chars-nm",
        page_size=2048,
        base=0x10000000,
        kernel_offset=0x00208000,
        ramdisk_offset=0x02000000,
        second_offset=0x00E00000,
        tags_offset=0x00000200,
        ramdisk=ramdisk,
        second=second,
        os_version=os_version,
    )
    theirs = mkbootimg(
        tmp_path,
        "boot.img",
        "--header_version", "0",
        "--pagesize", "2048",
        "--base", "0x10000000",
        "--kernel_offset", "0x00208000",
        "--ramdisk_offset", "0x02000000",
        "--second_offset", "0x00E00000",
        "--tags_offset", "0x00000200",
        "--os_version", "11.2.3",
        "--os_patch_level", "2023-05",
        "--cmdline", cmdline,
        "--board", "sixteen-chars-nm",
        kernel=kernel,
        ramdisk=ramdisk,
        second=second,
    )  # fmt: skip
    assert ours == theirs


def test_identical_to_mkbootimg_page_multiple_kernel(tmp_path: Path) -> None:
    kernel = b"\x5a" * 16384 * 2
    ours = build_boot_image(kernel, cmdline="", page_size=16384)
    theirs = mkbootimg(
        tmp_path,
        "boot.img",
        "--pagesize", "16384",
        "--base", "0x80000000",
        kernel=kernel,
    )  # fmt: skip
    assert ours == theirs
    assert len(ours) == 16384 * 3


def test_reads_mkbootimg_v1_and_v2(tmp_path: Path) -> None:
    kernel, dtb = sample_kernel(), sample_dtb()
    v1 = mkbootimg(tmp_path, "v1.img", "--header_version", "1", kernel=kernel)
    v2 = mkbootimg(tmp_path, "v2.img", "--header_version", "2", kernel=kernel, dtb=dtb)
    image1 = parse_boot_image(v1, "v1.img")
    assert (image1.header_version, image1.header_size) == (1, 1648)
    assert image1.id_matches
    image2 = parse_boot_image(v2, "v2.img")
    assert (image2.header_version, image2.header_size) == (2, 1660)
    assert image2.dtb_size == len(dtb)
    assert image2.dtb_addr == 0x10000000 + 0x01F00000
    assert section_bytes(v2, image2, "dtb") == dtb
    assert image2.id_matches


def test_reads_v1_with_recovery_dtbo() -> None:
    dtbo = b"\xd7" * 3000
    data = craft(1, {"kernel": b"k" * 5000, "recovery_dtbo": dtbo})
    image = parse_boot_image(data, "v1.img")
    section = image.section("recovery_dtbo")
    assert section is not None
    assert (section.offset, section.size) == (4096 * 3, 3000)
    assert section_bytes(data, image, "recovery_dtbo") == dtbo


# --- errors ------------------------------------------------------------------------------------


def expect_error(data: bytes, pattern: str, tmp_path: Path) -> DfotaError:
    path = tmp_path / "sdxlemur-boot.img"
    path.write_bytes(data)
    with pytest.raises(DfotaError, match=pattern) as info:
        read_boot_image(path)
    text = str(info.value)
    assert text.startswith(str(path) + ": ")
    assert "\n" not in text
    return info.value


def test_empty_file(tmp_path: Path) -> None:
    expect_error(b"", r"too short for an Android boot image header \(0 bytes\)", tmp_path)


def test_file_shorter_than_header(tmp_path: Path) -> None:
    data = build_boot_image(b"k", cmdline="x")[:1000]
    expect_error(data, r"too short for a v0 boot image header \(1000 bytes, need 1632\)", tmp_path)


def test_bad_magic(tmp_path: Path) -> None:
    data = b"VNDRBOOT" + build_boot_image(b"k", cmdline="x")[8:]
    expect_error(data, r"not an Android boot image \(magic b'VNDRBOOT'", tmp_path)


def test_text_file_is_not_a_boot_image(tmp_path: Path) -> None:
    expect_error(b"hello, world\n" * 200, "not an Android boot image", tmp_path)


def test_mkbootimg_v3_header_is_unsupported(tmp_path: Path) -> None:
    v3 = mkbootimg(tmp_path, "v3.img", "--header_version", "3", kernel=b"k" * 100)
    assert struct.unpack_from("<I", v3, 40)[0] == 3
    expect_error(v3, r"unsupported boot image header version 3 \(supported: 0, 1, 2\)$", tmp_path)


def test_v4_header_is_unsupported(tmp_path: Path) -> None:
    # v4 keeps the v3 layout (version at offset 40) and adds a signature size.
    v4 = struct.pack("<8s4I4I I1536s I", b"ANDROID!", 100, 0, 0, 1584, 0, 0, 0, 0, 4, b"", 0)
    v4 += bytes(-len(v4) % 4096) + b"k" * 100 + bytes(3996)
    expect_error(v4, r"unsupported boot image header version 4 \(supported: 0, 1, 2\)$", tmp_path)


def test_absurd_header_version(tmp_path: Path) -> None:
    data = bytearray(build_boot_image(b"k", cmdline="x"))
    data[40:44] = struct.pack("<I", 0xDEADBEEF)
    expect_error(bytes(data), f"unsupported boot image header version {0xDEADBEEF} ", tmp_path)


def test_v2_header_cut_short(tmp_path: Path) -> None:
    data = craft(2, {"kernel": b"k", "dtb": b"d"})[:1650]
    expect_error(data, r"too short for a v2 boot image header \(1650 bytes, need 1660\)", tmp_path)


@pytest.mark.parametrize("page_size", [0, 1024, 4095, 32768])
def test_bad_page_size(tmp_path: Path, page_size: int) -> None:
    data = craft(0, {"kernel": b"k" * 10}, page_size=4096)
    data = data[:36] + struct.pack("<I", page_size) + data[40:]
    expect_error(data, f"unsupported boot image page size {page_size} ", tmp_path)


def test_empty_kernel(tmp_path: Path) -> None:
    expect_error(craft(0, {"ramdisk": b"r" * 10}), r"empty kernel \(kernel_size 0\)", tmp_path)


def test_truncated_kernel(tmp_path: Path) -> None:
    data = build_boot_image(b"k" * 10000, cmdline="x")[:9000]
    expect_error(data, r"kernel section ends at 14096, beyond the file \(9000 bytes\)$", tmp_path)


def test_kernel_size_beyond_file(tmp_path: Path) -> None:
    data = craft(0, {"kernel": b"k" * 10}, sizes={"kernel": 1 << 31})
    expect_error(data, f"kernel section ends at {4096 + (1 << 31)}, beyond the file", tmp_path)


def test_truncated_ramdisk(tmp_path: Path) -> None:
    data = build_boot_image(b"k" * 10, cmdline="x", ramdisk=b"r" * 5000)[: 8192 + 100]
    expect_error(data, r"ramdisk section ends at 13192, beyond the file \(8292 bytes\)$", tmp_path)


def test_truncated_second(tmp_path: Path) -> None:
    data = craft(0, {"kernel": b"k", "second": b"s" * 10})[: 8192 + 5]
    expect_error(data, r"second section ends at 8202, beyond the file", tmp_path)


def test_truncated_recovery_dtbo(tmp_path: Path) -> None:
    data = craft(1, {"kernel": b"k", "recovery_dtbo": b"o" * 3000})[:9000]
    expect_error(data, r"recovery_dtbo section ends at 11192, beyond the file", tmp_path)


def test_truncated_dtb(tmp_path: Path) -> None:
    v2 = mkbootimg(tmp_path, "v2.img", "--header_version", "2", kernel=b"k" * 10, dtb=sample_dtb())
    image = parse_boot_image(v2, "v2.img")
    dtb = image.section("dtb")
    assert dtb is not None
    cut = dtb.offset + 8
    expect_error(
        v2[:cut], rf"dtb section ends at {dtb.end}, beyond the file \({cut} bytes\)$", tmp_path
    )


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DfotaError, match="cannot read boot image"):
        read_boot_image(tmp_path / "nope.img")


# --- zImage and device tree --------------------------------------------------------------------


def test_zimage_header_and_appended_dtbs() -> None:
    payload = b"\xab" * 1001
    dtbs = [sample_dtb("mtp"), sample_dtb("cdp")]
    image = make_arm_zimage(payload, dtbs)
    magic, start, end = struct.unpack_from("<III", image, 0x24)
    assert magic == ZIMAGE_MAGIC
    assert start == 0
    assert end % 4 == 0
    assert end == len(image) - sum(len(d) for d in dtbs)
    assert payload in image[:end]
    # The decompressor finds the first DTB right at the end of the zImage.
    assert struct.unpack_from(">I", image, end)[0] == FDT_MAGIC
    second = end + struct.unpack_from(">I", image, end + 4)[0]
    assert image[second:] == dtbs[1]
    # The branch at 0x20 jumps over the header.
    (branch,) = struct.unpack_from("<I", image, 0x20)
    assert branch >> 24 == 0xEA
    assert 0x28 + 4 * (branch & 0xFFFFFF) >= 0x30


def test_dtb_decompiles_with_dtc(tmp_path: Path) -> None:
    dtc = need_tool("dtc", "device-tree-compiler")
    blob = tmp_path / "sdxlemur-mtp.dtb"
    blob.write_bytes(sample_dtb())
    result = subprocess.run(
        [dtc, "-I", "dtb", "-O", "dts", str(blob)], check=True, capture_output=True, text=True
    )
    dts = result.stdout
    assert 'model = "Qualcomm Technologies, Inc. SDXLEMUR MTP";' in dts
    assert 'compatible = "qcom,sdxlemur-mtp\\0qcom,sdxlemur\\0qcom,mtp";' in dts
    assert "#address-cells = <0x01>;" in dts
    assert "qcom,msm-id = <0x1a7 0x10000>;" in dts
    assert "reg = <0x80000000 0x10000000>;" in dts
    assert "serial@a90000 {" in dts
    assert "ranges;" in dts
    assert "Warning" not in result.stderr


def test_dtb_matches_dtc_recompile(tmp_path: Path) -> None:
    dtc = need_tool("dtc", "device-tree-compiler")
    ours = sample_dtb()
    src, out = tmp_path / "in.dtb", tmp_path / "out.dtb"
    src.write_bytes(ours)
    subprocess.run([dtc, "-q", "-I", "dtb", "-O", "dtb", "-o", str(out), str(src)], check=True)
    theirs = out.read_bytes()
    # Identical apart from the padding that keeps appended blobs word aligned.
    assert len(ours) % 4 == 0
    assert ours[8 : len(theirs)] == theirs[8:]
    assert ours[:4] == theirs[:4]


def test_fdtget_reads_properties(tmp_path: Path) -> None:
    fdtget = need_tool("fdtget", "device-tree-compiler")
    blob = tmp_path / "t.dtb"
    blob.write_bytes(sample_dtb("cdp"))

    def get(node: str, prop: str) -> str:
        return subprocess.run(
            [fdtget, str(blob), node, prop], check=True, capture_output=True, text=True
        ).stdout.strip()

    assert get("/", "model") == "Qualcomm Technologies, Inc. SDXLEMUR CDP"
    assert get("/chosen", "bootargs") == "console=ttyMSM0"
    assert get("/soc/serial@a90000", "status") == "okay"


@settings(max_examples=300, deadline=None)
@given(cut=st.integers(min_value=0, max_value=3 * 4096), flips=st.lists(st.integers(0, 1700)))
def test_damaged_images_raise_only_dfota_errors(cut: int, flips: list[int]) -> None:
    data = bytearray(build_boot_image(b"k" * 5000, cmdline="x", ramdisk=b"r" * 100)[:cut])
    for index in flips:
        if index < len(data):
            data[index] ^= 0x5A
    try:
        image = parse_boot_image(bytes(data), "boot.img")
    except DfotaError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(section.end <= len(data) for section in image.sections)
