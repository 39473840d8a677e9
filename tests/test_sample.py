"""The sample SDK: reproducible, in the vendor's formats, and with every kind of change."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from elftools.elf.segments import InterpSegment
from ubireader.ubi import ubi as UbiImage
from ubireader.ubi_io import leb_virtual_file, ubi_file
from ubireader.ubifs import ubifs as Ubifs
from ubireader.ubifs import walk
from ubireader.ubifs.misc import process_reg_file

from dfota.core.errors import DfotaError
from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.formats.bootimg import parse_boot_image
from dfota.formats.elf import parse_abl_elf
from dfota.formats.version import parse_version
from dfota.tools.sample import content, generate, nodes, ubi_images, versions
from dfota.tools.sample import images as sample_images
from dfota.tools.sample.generate import generate_sample, sample_is_current, sample_stamp
from dfota.tools.sample.images import base_targetfiles_tree, modem_files
from dfota.tools.sample.nodes import Node
from dfota.tools.sample.rootfs import base_rootfs, next_rootfs
from dfota.tools.sample.versions import BASE, CHANGES, NEXT

BASE_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001@20220622T1550"
NEXT_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220715A_01.002@20220715T0930"

# (kind, mode, sha1 of the data or the link text): what two trees must agree on
View = dict[str, tuple[str, int, str]]


@pytest.fixture(scope="session")
def sample_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second generation, under a restrictive umask."""
    root = tmp_path_factory.mktemp("sample_again")
    old = os.umask(0o077)
    try:
        generate_sample(root)
    finally:
        os.umask(old)
    return root


def spec_view(tree: Mapping[str, Node]) -> View:
    return {path: (node.kind, node.mode if node.kind != SYMLINK else 0o777,
                   node.link if node.kind == SYMLINK else hashlib.sha1(node.data).hexdigest()
                   if node.kind == FILE else "") for path, node in tree.items()}


