"""dfota.build.firmware: release firmware packages checked against their real UBI images
(mtd-utils), bases built from images, version against package time, and the SDK image against
its rootfs."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from dfota.build.archive import Archive
from dfota.build.firmware import (
    TARGETFILES,
    check_md5,
    check_targetfiles_against_images,
    package_time_warnings,
    read_images,
)
from dfota.build.image_drift import (
    DRIFT_RECORD,
    image_drift,
    read_sdk_image,
    sdk_image_drift,
    take_image_metadata,
)
from dfota.build.import_base import build_base_from_images, import_base
from dfota.build.manifest import scan_rootfs
from dfota.build.sdk_image import RECORD as IMAGE_RECORD
from dfota.build.sdk_image import ImageTreeReader, image_key
from dfota.build.targetfiles import FS_CONFIG, SYSTEM_MANIFEST
from dfota.build.tree_compare import compare_trees
from dfota.core.errors import DfotaError
from dfota.core.tree import FILE, Entry, sha1_file
from dfota.formats.version import parse_version
from dfota.formats.zipio import ZipSource
from dfota.settings import PROJECT_DIR
from dfota.state.store import Records
from dfota.tools.sample.images import abl_image, boot_image
from dfota.tools.sample.versions import BASE
from tests.builders import Node, d, f, ln, version_text, write_targetfiles
from tests.test_ubi import LEB_SIZE, NON_UTF8, make_ubi, make_ubifs

REV = "RG520NNADAR01A01M4G_OCPU_BETA_20230101A_01.001"
TIME = "2023-01-01,10:00"

ROOTFS: dict[str, Node] = {
    "bin": d(), "bin/busybox": f(b"\x7fELF busybox" * 500, 0o755), "bin/sh": ln("busybox"),
    "dev": d(), "dev/pts": d(), "firmware": d(), "proc": d(),
    "etc": d(), "etc/quectel-project-version": f(version_text(REV, TIME)),
    "etc/app.conf": f("level=1\n"), "etc/localtime": ln("/usr/share/zoneinfo/UTC"),
    "etc/secret": d(0o700, uid=1001, gid=1001),
    "etc/secret/key": f("k" * 64, 0o600, uid=1001, gid=1001),
    "usr": d(), "usr/bin": d(), "usr/bin/tool": f(b"tool" * 100, 0o755),
    "usr/lib": d(), "usr/lib/libold.so": f(b"old library"),
}
MODEM: dict[str, Node] = {"image": d(), "image/modem.mdt": f(b"MDT" * 300),
                          "image/modem.b00": f(b"B00" * 3000)}
DEVICES = (("dev/null", "c", 0o666, 1, 3), ("dev/console", "c", 0o600, 5, 1))


def _system(rootfs: dict[str, Node], modem: dict[str, Node]) -> dict[str, Node]:
    system = {rel: node for rel, node in rootfs.items()}
    system.update({f"firmware/{rel}": node for rel, node in modem.items()})
    return system


def write_md5(folder: Path) -> None:
    lines = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "md5.txt"):
        digest = hashlib.md5(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(folder).as_posix()}\n")
    (folder / "md5.txt").write_text("".join(lines))


def make_package(folder: Path, *, rootfs: dict[str, Node] = ROOTFS,
                 modem: dict[str, Node] = MODEM, zip_system: dict[str, Node] | None = None,
                 meta: bool = True, targetfiles: bool = True) -> Path:
    """A release firmware package: real images of `rootfs` and `modem`, and (unless not
    `targetfiles`) a targetfiles.zip of `zip_system` (default: the same content)."""
    work = folder.parent / f"{folder.name}-work"
    work.mkdir(parents=True)
    update = folder / "update"
    update.mkdir(parents=True)
    (update / "sdxlemur-boot.img").write_bytes(boot_image(False))
    (update / "abl.elf").write_bytes(abl_image(False))
    rootfs_fs = make_ubifs(work, "rootfs", rootfs, devices=DEVICES)
    make_ubi(update / "sdxlemur-sysfs.ubi", [("rootfs", rootfs_fs), ("usrfs", 4 * LEB_SIZE),
                                            ("cachefs", 4 * LEB_SIZE)], autoresize="usrfs")
    make_ubi(update / "NON-HLOS.ubi", [("modem", make_ubifs(work, "modem", modem))])
    if targetfiles:
        (folder / "upgrade").mkdir()
        write_targetfiles(folder / TARGETFILES, zip_system or _system(ROOTFS, MODEM),
                          boot=boot_image(False), abl=abl_image(False), meta=meta)
    write_md5(folder)
    return folder


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_package(tmp_path_factory.mktemp("pkg") / "firmware")


def _copy(folder: Path, dest: Path) -> Path:
    shutil.copytree(folder, dest, symlinks=True)
    return dest


# ---------------------------------------------------------------------------------------------
# md5.txt


def test_md5_of_a_package(package: Path, tmp_path: Path) -> None:
    assert check_md5(package) == []
    copy = _copy(package, tmp_path / "pkg")
    image = copy / "update/NON-HLOS.ubi"
    data = bytearray(image.read_bytes())
    data[5000] ^= 1
    image.write_bytes(bytes(data))
    with pytest.raises(DfotaError, match=r"NON-HLOS\.ubi: md5 [0-9a-f]{32} does not match"):
        check_md5(copy)


def test_md5_list_formats_and_gaps(package: Path, tmp_path: Path) -> None:
    copy = _copy(package, tmp_path / "pkg")

    def md5(rel: str) -> str:
        return hashlib.md5((copy / rel).read_bytes()).hexdigest()

    (copy / "md5.txt").write_text(
        "# release checksums\r\n"
        f"{md5('update/NON-HLOS.ubi').upper()} *update\\NON-HLOS.ubi\r\n"
        f"update/sdxlemur-sysfs.ubi  {md5('update/sdxlemur-sysfs.ubi')}\r\n"
        f"{md5('update/sdxlemur-boot.img')}  sdxlemur-boot.img\r\n")
    assert check_md5(copy) == [
        f"{copy / 'update/abl.elf'}: not listed in md5.txt; its integrity is unchecked",
        f"{copy / TARGETFILES}: not listed in md5.txt; its integrity is unchecked"]
    (copy / "md5.txt").write_text(f"{md5('update/abl.elf')}  update/missing.img\n")
    with pytest.raises(DfotaError, match=r"missing\.img: listed in md5\.txt but missing"):
        check_md5(copy)
    (copy / "md5.txt").write_text(f"{md5('update/abl.elf')}  ../outside\n")
    with pytest.raises(DfotaError, match="line 1 names a path outside the package"):
        check_md5(copy)
    (copy / "md5.txt").write_text("not a checksum line\n")
    with pytest.raises(DfotaError, match="line 1 is not 'md5  path'"):
        check_md5(copy)
    (copy / "md5.txt").unlink()
    with pytest.raises(DfotaError, match=r"has no md5\.txt"):
        check_md5(copy)


# ---------------------------------------------------------------------------------------------
# targetfiles.zip against the images


def test_a_consistent_package_imports(sample_sdk: Path, tmp_path: Path) -> None:
    firmware = _copy(sample_sdk / "firmware", tmp_path / "firmware")
    archive = Archive(tmp_path / "archive")
    said: list[str] = []
    key = import_base(firmware, archive, say=said.append)
    assert key == BASE.key
    version = archive.get(key)
    assert version is not None
    assert version.zip_path.read_bytes() == (firmware / TARGETFILES).read_bytes()
    assert version.manifest["checked_against_images"] is True
    assert version.manifest["origin"] == "firmware"
    assert not any(line.startswith(("warning", "  ")) for line in said), said
    assert any("8 device node(s)" in line and "dev/console" in line for line in said)
    assert said[-1].startswith(f"import_base: {key} archived")
    said.clear()
    assert import_base(firmware, archive, say=said.append) == key
    assert "already archived, same content" in said[-1]


def _sha1(line: str) -> str:
    return hashlib.sha1(f"{line}\n".encode()).hexdigest()[:12]


def test_every_kind_of_drift_is_reported_by_path(tmp_path: Path) -> None:
    image_rootfs = dict(ROOTFS)
    image_rootfs["etc/app.conf"] = f("level=2\n")
    image_rootfs["usr/bin/tool"] = replace(ROOTFS["usr/bin/tool"], mode=0o700)
    image_rootfs["etc/secret/key"] = replace(ROOTFS["etc/secret/key"], uid=0)
    del image_rootfs["usr/lib/libold.so"]
    image_rootfs["usr/bin/added"] = f("new", 0o755)
    image_rootfs["etc/localtime"] = ln("/usr/share/zoneinfo/Asia/Shanghai")
    image_rootfs["bin/sh"] = f("not a link any more", 0o755)
    image_rootfs[NON_UTF8] = f("latin-1")
    modem = {**MODEM, "image/modem.b00": f(b"B01" * 3000)}
    folder = make_package(tmp_path / "firmware", rootfs=image_rootfs, modem=modem)
    check = check_targetfiles_against_images(folder)
    ubi = "update/sdxlemur-sysfs.ubi (rootfs)"
    assert check.differences == (
        f"SYSTEM/bin/sh: a symlink in targetfiles.zip, a file in {ubi}",
        f"SYSTEM/caf\\xe9.txt: name is not valid UTF-8 (in {ubi})",
        f"SYSTEM/etc/app.conf: content differs (8 bytes, sha1 {_sha1('level=1')} in "
        f"targetfiles.zip; 8 bytes, sha1 {_sha1('level=2')} in {ubi})",
        f"SYSTEM/etc/localtime: link target '/usr/share/zoneinfo/UTC' in targetfiles.zip, "
        f"'/usr/share/zoneinfo/Asia/Shanghai' in {ubi}",
        f"SYSTEM/etc/secret/key: owner 1001:1001 in targetfiles.zip, 0:1001 in {ubi}",
        f"SYSTEM/usr/bin/added: in {ubi} only (a file)",
        f"SYSTEM/usr/bin/tool: mode 0755 in targetfiles.zip, 0700 in {ubi}",
        "SYSTEM/usr/lib/libold.so: in targetfiles.zip only (a file)",
        "SYSTEM/firmware/image/modem.b00: content differs (9000 bytes, sha1 "
        f"{hashlib.sha1(b'B00' * 3000).hexdigest()[:12]} in targetfiles.zip; 9000 bytes, sha1 "
        f"{hashlib.sha1(b'B01' * 3000).hexdigest()[:12]} in update/NON-HLOS.ubi)",
    )
    archive = Archive(tmp_path / "archive")
    said: list[str] = []
    with pytest.raises(DfotaError, match=r"targetfiles\.zip: does not match the firmware "
                                         r"images in update/: 9 difference\(s\)"):
        import_base(folder, archive, say=said.append)
    assert [line.strip() for line in said if line.startswith("  ")] == list(check.differences)
    assert archive.versions() == []


def test_boot_image_and_owners_without_sidecars(tmp_path: Path) -> None:
    folder = make_package(tmp_path / "firmware", meta=False)
    boot = folder / "update/sdxlemur-boot.img"
    boot.write_bytes(boot_image(True))
    check = check_targetfiles_against_images(folder)
    assert check.differences == (
        "BOOTABLE_IMAGES/boot.img: content differs from update/sdxlemur-boot.img",)
    assert check.notes[0] == ("owners not compared: the zip records none (no "
                              "META/filesystem_config.txt); 2 entries of the images are not "
                              "owned by root")
    assert "2 device node(s) of update/sdxlemur-sysfs.ubi left out" in check.notes[1]


def test_compare_trees_can_leave_owners_out() -> None:
    a = {"x": Entry("x", FILE, 0o644, 0, 0, 1, "aa")}
    b = {"x": Entry("x", FILE, 0o644, 5, 5, 1, "aa")}
    assert compare_trees(a, b, names=("A", "B")) == ["x: owner 0:0 in A, 5:5 in B"]
    assert compare_trees(a, b, owners=False) == []


# ---------------------------------------------------------------------------------------------
# A base built from the images


def _members(path: Path) -> dict[str, tuple[str, int, str]]:
    with ZipSource(path) as src:
        return {name: (m.kind, m.mode, src.sha1(name) if m.kind == FILE else
                       src.link_target(name) if m.kind == "symlink" else "")
                for name, m in src.members.items()}


def test_base_from_images_equals_the_vendor_targetfiles(sample_sdk: Path, tmp_path: Path) -> None:
    firmware = sample_sdk / "firmware"
    vendor = firmware / TARGETFILES
    built = tmp_path / "base.zip"
    parts = build_base_from_images(firmware, vendor, built)
    ours, theirs = _members(built), _members(vendor)
    meta = {"META", SYSTEM_MANIFEST, FS_CONFIG}
    assert set(ours) - set(theirs) == meta
    assert {name: ours[name] for name in theirs} == theirs
    assert parts[:2] == ["BOOTABLE_IMAGES/boot.img: update/sdxlemur-boot.img",
                         "MULTIFOTA/abl.elf: update/abl.elf"]
    assert any(p.startswith("SYSTEM/ (") and "volume rootfs" in p for p in parts)
    assert any(p.startswith("SYSTEM/firmware/ (23 entries): update/NON-HLOS.ubi") for p in parts)
    assert any(p.startswith("SYSTEM/dev/: 8 device node(s)") for p in parts)
    assert [p.split(" ")[0] for p in parts if f"template {vendor}" in p] == [
        "OTA/", "RADIO/", "RECOVERY/"]
    again = tmp_path / "again.zip"
    build_base_from_images(firmware, vendor, again)
    assert again.read_bytes() == built.read_bytes()


def test_a_built_base_carries_the_image_owners_and_checks_clean(package: Path,
                                                                tmp_path: Path) -> None:
    folder = _copy(package, tmp_path / "firmware")
    template = tmp_path / "template.zip"
    shutil.move(folder / TARGETFILES, template)
    write_md5(folder)
    archive = Archive(tmp_path / "archive")
    with pytest.raises(DfotaError, match=r"has no upgrade/targetfiles\.zip: pass a "
                                         r"targetfiles\.zip of the same product as the template"):
        import_base(folder, archive, say=lambda _line: None)
    said: list[str] = []
    key = import_base(folder, archive, template=template, say=said.append)
    assert key == parse_version(version_text(REV, TIME).encode(), "x").key
    version = archive.get(key)
    assert version is not None and version.manifest["checked_against_images"] is False
    assert version.manifest["template"] == str(template)
    images = version.manifest["built_from_images"]
    assert isinstance(images, list)
    assert any("volume rootfs of update/sdxlemur-sysfs.ubi" in p for p in images)
    with ZipSource(version.zip_path) as src:
        recorded = json.loads(src.read(SYSTEM_MANIFEST))["entries"]
    owners = {e["path"]: (e["uid"], e["gid"]) for e in recorded}
    assert owners["etc/secret/key"] == (1001, 1001)
    assert owners["firmware/image/modem.mdt"] == (0, 0)
    # the built base, put back as the package's targetfiles.zip, matches owners included
    shutil.copyfile(version.zip_path, folder / TARGETFILES)
    check = check_targetfiles_against_images(folder)
    assert check.consistent
    assert not any(n.startswith("owners not compared") for n in check.notes)


def test_from_images_takes_the_package_zip_as_template(tmp_path: Path) -> None:
    rootfs = {**ROOTFS, "etc/app.conf": f("level=3\n")}
    folder = make_package(tmp_path / "firmware", rootfs=rootfs)
    archive = Archive(tmp_path / "archive")
    said: list[str] = []
    key = import_base(folder, archive, from_images=True, say=said.append)
    version = archive.get(key)
    assert version is not None
    with ZipSource(version.zip_path) as src:
        assert src.read("SYSTEM/etc/app.conf") == b"level=3\n"
        assert src.read("RADIO/filesmap").startswith(b"sdxlemur-boot.img")
    assert any(f"template {folder / TARGETFILES}" in line for line in said)


def test_a_name_that_is_not_utf8_is_refused_in_a_base(tmp_path: Path) -> None:
    folder = make_package(tmp_path / "firmware", rootfs={**ROOTFS, NON_UTF8: f("x")})
    with pytest.raises(DfotaError, match=r"volume rootfs: caf\\xe9\.txt: name is not valid "
                                         r"UTF-8; a targetfiles\.zip cannot carry it"):
        build_base_from_images(folder, folder / TARGETFILES, tmp_path / "base.zip")
    assert not (tmp_path / "base.zip").exists()


# ---------------------------------------------------------------------------------------------
# Version and package time


def test_package_time_against_the_version(sample_sdk: Path, package: Path,
                                          tmp_path: Path) -> None:
    firmware = sample_sdk / "firmware"
    version = read_images(firmware).version
    assert version.key == BASE.key
    assert package_time_warnings(firmware, version) == []
    later = replace(version, package_time=version.package_time + timedelta(days=3))
    [warning] = package_time_warnings(firmware, later)
    assert "upgrade/targetfiles.zip (newest entry) dates from 2022-06-22,15:50" in warning
    assert "Package Time is 2022-06-25,15:50" in warning
    other_rev = replace(version, project_rev="RG520NNADAR01A01M4G_OCPU_BETA_20990101A_09.009")
    [warning] = package_time_warnings(firmware, other_rev)
    assert f"apps build id {BASE.project_rev} is not the images' Project Rev" in warning

    folder = _copy(package, tmp_path / "pkg")
    (folder / TARGETFILES).unlink()
    stamp = datetime(2023, 1, 1, 10, 0).timestamp()
    for image in (folder / "update").iterdir():
        os.utime(image, (stamp, stamp))
    pkg_version = read_images(folder).version
    assert package_time_warnings(folder, pkg_version) == []
    stamp = datetime(2023, 3, 1, 8, 0).timestamp()
    os.utime(folder / "update/NON-HLOS.ubi", (stamp, stamp))
    [warning] = package_time_warnings(folder, pkg_version)
    assert "the images in update/ dates from 2023-03-01,08:00" in warning


# ---------------------------------------------------------------------------------------------
# The SDK's sysfs image against its rootfs folder


def test_sdk_image_matches_its_rootfs(sample_sdk: Path) -> None:
    sdk = sample_sdk / "ql-ol-extsdk"
    scan = scan_rootfs(sdk / "ql-ol-rootfs")
    assert image_drift(scan.entries, read_sdk_image(sdk / "target/sdxlemur-sysfs.ubi")) == []


def test_the_sdk_images_tree_is_kept_by_the_images_sha1(sample_sdk: Path, tmp_path: Path
                                                       ) -> None:
    sdk = sample_sdk / "ql-ol-extsdk"
    image = sdk / "target/sdxlemur-sysfs.ubi"
    tree = scan_rootfs(sdk / "ql-ol-rootfs").entries
    records, sha1 = Records(tmp_path / "state/records", "tool"), hashlib.sha1(image.read_bytes())
    record = records.path(IMAGE_RECORD, image_key(sha1.hexdigest()))
    assert sdk_image_drift(tree, ImageTreeReader(image, records, sha1.hexdigest())) == []
    kept = json.loads(record.read_text())
    assert len(kept["value"]["entries"]) == len(read_sdk_image(image).entries)
    assert kept["value"]["volumes"]["from"]["system"] == "sdxlemur-sysfs.ubi"
    gone = tmp_path / "gone.ubi"  # not read again: the record serves
    assert sdk_image_drift(tree, ImageTreeReader(gone, records, sha1.hexdigest())) == []
    with pytest.raises(DfotaError, match=r"gone\.ubi"):  # another image: read
        sdk_image_drift(tree, ImageTreeReader(gone, records, "0" * 40))
    # the drift is kept by the image and the tree: a record of it serves as long as both are
    # as they were; without it, the image's tree is needed again
    drift = records.folder / DRIFT_RECORD
    assert len(list(drift.iterdir())) == 1
    shutil.rmtree(drift)
    record.write_text("{damaged")
    assert sdk_image_drift(tree, ImageTreeReader(image, records, sha1.hexdigest())) == []
    assert json.loads(record.read_text()) == kept
    other_tool = Records(records.folder, "another version")
    with pytest.raises(DfotaError, match=r"gone\.ubi"):  # another tool's record: read again
        sdk_image_drift(tree, ImageTreeReader(gone, other_tool, sha1.hexdigest()))


def test_the_sdk_image_is_read_in_a_worker_and_recorded(sample_sdk: Path, tmp_path: Path
                                                        ) -> None:
    image = sample_sdk / "ql-ol-extsdk/target/sdxlemur-sysfs.ubi"
    records, sha1 = Records(tmp_path / "state/records", "tool"), sha1_file(image)
    record = records.path(IMAGE_RECORD, image_key(sha1))
    reader = ImageTreeReader(image, records, sha1)  # starts reading at once
    tree = reader.tree()
    assert tree == read_sdk_image(image).entries
    assert json.loads(record.read_text())["key"].startswith(sha1 + " ")
    assert ImageTreeReader(tmp_path / "gone.ubi", records, sha1).tree() == tree  # the record
    bad = tmp_path / "bad.ubi"
    bad.write_bytes(bytes(4096))
    with pytest.raises(DfotaError, match=r"^" + re.escape(str(bad)) + ": "):
        ImageTreeReader(bad, records, "1" * 40).tree()  # the worker's error, one line
    # never asked for: the interpreter waits for the worker at exit, so it is recorded
    record.unlink()
    subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                    "from dfota.build.sdk_image import ImageTreeReader; "
                    "from dfota.state.store import Records; "
                    "ImageTreeReader(Path(sys.argv[1]), Records(Path(sys.argv[2]), 'tool'), "
                    "sys.argv[3])",
                    str(image), str(records.folder), sha1], check=True, cwd=PROJECT_DIR)
    assert json.loads(record.read_text())["key"].startswith(sha1 + " ")


def test_sdk_image_drift_by_path(sample_sdk: Path, tmp_path: Path) -> None:
    sdk = sample_sdk / "ql-ol-extsdk"
    rootfs = _copy(sdk / "ql-ol-rootfs", tmp_path / "ql-ol-rootfs")
    os.chown(rootfs / "etc/hostname", 1234, 1234)  # not the build user: kept as it is
    os.chmod(rootfs / "usr/bin/ql_log_collect.sh", 0o644)
    (rootfs / "etc/ql_new_app.conf").write_text("[new_app]\nenable=0\n")
    os.unlink(rootfs / "etc/os-release")
    os.symlink("../usr/lib/os-release.d", rootfs / "etc/os-release")
    (rootfs / "usr/bin/ql_uart_demo").unlink()
    (rootfs / "etc/extra.conf").write_text("extra\n")
    image = read_sdk_image(sdk / "target/sdxlemur-sysfs.ubi")
    lines = image_drift(scan_rootfs(rootfs).entries, image)
    prefix = f"{image.image}: "
    assert all(line.startswith(prefix) for line in lines)
    found = [line[len(prefix):].split(":")[0] for line in lines]
    assert found == ["etc/extra.conf", "etc/hostname", "etc/os-release", "etc/ql_new_app.conf",
                     "usr/bin/ql_log_collect.sh", "usr/bin/ql_uart_demo"]
    assert f"{prefix}etc/hostname: owner 0:0 in the image, 1234:1234 in ql-ol-rootfs" in lines
    assert (f"{prefix}usr/bin/ql_log_collect.sh: mode 0755 in the image, 0644 in ql-ol-rootfs"
            in lines)
    assert f"{prefix}usr/bin/ql_uart_demo: in the image only (a file)" in lines

    tree, warnings = take_image_metadata(scan_rootfs(rootfs).entries, image)
    assert tree["etc/hostname"].uid == 0
    assert tree["usr/bin/ql_log_collect.sh"].mode == 0o755
    assert tree["etc/ql_new_app.conf"].sha1 != image.entries["etc/ql_new_app.conf"].sha1
    assert warnings == [f"{prefix}etc/extra.conf: not in the image as a file; its mode and "
                        "owner stay the folder's"]
