"""dfota.formats.ubi on real images made by mtd-utils (mkfs.ubifs, ubinize): trees, contents,
owners, device nodes, non-UTF-8 names, and damaged images that must give one clear error,
silently."""

from __future__ import annotations

import mmap
import os
import random
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import pytest
from ubireader.utils import guess_peb_size

from dfota.build.targetfiles import KEPT_FROM_SOURCE
from dfota.core.errors import DfotaError
from dfota.core.tree import DIR, FILE, SYMLINK, sha1_bytes
from dfota.formats.ubi import PEB_SIZE, guessed_peb_size, list_volumes, mapped_view
from dfota.formats.ubifs import SpecialNode, read_ubifs
from dfota.tools.sample import images as sample_images
from dfota.tools.sample import nodes, ubi_images, versions
from dfota.tools.sample import rootfs as sample_rootfs
from tests.builders import Node, d, f, ln, write_tree

LEB_SIZE = 253952
DATA_OFFSET = 8192  # ubinize -m 4096 -s 4096: EC header, VID header, then data

# (path, type, mode, major, minor): device nodes for a test image
Device = tuple[str, str, int, int, int]


def _tool(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    assert found, f"{name} missing: install the Debian package mtd-utils"
    return found


def _run(*args: str) -> None:
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr + done.stdout


def _devtable(tree: Mapping[str, Node], devices: Iterable[Device]) -> str:
    """Modes and owners of every entry a device table can name, and the device nodes."""
    lines = ["/\td\t755\t0\t0\t-\t-\t-\t-\t-"]
    for rel, node in sorted(tree.items()):
        printable = rel.isprintable() and not any(c.isspace() for c in rel)
        if node.kind == SYMLINK or not printable or not rel.encode("utf-8", "replace").isascii():
            continue
        kind = "d" if node.kind == DIR else "f"
        lines.append(f"/{rel}\t{kind}\t{node.mode:o}\t{node.uid}\t{node.gid}\t-\t-\t-\t-\t-")
    for path, kind, mode, major, minor in devices:
        lines.append(f"/{path}\t{kind}\t{mode:o}\t0\t0\t{major}\t{minor}\t-\t-\t-")
    return "\n".join(lines) + "\n"


def make_ubifs(work: Path, label: str, tree: Mapping[str, Node], *,
               devices: Iterable[Device] = (), compr: str = "lzo") -> Path:
    """A UBIFS image of `tree` by mkfs.ubifs, with the sdxlemur geometry."""
    root = work / f"{label}-root"
    write_tree(root, tree)
    table = work / f"{label}.devtable"
    table.write_text(_devtable(tree, devices))
    out = work / f"{label}.ubifs"
    _run(_tool("mkfs.ubifs"), "-m", "4096", "-e", str(LEB_SIZE), "-c", "2146", "-F", "-U",
         "-x", compr, "-D", str(table), "-r", str(root), "-o", str(out))
    return out


def make_ubi(dest: Path, volumes: Sequence[tuple[str, Path | int]], *,
             autoresize: str = "") -> Path:
    """ubinize: each volume from a UBIFS image, or empty with a size in bytes."""
    sections = []
    for vol_id, (name, content) in enumerate(volumes):
        lines = [f"[{name}_volume]", "mode=ubi", f"vol_id={vol_id}", "vol_type=dynamic",
                 f"vol_name={name}"]
        if isinstance(content, Path):
            lines += [f"image={content}", f"vol_size={content.stat().st_size}"]
        else:
            lines.append(f"vol_size={content}")
        if name == autoresize:
            lines.append("vol_flags=autoresize")
        sections.append("\n".join(lines) + "\n")
    cfg = dest.parent / f".{dest.name}.cfg"
    cfg.write_text("\n".join(sections))
    try:
        _run(_tool("ubinize"), "-o", str(dest), "-m", "4096", "-p", str(PEB_SIZE), "-s", "4096",
             "-Q", "1234", str(cfg))
    finally:
        cfg.unlink()
    return dest


def ubi_image(work: Path, tree: Mapping[str, Node], *, devices: Iterable[Device] = (),
              compr: str = "lzo", name: str = "rootfs", empty: Sequence[str] = ()) -> Path:
    """A UBI image whose first volume `name` holds `tree`; then empty volumes."""
    work.mkdir(parents=True, exist_ok=True)
    fs = make_ubifs(work, name, tree, devices=devices, compr=compr)
    return make_ubi(work / f"{name}.ubi", [(name, fs), *((e, 4 * LEB_SIZE) for e in empty)])


def patched(image: Path, dest: Path, changes: Iterable[tuple[int, bytes]]) -> Path:
    data = bytearray(image.read_bytes())
    for offset, new in changes:
        data[offset:offset + len(new)] = new
    dest.write_bytes(bytes(data))
    return dest


BIG = random.Random(7).randbytes(700_000)  # more than two erase blocks, incompressible
SPARSE = b"head" + bytes(3 * 4096 + 17) + b"tail"
NON_UTF8 = os.fsdecode(b"caf\xe9.txt")

SMALL_TREE: dict[str, Node] = {
    "bin": d(),
    "bin/busybox": f(b"\x7fELF" + bytes(range(256)) * 40, 0o755),
    "bin/sh": ln("busybox"),
    "bin/su": f(b"setuid helper", 0o4755),
    "etc": d(),
    "etc/passwd": f("root:x:0:0::/root:/bin/sh\n"),
    "etc/secret": d(0o700, uid=1001, gid=1001),
    "etc/secret/key": f("k" * 100, 0o600, uid=1001, gid=1002),
    "etc/localtime": ln("/usr/share/zoneinfo/UTC"),
    "empty": d(),
    "dev": d(),
    "data": d(),
    "data/big.bin": f(BIG),
    "data/sparse.bin": f(SPARSE),
    "data/zero": f(b""),
    "data/with space": f("spaced"),
    NON_UTF8: f("latin-1 name"),
}
DEVICES: tuple[Device, ...] = (("dev/null", "c", 0o666, 1, 3), ("dev/mtdblock0", "b", 0o600,
                                                                 31, 0))


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("ubi-small")
    return ubi_image(work, SMALL_TREE, devices=DEVICES, empty=("cachefs",))


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """No compression: file data lies in the image as it is (to find and damage it)."""
    work = tmp_path_factory.mktemp("ubi-plain")
    return ubi_image(work, {"a": f(b"MARKER-0123456789" * 300), "b": f("other")}, compr="none")


# ---------------------------------------------------------------------------------------------
# Reading


def test_volumes_of_the_sample_sysfs_image(sample_sdk: Path) -> None:
    volumes = list_volumes(sample_sdk / "firmware/update/sdxlemur-sysfs.ubi")
    assert [(v.name, v.vol_id, v.empty, v.autoresize) for v in volumes] == [
        ("rootfs", 0, False, False), ("usrfs", 1, True, True), ("cachefs", 2, True, False),
        ("systemrw", 3, True, False)]
    assert all(v.vol_type == "dynamic" for v in volumes)
    assert volumes[0].leb_count > 0


def test_sample_rootfs_volume_is_the_sample_tree(sample_sdk: Path) -> None:
    tree = read_ubifs(sample_sdk / "firmware/update/sdxlemur-sysfs.ubi", "rootfs")
    expected = {rel: node for rel, node in sample_rootfs.base_rootfs().items()
                if not rel.startswith(tuple(f"{k}/" for k in KEPT_FROM_SOURCE))}
    expected["dev/pts"] = nodes.Node(DIR, 0o755)
    assert set(tree.entries) == set(expected)
    for rel, node in expected.items():
        entry = tree.entries[rel]
        assert (entry.kind, entry.mode, entry.uid, entry.gid) == (node.kind, node.mode, 0, 0), rel
        if node.kind == FILE:
            assert entry.sha1 == sha1_bytes(node.data), rel
            assert entry.size == len(node.data)
        if node.kind == SYMLINK:
            assert entry.link == node.link
    assert tree.entries["bin/ql_su_helper"].mode == 0o4755
    assert tree.read("etc/quectel-project-version") == versions.BASE.version_file.encode()
    assert tree.special == tuple(
        SpecialNode(f"dev/{name}", "char device", mode, 0, 0, major, minor)
        for name, _kind, mode, major, minor in ubi_images.DEVICE_NODES)


def test_modem_image_is_the_modem_tree(sample_sdk: Path) -> None:
    tree = read_ubifs(sample_sdk / "firmware/update/NON-HLOS.ubi")
    assert tree.volume == ubi_images.MODEM_VOLUME
    files = {rel: node for rel, node in sample_images.modem_files().items()}
    assert set(tree.entries) == set(files)
    assert all(tree.read(rel) == node.data for rel, node in files.items() if node.kind == FILE)
    assert tree.special == ()


def test_metadata_contents_and_special_files(small: Path) -> None:
    tree = read_ubifs(small)
    e = tree.entries
    assert e["etc/secret/key"].mode == 0o600
    assert (e["etc/secret/key"].uid, e["etc/secret/key"].gid) == (1001, 1002)
    assert (e["etc/secret"].kind, e["etc/secret"].mode, e["etc/secret"].uid) == (DIR, 0o700, 1001)
    assert e["bin/su"].mode == 0o4755
    assert (e["bin/sh"].kind, e["bin/sh"].link, e["bin/sh"].size) == (SYMLINK, "busybox", 7)
    assert e["etc/localtime"].link == "/usr/share/zoneinfo/UTC"
    assert e["empty"].kind == DIR
    for rel in ("data/big.bin", "data/sparse.bin", "data/zero", "bin/busybox", "data/with space"):
        assert tree.read(rel) == SMALL_TREE[rel].data, rel
        assert e[rel].sha1 == sha1_bytes(SMALL_TREE[rel].data), rel
        assert e[rel].size == len(SMALL_TREE[rel].data)
    assert next(len(c) for c in tree.chunks("data/big.bin")) == 4096  # streamed block by block
    assert tree.special == (
        SpecialNode("dev/mtdblock0", "block device", 0o600, 0, 0, 31, 0),
        SpecialNode("dev/null", "char device", 0o666, 0, 0, 1, 3))
    assert tree.device_nodes == ("dev/mtdblock0", "dev/null")
    assert "dev/null" not in e


def test_a_name_that_is_not_utf8_is_kept(small: Path) -> None:
    tree = read_ubifs(small)
    assert tree.non_utf8_paths() == [NON_UTF8]
    assert os.fsencode(NON_UTF8) == b"caf\xe9.txt"
    assert tree.read(NON_UTF8) == b"latin-1 name"


@pytest.mark.parametrize("compr", ["none", "zlib", "zstd", "favor_lzo"])
def test_every_compressor_reads_back(tmp_path: Path, compr: str) -> None:
    text = b"".join(b"line %d of a configuration file\n" % i for i in range(3000))
    image = ubi_image(tmp_path, {"t": f(text), "b": f(BIG[:50_000])}, compr=compr)
    tree = read_ubifs(image)
    assert tree.read("t") == text
    assert tree.read("b") == BIG[:50_000]


def test_hard_links_share_content(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_tree(root, {"a": f("same inode")})
    os.link(root / "a", root / "b")
    out = tmp_path / "fs.ubifs"
    _run(_tool("mkfs.ubifs"), "-m", "4096", "-e", str(LEB_SIZE), "-c", "64", "-U", "-r",
         str(root), "-o", str(out))
    tree = read_ubifs(make_ubi(tmp_path / "x.ubi", [("rootfs", out)]))
    assert tree.entries["a"].sha1 == tree.entries["b"].sha1 == sha1_bytes(b"same inode")
    assert tree.read("b") == b"same inode"


def test_peb_size_from_the_known_geometry_when_the_guess_is_wrong(tmp_path: Path) -> None:
    # the UBI header magic, stored raw every 1000 bytes, makes ubi_reader guess 1000
    decoy = b"".join(b"UBI#" + bytes(996) for _ in range(2000))
    image = ubi_image(tmp_path, {"decoy": f(decoy)}, compr="none")
    assert read_ubifs(image).read("decoy") == decoy
    with pytest.raises(DfotaError, match="no UBI header at offset 131072"):
        read_ubifs(image, peb_size=128 * 1024)


def test_volume_by_name(small: Path) -> None:
    assert read_ubifs(small, "rootfs").volume == "rootfs"
    with pytest.raises(DfotaError, match=r"has no volume 'system' \(volumes: rootfs, cachefs\)"):
        read_ubifs(small, "system")


def test_contents_are_read_again_and_checked_on_every_read(plain: Path, tmp_path: Path) -> None:
    image = tmp_path / "copy.ubi"
    shutil.copyfile(plain, image)
    tree = read_ubifs(image)
    assert tree.read("a") == b"MARKER-0123456789" * 300
    at = image.read_bytes().index(b"MARKER-0123456789") + 10
    patched(image, image, [(at, b"?")])
    assert tree.read("b") == b"other"
    with pytest.raises(DfotaError, match=r"a, data block 0: .* fails its CRC"):
        tree.read("a")
    with pytest.raises(DfotaError, match="is not a regular file of volume rootfs"):
        tree.read("missing")


# ---------------------------------------------------------------------------------------------
# Damaged images: one clear error naming the image, and nothing printed


def _fails(capfd: pytest.CaptureFixture[str], image: Path, pattern: str,
           volume: str | None = None) -> DfotaError:
    capfd.readouterr()
    with pytest.raises(DfotaError, match=pattern) as caught:
        read_ubifs(image, volume)
    assert caught.value.path == str(image)
    assert str(caught.value).startswith(f"{image}: ")
    assert "\n" not in str(caught.value)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    return caught.value


def test_bad_erase_counter_header(small: Path, tmp_path: Path,
                                  capfd: pytest.CaptureFixture[str]) -> None:
    for peb in (0, 3):
        bad = patched(small, tmp_path / f"ec{peb}.ubi", [(peb * PEB_SIZE + 8, b"\x01")])
        _fails(capfd, bad, rf"erase-counter header of erase block {peb} "
                           rf"\(offset {peb * PEB_SIZE}\) is corrupt \(CRC mismatch\)")


def test_bad_volume_id_header(small: Path, tmp_path: Path,
                              capfd: pytest.CaptureFixture[str]) -> None:
    bad = patched(small, tmp_path / "vid.ubi", [(2 * PEB_SIZE + 4096 + 12, b"\x07")])
    _fails(capfd, bad, r"volume-id header of erase block 2 .* is corrupt")


def test_truncated_image(small: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    data = small.read_bytes()
    cut = tmp_path / "cut.ubi"
    cut.write_bytes(data[:len(data) - 100_000])
    _fails(capfd, cut, r"is truncated: \d+ bytes is not a whole number of 262144-byte erase")
    whole_blocks = tmp_path / "cut-at-block.ubi"
    rootfs_only = make_ubi(tmp_path / "rootfs-only.ubi",
                           [("rootfs", small.parent / "rootfs.ubifs")]).read_bytes()
    whole_blocks.write_bytes(rootfs_only[:-PEB_SIZE])
    _fails(capfd, whole_blocks, r"volume rootfs holds \d+ of the \d+ erase blocks of its file "
                                "system: the image is truncated")


def test_destroyed_volume_table(small: Path, tmp_path: Path,
                                capfd: pytest.CaptureFixture[str]) -> None:
    noise = random.Random(3).randbytes(22016)
    bad = patched(small, tmp_path / "vtbl.ubi", [(DATA_OFFSET, noise),
                                                 (PEB_SIZE + DATA_OFFSET, noise)])
    _fails(capfd, bad, r"volume table in erase block 0 is destroyed \(128 record")
    one_record = patched(small, tmp_path / "vtbl1.ubi", [(DATA_OFFSET + 172 + 20, b"x")])
    _fails(capfd, one_record, r"volume table in erase block 0 is damaged \(1 record")


def test_empty_volume(small: Path, capfd: pytest.CaptureFixture[str]) -> None:
    _fails(capfd, small, "volume cachefs is empty: it holds no file system", "cachefs")


def test_volume_without_ubifs(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    raw = tmp_path / "raw.bin"
    raw.write_bytes(random.Random(5).randbytes(3 * LEB_SIZE))
    image = make_ubi(tmp_path / "raw.ubi", [("raw", raw)])
    _fails(capfd, image, r"cannot read the UBIFS of volume raw: .*Super ?block")


def test_damaged_file_data_names_the_file(plain: Path, tmp_path: Path,
                                          capfd: pytest.CaptureFixture[str]) -> None:
    at = plain.read_bytes().index(b"MARKER-0123456789") + 5000
    bad = patched(plain, tmp_path / "data.ubi", [(at, b"!")])
    _fails(capfd, bad, r"volume rootfs: a, data block 1: the UBIFS node at LEB \d+ offset \d+ "
                       r"fails its CRC \(damaged\)")


def _nodes_of_type(image: bytes, node_type: int) -> list[int]:
    """Offsets of the UBIFS nodes of a type: common header magic, then the type at 20."""
    magic = struct.pack("<I", 0x06101831)
    found, at = [], image.find(magic)
    while at >= 0:
        if image[at + 20] == node_type:
            found.append(at)
        at = image.find(magic, at + 1)
    return found


@pytest.mark.parametrize(("node_type", "byte"), [(9, 28 + 4), (2, 24 + 8 + 8 + 9)],
                         ids=["index branch", "directory entry name"])
def test_damaged_index_or_entry_node(plain: Path, tmp_path: Path, node_type: int, byte: int,
                                     capfd: pytest.CaptureFixture[str]) -> None:
    data = plain.read_bytes()
    nodes = _nodes_of_type(data, node_type)
    assert nodes
    # every copy (the index may be written twice): whichever the master points at is damaged
    bad = patched(plain, tmp_path / "index.ubi",
                  [(at + byte, bytes([data[at + byte] ^ 0x40])) for at in nodes])
    _fails(capfd, bad, r"volume rootfs: the UBIFS node at LEB \d+ offset \d+ fails its CRC "
                       r"\(damaged\)")


def test_not_a_ubi_image(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.ubi"
    empty.write_bytes(b"")
    _fails(capfd, empty, "is empty, not a UBI image")
    other = tmp_path / "other.ubi"
    other.write_bytes(b"ANDROID!" + bytes(PEB_SIZE))
    _fails(capfd, other, r"is not a UBI image \(no UBI header at its start\)")
    _fails(capfd, tmp_path / "absent.ubi", "file not found")


def _rewritten_data_node(image: bytes, dest: Path, field: int, value: bytes) -> Path:
    """The first data node of file `a` with a field rewritten and its CRC made right again:
    damage that only the checks after the CRC can see."""
    at = image.index(b"MARKER-0123456789") - 48  # common header, then the data node's own
    assert image[at:at + 4] == struct.pack("<I", 0x06101831) and image[at + 20] == 1
    node = bytearray(image[at:at + struct.unpack_from("<I", image, at + 16)[0]])
    node[field:field + len(value)] = value
    node[4:8] = struct.pack("<I", zlib.crc32(node[8:]) ^ 0xFFFFFFFF)
    return patched_bytes(image, dest, at, bytes(node))


def patched_bytes(image: bytes, dest: Path, at: int, new: bytes) -> Path:
    dest.write_bytes(image[:at] + new + image[at + len(new):])
    return dest


@pytest.mark.parametrize(("field", "value", "message"), [
    (20, b"\x00", r"a: the index points at a node that is not its data \(LEB \d+ offset \d+\)"),
    (24, struct.pack("<I", 99), r"a: the index points at another file's data \(LEB \d+ "),
    (40, struct.pack("<I", 5000), r"a: data block 0 claims 5000 bytes"),
    (40, struct.pack("<I", 100), r"a: data block 0 does not decompress to its 100 bytes "
                                 r"\(compression type 0\)"),
], ids=["not a data node", "another file", "too big", "wrong size"])
def test_data_node_intact_but_wrong_names_the_file(plain: Path, tmp_path: Path, field: int,
                                                   value: bytes, message: str,
                                                   capfd: pytest.CaptureFixture[str]) -> None:
    bad = _rewritten_data_node(plain.read_bytes(), tmp_path / "node.ubi", field, value)
    _fails(capfd, bad, rf"volume rootfs: {message}")


def test_peb_size_guess_is_ubi_readers(small: Path, tmp_path: Path) -> None:
    # ubi_reader searches by 5 MiB chunks: a header across two is missed, and positions
    # after the first chunk are counted from the first header seen
    chunk = 5 * 1024 * 1024
    rng = random.Random(11)
    across = bytearray(rng.randbytes(2 * chunk + 300))
    for at in (100, chunk - 2, chunk + 100, 2 * chunk + 50):
        across[at:at + 4] = b"UBI#"
    scattered = bytearray(rng.randbytes(chunk + 70_000))
    for at in [*range(7, len(scattered) - 4, 131072), *rng.sample(range(len(scattered)), 40)]:
        scattered[at:at + 4] = b"UBI#"
    files = {"small.ubi": small.read_bytes(), "across": bytes(across),
             "scattered": bytes(scattered), "none": rng.randbytes(3000)}
    for name, content in files.items():
        path = tmp_path / name
        path.write_bytes(content)
        with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            assert guessed_peb_size(data) == guess_peb_size(str(path)), name


class _Interrupted(Exception):
    pass


def test_an_error_while_a_slice_of_the_image_lives_is_the_one_raised(plain: Path) -> None:
    # Ctrl-C inside a decompressor: its frame, in the traceback, still holds its input
    with pytest.raises(_Interrupted), mapped_view(plain) as view:
        held = view[0:8]
        raise _Interrupted(bytes(held))