def disk_view(folder: Path) -> View:
    view: View = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            rel = path.relative_to(folder).as_posix()
            if stat.S_ISLNK(st.st_mode):
                view[rel] = (SYMLINK, 0o777, os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                view[rel] = (DIR, stat.S_IMODE(st.st_mode), "")
            else:
                view[rel] = (FILE, stat.S_IMODE(st.st_mode),
                             hashlib.sha1(path.read_bytes()).hexdigest())
    return view


def zip_view(path: Path) -> View:
    view: View = {}
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16
            name = info.filename.rstrip("/")
            if stat.S_ISLNK(mode):
                view[name] = (SYMLINK, 0o777, zf.read(info).decode())
            elif stat.S_ISDIR(mode):
                view[name] = (DIR, stat.S_IMODE(mode), "")
            else:
                view[name] = (FILE, stat.S_IMODE(mode), hashlib.sha1(zf.read(info)).hexdigest())
    return view


def strip_prefix(view: View, prefix: str) -> View:
    return {k[len(prefix):]: v for k, v in view.items() if k.startswith(prefix)}


@dataclass(frozen=True)
class UbiEntry:
    mode: int  # st_mode with the type bits
    uid: int
    gid: int
    mtime: int
    ctime: int
    data: bytes  # file content, or the link text of a symlink


@dataclass(frozen=True)
class UbiVolume:
    vol_id: int
    flags: int
    blocks: int
    files: dict[str, UbiEntry]
    root: UbiEntry | None  # the root directory


def read_ubi(path: Path) -> dict[str, UbiVolume]:
    """Every volume of a UBI image, and every entry of the UBIFS it holds, via ubi_reader."""
    image = UbiImage(ubi_file(str(path), ubi_images.PEB_SIZE, 0, None))
    volumes: dict[str, UbiVolume] = {}
    for ubi_image in image.images:
        for name, volume in ubi_image.volumes.items():
            blocks = volume.get_blocks(image.blocks)
            files: dict[str, UbiEntry] = {}
            root = None
            if blocks:
                fs = Ubifs(leb_virtual_file(image, blocks))
                inodes: dict = {}
                walk.index(fs, fs.master_node.root_lnum, fs.master_node.root_offs, inodes, [])

                def visit(inum: int, prefix: str, fs: Ubifs = fs, inodes: dict = inodes,
                          files: dict[str, UbiEntry] = files) -> None:
                    for dent in inodes[inum].get("dent", []):
                        rel = prefix + dent.name
                        ino = inodes[dent.inum]["ino"]
                        if stat.S_ISREG(ino.mode):
                            data = process_reg_file(fs, inodes[dent.inum], rel, inodes)
                        else:
                            data = bytes(ino.data)
                        files[rel] = UbiEntry(ino.mode, ino.uid, ino.gid, ino.mtime_sec,
                                              ino.ctime_sec, data)
                        if stat.S_ISDIR(ino.mode):
                            visit(dent.inum, rel + "/")

                visit(1, "")
                top = inodes[1]["ino"]
                root = UbiEntry(top.mode, top.uid, top.gid, top.mtime_sec, top.ctime_sec, b"")
            volumes[name] = UbiVolume(volume.vol_id, volume.vol_rec.flags, len(blocks), files,
                                      root)
    return volumes


def ubi_view(files: Mapping[str, UbiEntry]) -> View:
    view: View = {}
    for rel, entry in files.items():
        if stat.S_ISLNK(entry.mode):
            view[rel] = (SYMLINK, 0o777, entry.data.decode())
        elif stat.S_ISDIR(entry.mode):
            view[rel] = (DIR, stat.S_IMODE(entry.mode), "")
        elif stat.S_ISREG(entry.mode):
            view[rel] = (FILE, stat.S_IMODE(entry.mode), hashlib.sha1(entry.data).hexdigest())
    return view


def resolve_in(tree: Mapping[str, Node], path: str, depth: int = 0) -> str | None:
    """Where `path` leads inside `tree` (the tree taken as the root), or None if nowhere."""
    assert depth < 40, "symlink loop"
    parts: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            parts = parts[:-1]
            continue
        here = "/".join([*parts, part])
        node = tree.get(here)
        if node is None:
            return None
        if node.kind == SYMLINK:
            base = "" if node.link.startswith("/") else "/".join(parts)
            found = resolve_in(tree, f"{base}/{node.link}", depth + 1)
            if found is None:
                return None
            parts = found.split("/")
        else:
            parts.append(part)
    return "/".join(parts)


def outside_kept(tree: Mapping[str, Node]) -> dict[str, Node]:
    return {k: v for k, v in tree.items() if not k.startswith(("firmware/", "dev/"))}


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # generates the whole sample a second time
def test_two_generations_are_identical_whatever_the_umask(sample_sdk: Path,
                                                          sample_again: Path) -> None:
    first, second = disk_view(sample_sdk), disk_view(sample_again)
    assert first == second
    assert len(first) > 300
    for rel in first:
        if rel.startswith(("firmware/", "ql-ol-extsdk/")) and not rel.endswith(".sample-stamp"):
            a, b = (sample_sdk / rel).lstat(), (sample_again / rel).lstat()
            assert a.st_mtime == b.st_mtime, rel
    assert (sample_sdk / "firmware/upgrade/targetfiles.zip").stat().st_mtime == BASE.epoch
    assert (sample_sdk / "ql-ol-extsdk/target/abl.elf").stat().st_mtime == NEXT.epoch


def test_stamp_says_whether_a_whole_current_sample_is_there(sample_sdk: Path,
                                                            tmp_path: Path) -> None:
    assert sample_is_current(sample_sdk)
    assert (sample_sdk / "ql-ol-extsdk/.sample-stamp").read_text().strip() == sample_stamp()
    (tmp_path / "firmware/upgrade").mkdir(parents=True)
    (tmp_path / "firmware/upgrade/targetfiles.zip").write_bytes(b"")
    (tmp_path / "ql-ol-extsdk/ql-ol-rootfs").mkdir(parents=True)
    stamp = tmp_path / "ql-ol-extsdk/.sample-stamp"
    assert not sample_is_current(tmp_path)
    stamp.write_text(sample_stamp() + "\n")
    assert sample_is_current(tmp_path)
    stamp.write_text("0" * 64 + "\n")
    assert not sample_is_current(tmp_path)
    stamp.write_text(sample_stamp() + "\n")
    (tmp_path / "firmware/upgrade/targetfiles.zip").unlink()
    assert not sample_is_current(tmp_path)
    assert not sample_is_current(tmp_path / "missing")


def test_firmware_package_has_the_vendor_layout_and_checksums(sample_sdk: Path) -> None:
    firmware = sample_sdk / "firmware"
    assert sorted(p.name for p in firmware.iterdir()) == ["contents.xml", "md5.txt", "update",
                                                          "upgrade"]
    assert sorted(p.name for p in (firmware / "update").iterdir()) == sorted(
        generate.UPDATE_IMAGES)
    assert [p.name for p in (firmware / "upgrade").iterdir()] == ["targetfiles.zip"]
    check = subprocess.run(["md5sum", "--check", "--strict", "md5.txt"], cwd=firmware,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    listed = [line.split("  ", 1)[1] for line in (firmware / "md5.txt").read_text().splitlines()]
    assert listed == sorted(listed)
    assert listed == sorted([f"update/{n}" for n in generate.UPDATE_IMAGES]
                            + ["upgrade/targetfiles.zip"])
    contents = ET.parse(firmware / "contents.xml").getroot()
    named = {e.text for e in contents.iter("file_name")}
    assert named == {*generate.UPDATE_IMAGES, "targetfiles.zip"}
    assert contents.findtext("product_info/chipid") == "SDXLEMUR"


def test_targetfiles_zip_is_what_zip_qry0_makes(sample_sdk: Path) -> None:
    path = sample_sdk / "firmware/upgrade/targetfiles.zip"
    tested = subprocess.run(["unzip", "-tq", path], capture_output=True, text=True)
    assert tested.returncode == 0 and "No errors" in tested.stdout
    lines = subprocess.run(["zipinfo", path], capture_output=True, text=True,
                           check=True).stdout.splitlines()[2:-1]
    tree = base_targetfiles_tree()
    assert len(lines) == len(tree)
    assert all(" stor " in line and " unx " in line for line in lines)
    links = {line.split()[-1] for line in lines if line.startswith("l")}
    assert links == {f"{k}" for k, v in tree.items() if v.kind == SYMLINK}
    assert "SYSTEM/var/run" in links and "SYSTEM/etc/mtab" in links
    setuid = [line for line in lines if line.endswith(" SYSTEM/bin/ql_su_helper")]
    assert setuid and setuid[0].startswith("-rwsr-xr-x")
    with zipfile.ZipFile(path) as zf:
        names = [i.filename for i in zf.infolist()]
        assert all(i.extra == b"" and i.create_system == 3 for i in zf.infolist())
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    assert names == sorted(names, key=lambda n: n.rstrip("/").encode())
    assert {n.split("/")[0] for n in names} == {"BOOTABLE_IMAGES", "MULTIFOTA", "OTA", "RADIO",
                                                "RECOVERY", "SYSTEM"}
    assert "SYSTEM/usrdata/empty_dir/" in names and "SYSTEM/dev/pts/" in names


def test_targetfiles_holds_the_base_images_and_trees(sample_sdk: Path) -> None:
    firmware = sample_sdk / "firmware"
    view = zip_view(firmware / "upgrade/targetfiles.zip")
    assert view == spec_view(base_targetfiles_tree())
    with zipfile.ZipFile(firmware / "upgrade/targetfiles.zip") as zf:
        assert zf.read("BOOTABLE_IMAGES/boot.img") == (
            firmware / "update/sdxlemur-boot.img").read_bytes()
        assert zf.read("MULTIFOTA/abl.elf") == (firmware / "update/abl.elf").read_bytes()
        filesmap = zf.read("RADIO/filesmap").decode().split("\n")
        fstab = zf.read("RECOVERY/RAMDISK/etc/recovery.fstab").decode()
        for member in ("OTA/bin/updater", "OTA/bin/applypatch"):
            assert zf.read(member)[:4] == b"\x7fELF"
            assert view[member][1] == 0o755
    assert ["sdxlemur-boot.img", "boot"] in [line.split() for line in filesmap]
    assert ["abl.elf", "abl"] in [line.split() for line in filesmap]
    fstab_lines = [line.split() for line in fstab.splitlines()]
    for mount in (["/boot", "mtd", "boot"], ["/system", "ubifs", "system"],
                  ["/cache", "ubifs", "cache"]):
        assert mount in fstab_lines


def test_system_is_the_base_rootfs_with_the_modem_firmware(sample_sdk: Path) -> None:
    view = zip_view(sample_sdk / "firmware/upgrade/targetfiles.zip")
    system = strip_prefix(view, "SYSTEM/")
    rest = {k: v for k, v in system.items()
            if not k.startswith(("firmware/", "dev/"))}
    assert rest == spec_view(outside_kept(base_rootfs()))
    assert strip_prefix(system, "firmware/") == spec_view(modem_files())
    assert strip_prefix(system, "dev/") == {"pts": (DIR, 0o755, "")}
    for path in versions.SDK_ONLY:
        assert path not in system and path in base_rootfs() and path in next_rootfs()
    sizes = [len(n.data) for n in modem_files().values() if n.kind == FILE]
    assert len(sizes) >= 12 and 1 << 20 < sum(sizes) < 2 << 20 and max(sizes) <= 300 * 1024
    assert "image/modem_pr/so/895_0_0.mbn" in modem_files()


def test_sysfs_ubi_has_the_sdxlemur_volumes_and_the_base_rootfs(sample_sdk: Path) -> None:
    volumes = read_ubi(sample_sdk / "firmware/update/sdxlemur-sysfs.ubi")
    assert {n: v.vol_id for n, v in volumes.items()} == dict(ubi_images.SYSFS_VOLUMES)
    assert volumes["usrfs"].flags == 1  # autoresize
    assert volumes["rootfs"].flags == 0
    assert all(volumes[n].blocks == 0 for n in ("usrfs", "cachefs", "systemrw"))
    files = volumes["rootfs"].files
    assert volumes["rootfs"].root is not None
    assert stat.S_IMODE(volumes["rootfs"].root.mode) == 0o755
    devices = {rel: e for rel, e in files.items() if stat.S_ISCHR(e.mode)}
    assert set(devices) == {f"dev/{d[0]}" for d in ubi_images.DEVICE_NODES}
    assert stat.S_IMODE(devices["dev/console"].mode) == 0o600
    assert ubi_view(files) == {**spec_view(outside_kept(base_rootfs())),
                               "dev/pts": (DIR, 0o755, "")}
    assert stat.S_IMODE(files["bin/ql_su_helper"].mode) == 0o4755
    assert stat.S_IMODE(files["etc/ql_secret/key.pem"].mode) == 0o600
    assert files["var/run"].data == b"/run"
    assert all((e.uid, e.gid) == (0, 0) for e in files.values())
    assert {e.mtime for e in files.values()} == {e.ctime for e in files.values()} == {BASE.epoch}


def test_next_sysfs_ubi_is_built_from_the_next_rootfs(sample_sdk: Path) -> None:
    volumes = read_ubi(sample_sdk / "ql-ol-extsdk/target/sdxlemur-sysfs.ubi")
    assert [v.vol_id for v in volumes.values()] == [0, 1, 2, 3]
    files = volumes["rootfs"].files
    view = ubi_view(files)
    assert view == {**spec_view(outside_kept(next_rootfs())), "dev/pts": (DIR, 0o755, "")}
    assert "usrdata/new_empty_dir" in view and "firmware" in view
    assert not any(k.startswith("firmware/") for k in view)
    assert {e.mtime for e in files.values()} == {NEXT.epoch}


def test_nonhlos_ubi_holds_the_modem_files_of_system_firmware(sample_sdk: Path) -> None:
    volumes = read_ubi(sample_sdk / "firmware/update/NON-HLOS.ubi")
    assert list(volumes) == [ubi_images.MODEM_VOLUME] and volumes["modem"].vol_id == 0
    view = zip_view(sample_sdk / "firmware/upgrade/targetfiles.zip")
    assert ubi_view(volumes["modem"].files) == strip_prefix(view, "SYSTEM/firmware/")


def test_ubireader_command_line_tools_read_the_images(sample_sdk: Path) -> None:
    def run(script: str, *args: str) -> str:
        code = f"from ubireader.scripts.{script} import main; main()"
        done = subprocess.run([sys.executable, "-c", code, *args],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    sysfs = str(sample_sdk / "firmware/update/sdxlemur-sysfs.ubi")
    info = run("ubireader_display_info", sysfs)
    for name in ("rootfs", "usrfs", "cachefs", "systemrw"):
        assert f"Volume Name:{name}" in info
    listing = run("ubireader_list_files", "-P", "/etc/ql_secret", sysfs)
    assert any(line.startswith("100600") and line.endswith(" key.pem")
               for line in listing.splitlines())
    modem = run("ubireader_list_files", "-P", "/image/modem_pr/so",
                str(sample_sdk / "firmware/update/NON-HLOS.ubi"))
    assert "895_0_0.mbn" in modem


def test_sdk_holds_the_next_images_and_rootfs(sample_sdk: Path) -> None:
    sdk = sample_sdk / "ql-ol-extsdk"
    assert sorted(p.name for p in (sdk / "target").iterdir()) == [
        "abl.elf", "sdxlemur-boot.img", "sdxlemur-sysfs.ubi"]
    assert (sdk / "target/sdxlemur-boot.img").read_bytes() == sample_images.boot_image(True)
    assert (sdk / "target/abl.elf").read_bytes() == sample_images.abl_image(True)
    rootfs = sdk / "ql-ol-rootfs"
    assert disk_view(rootfs) == spec_view(next_rootfs())
    for folder in versions.EMPTY_DIRS_NEXT:
        assert (rootfs / folder).is_dir() and not any((rootfs / folder).iterdir())
    nxt = next_rootfs()
    for link in versions.DANGLING_LINKS:
        assert os.path.islink(rootfs / link) and resolve_in(nxt, link) is None, link
    assert resolve_in(nxt, "etc/localtime") == "usr/share/zoneinfo/Asia/Shanghai"
    assert resolve_in(nxt, "sbin/reboot") == "bin/busybox"
    for link in versions.ABSOLUTE_LINKS:
        assert os.readlink(rootfs / link).startswith("/")
    assert os.readlink(rootfs / "usr/lib/libql_nw.so") == "libql_nw.so.1"
    assert (rootfs / "usr/lib/libql_nw.so").resolve() == (rootfs / "usr/lib/libql_nw.so.1")
    for path in versions.SDK_ONLY:
        assert (rootfs / path).is_file()
    assert 250 <= len(next_rootfs()) <= 500
    total = sum(len(n.data) for n in next_rootfs().values())
    assert 2 << 20 < total < 4 << 20
    assert sum(len(n.data) > 100 * 1024 for n in next_rootfs().values()) >= 6


def changes_between(base: Mapping[str, Node], nxt: Mapping[str, Node]) -> dict[str, object]:
    common = sorted(base.keys() & nxt.keys())
    same_kind = [p for p in common if base[p].kind == nxt[p].kind]
    return {
        "added": tuple(sorted(nxt.keys() - base.keys())),
        "removed": tuple(sorted(base.keys() - nxt.keys())),
        "modified": tuple(p for p in same_kind
                          if base[p].kind == FILE and base[p].data != nxt[p].data),
        "mode_changed": tuple((p, base[p].mode, nxt[p].mode) for p in same_kind
                              if base[p].mode != nxt[p].mode),
        "retargeted": tuple((p, base[p].link, nxt[p].link) for p in same_kind
                            if base[p].kind == SYMLINK and base[p].link != nxt[p].link),
        "file_to_symlink": tuple((p, nxt[p].link) for p in common
                                 if base[p].kind == FILE and nxt[p].kind == SYMLINK),
        "symlink_to_file": tuple(p for p in common
                                 if base[p].kind == SYMLINK and nxt[p].kind == FILE),
        "other_kind_changes": tuple(p for p in common if base[p].kind != nxt[p].kind
                                    and DIR in (base[p].kind, nxt[p].kind)),
    }


def test_next_version_differs_from_the_base_exactly_as_described(sample_sdk: Path) -> None:
    base, nxt = base_rootfs(), next_rootfs()
    found = changes_between(base, nxt)
    assert found == {
        "added": CHANGES.added, "removed": CHANGES.removed, "modified": CHANGES.modified,
        "mode_changed": CHANGES.mode_changed, "retargeted": CHANGES.retargeted,
        "file_to_symlink": CHANGES.file_to_symlink, "symlink_to_file": CHANGES.symlink_to_file,
        "other_kind_changes": (),
    }
    # and the same holds for what is on disk: the SDK rootfs against the base SYSTEM
    on_disk = disk_view(sample_sdk / "ql-ol-extsdk/ql-ol-rootfs")
    system = strip_prefix(zip_view(sample_sdk / "firmware/upgrade/targetfiles.zip"), "SYSTEM/")
    changed = {p for p in on_disk.keys() & system.keys()
               if on_disk[p] != system[p] and not p.startswith(("firmware/", "dev/"))}
    assert changed == ({*CHANGES.modified, *CHANGES.symlink_to_file}
                       | {p for p, *_ in CHANGES.mode_changed + CHANGES.retargeted}
                       | {p for p, _ in CHANGES.file_to_symlink})
    # each kind of change is really there
    assert base[CHANGES.removed_dir].kind == DIR
    assert any(p.startswith(CHANGES.removed_dir + "/") and base[p].kind == FILE
               for p in CHANGES.removed)
    assert len(nxt[CHANGES.grown_file].data) > len(base[CHANGES.grown_file].data) + 4000
    small = [p for p in CHANGES.modified if base[p].data[:4] == b"\x7fELF"
             and len(base[p].data) == len(nxt[p].data)]
    for path in small:  # binaries patched in a few places
        differing = sum(a != b for a, b in zip(base[path].data, nxt[path].data, strict=True))
        assert 0 < differing < 400, path
    assert len(small) >= 2
    old_gz, new_gz = base[CHANGES.compressed_file].data, nxt[CHANGES.compressed_file].data
    assert gzip.decompress(old_gz) != gzip.decompress(new_gz) and old_gz[:2] == b"\x1f\x8b"
    assert base["etc/ql_manager.conf"].data.count(b"\n") == nxt["etc/ql_manager.conf"].data.count(
        b"\n")
    for path in CHANGES.new_empty_dirs:
        assert nxt[path].kind == DIR and not any(p.startswith(path + "/") for p in nxt)
    assert base["bin/ping"].kind == SYMLINK and nxt["bin/ping"].kind == FILE
    assert all(base[p].mode == 0o644 and nxt[p].mode == 0o755 for p, *_ in CHANGES.mode_changed)


def test_config_list_paths_exist_in_both_versions(sample_sdk: Path) -> None:
    base, nxt = base_rootfs(), next_rootfs()
    assert base[versions.NOOTA_FILE] == nxt[versions.NOOTA_FILE]
    assert base[versions.FULLOTA_FILE].data != nxt[versions.FULLOTA_FILE].data
    for path in (versions.CHMOD_FILE, versions.CHMOD_DIR, versions.SECRET_FILE,
                 versions.SETUID_FILE):
        assert path in base and path in nxt
    assert nxt[versions.CHMOD_DIR].kind == DIR and nxt[versions.CHMOD_DIR].mode == 0o700
    assert nxt[versions.SECRET_FILE].mode == 0o600 and nxt[versions.SETUID_FILE].mode == 0o4755
    rootfs = sample_sdk / "ql-ol-extsdk/ql-ol-rootfs"
    assert stat.S_IMODE((rootfs / versions.SETUID_FILE).lstat().st_mode) == 0o4755


def test_kernel_and_abl_change_between_the_versions(sample_sdk: Path) -> None:
    old_boot = (sample_sdk / "firmware/update/sdxlemur-boot.img").read_bytes()
    new_boot = (sample_sdk / "ql-ol-extsdk/target/sdxlemur-boot.img").read_bytes()
    old, new = parse_boot_image(old_boot, "base"), parse_boot_image(new_boot, "next")
    assert (old.cmdline, new.cmdline) == CHANGES.boot_cmdline
    assert "console=ttyMSM0,115200,n8 androidboot.hardware=qcom" in old.cmdline
    assert old.id_matches and new.id_matches and old.page_size == 4096
    assert old.kernel_addr == 0x80008000 and old.ramdisk_size == 0
    kernel = old_boot[old.page_size : old.page_size + old.kernel_size]
    assert int.from_bytes(kernel[0x24:0x28], "little") == 0x016F2818  # zImage magic
    assert b"qcom,sdxlemur" in kernel
    assert kernel != new_boot[new.page_size : new.page_size + new.kernel_size]
    old_abl = (sample_sdk / "firmware/update/abl.elf").read_bytes()
    new_abl = (sample_sdk / "ql-ol-extsdk/target/abl.elf").read_bytes()
    assert old_abl != new_abl
    for data in (old_abl, new_abl):
        image = parse_abl_elf(data, "abl.elf")
        assert image.machine == "EM_ARM" and image.elf_class == 32 and image.load_segments


def test_version_files_parse_to_the_expected_keys(sample_sdk: Path) -> None:
    with zipfile.ZipFile(sample_sdk / "firmware/upgrade/targetfiles.zip") as zf:
        base_text = zf.read("SYSTEM/etc/quectel-project-version")
    next_text = (sample_sdk / "ql-ol-extsdk/ql-ol-rootfs/etc/quectel-project-version").read_bytes()
    assert parse_version(base_text, "base").key == BASE.key == BASE_KEY
    assert parse_version(next_text, "next").key == NEXT.key == NEXT_KEY
    assert base_text.decode().splitlines() == [
        "Project Name: RG520NNADA_VB",
        "Project Rev : RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001",
        "Branch  Name: SDX6X",
        "Custom  Name: STD",
        "Package Time: 2022-06-22,15:50",
    ]


def test_programs_are_arm_elf_files(sample_sdk: Path) -> None:
    rootfs = sample_sdk / "ql-ol-extsdk/ql-ol-rootfs"
    for rel, kind in (("bin/busybox", "ET_EXEC"), ("usr/sbin/ql_manager_server", "ET_EXEC"),
                      ("usr/lib/libql_common_api.so.1", "ET_DYN"), ("lib/libc-2.31.so",
                                                                     "ET_DYN")):
        with open(rootfs / rel, "rb") as f:
            elf = ELFFile(f)
            assert (elf.elfclass, elf["e_machine"], elf["e_type"]) == (32, "EM_ARM", kind)
            load = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
            assert load and load[0]["p_filesz"] == (rootfs / rel).stat().st_size
            if kind == "ET_EXEC":
                interp = [s for s in elf.iter_segments() if isinstance(s, InterpSegment)]
                assert interp[0].get_interp_name() == "/lib/ld-linux-armhf.so.3"


def test_a_failed_run_leaves_the_old_sample_alone(sample_sdk: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "sample"
    shutil.copytree(sample_sdk, root, symlinks=True)
    before = disk_view(root)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))  # no zip: the run fails half-way
    with pytest.raises(DfotaError, match="zip not found"):
        generate_sample(root)
    assert disk_view(root) == before
    assert sample_is_current(root)
    assert not list(root.glob(".sample-build.*"))


@pytest.mark.slow  # generates the whole sample again
def test_a_new_run_replaces_the_old_sample_and_its_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "sample"
    for junk in ("firmware/junk.txt", "ql-ol-extsdk/ql-ol-rootfs/junk",
                 ".sample-build.stale/firmware/x"):
        (root / junk).parent.mkdir(parents=True, exist_ok=True)
        (root / junk).write_text("junk")
    generate_sample(root)
    assert sorted(p.name for p in root.iterdir()) == ["firmware", "ql-ol-extsdk"]
    assert not (root / "firmware/junk.txt").exists()
    assert not (root / "ql-ol-extsdk/ql-ol-rootfs/junk").exists()
    assert sample_is_current(root)


def test_ubifs_owners_and_times_do_not_depend_on_the_files(tmp_path: Path) -> None:
    tree = {"etc": Node(DIR, 0o755), "etc/a": Node(FILE, 0o600, b"secret"),
            "bin": Node(DIR, 0o755), "bin/x": Node(FILE, 0o4755, b"\x7fELF"),
            "bin/y": Node(SYMLINK, 0o777, link="x")}
    folder = tmp_path / "tree"
    nodes.write_tree(tree, folder, 1_000_000_000)
    for path in [folder, *folder.rglob("*")]:
        if os.geteuid() == 0:
            os.chown(path, 1234, 1234, follow_symlinks=False)
        if not path.is_symlink():
            os.chmod(path, 0o777)  # the device table, not the disk, decides the modes
    images = []
    for name in ("one.ubifs", "two.ubifs"):
        ubi_images.mkfs_ubifs(folder, tmp_path / name, ubi_images.devtable(tree, devices=False),
                           "test", 1_234_567_890)
        images.append((tmp_path / name).read_bytes())
        os.utime(folder / "etc/a", (5, 5))
    assert images[0] == images[1]
    assert images[0][108:124] == hashlib.sha256(content.SEED + b"test").digest()[:16]
    ubi = tmp_path / "test.ubi"
    ubi_images.ubinize(ubi, [ubi_images.UbiVolume("rootfs", 0, tmp_path / "one.ubifs")], 7,
                    tmp_path / "test.cfg")
    volume = read_ubi(ubi)["rootfs"]
    files = volume.files
    assert volume.root == UbiEntry(stat.S_IFDIR | 0o755, 0, 0, 1_234_567_890, 1_234_567_890, b"")
    assert ubi_view(files) == spec_view(tree)
    assert {(e.uid, e.gid, e.mtime, e.ctime) for e in files.values()} == {
        (0, 0, 1_234_567_890, 1_234_567_890)}


def test_fix_ubifs_refuses_a_damaged_node(tmp_path: Path) -> None:
    folder = tmp_path / "tree"
    tree = {"f": Node(FILE, 0o644, b"data")}
    nodes.write_tree(tree, folder, 0)
    ubi_images.mkfs_ubifs(folder, tmp_path / "x.ubifs", ubi_images.devtable(tree, devices=False),
                       "x", 0)
    image = bytearray((tmp_path / "x.ubifs").read_bytes())
    main = 3 + sum(int.from_bytes(image[o : o + 4], "little") for o in (56, 60, 64))
    pos = main * ubi_images.LEB_SIZE
    assert int.from_bytes(image[pos : pos + 4], "little") == ubi_images.UBIFS_MAGIC
    image[pos + 30] ^= 0xFF
    with pytest.raises(DfotaError, match="bad CRC"):
        ubi_images.fix_ubifs(image, bytes(16), 0)
