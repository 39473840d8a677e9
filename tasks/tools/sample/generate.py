"""Writing the sample (`generate_sample(root)`): the base version's release firmware package
(`firmware/`: update/ images, upgrade/targetfiles.zip, contents.xml, md5.txt) and the next
version's SDK output (`ql-ol-extsdk/`: target/ images and the rootfs), built aside and renamed
into place, with the stamp that says which generator made them."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from dfota.core.errors import DfotaError
from dfota.formats import bootimg, elf
from dfota.tools.sample.images import abl_image, base_targetfiles_tree, boot_image
from dfota.tools.sample.nodes import fix_modes_and_times, write_tree
from dfota.tools.sample.rootfs import base_rootfs, next_rootfs
from dfota.tools.sample.ubi_images import modem_ubi, sysfs_ubi
from dfota.tools.sample.vendor_tools import zip_tree
from dfota.tools.sample.versions import BASE, NEXT

FIRMWARE_DIR = "firmware"
SDK_DIR = "ql-ol-extsdk"
ROOTFS_DIR = "ql-ol-rootfs"
STAMP_NAME = ".sample-stamp"
_BUILD_PREFIX = ".sample-build."
UPDATE_IMAGES = ("NON-HLOS.ubi", "abl.elf", "sdxlemur-boot.img", "sdxlemur-sysfs.ubi")


def _contents_xml() -> str:
    def download(name: str, folder: str, extra: str = "") -> str:
        return (f"        <download_file{extra} minimized=\"true\">\n"
                f"          <file_name>{name}</file_name>\n"
                f"          <file_path>{folder}/</file_path>\n"
                "        </download_file>\n")

    def build(name: str, build_id: str, files: str) -> str:
        return ("    <build>\n"
                f"      <name>{name}</name>\n      <role>{name}</role>\n"
                "      <chipset>sdxlemur</chipset>\n"
                f"      <build_id>{build_id}</build_id>\n"
                "      <windows_root_path cmm_root_path_var=\"ROOT\">.\\</windows_root_path>\n"
                "      <linux_root_path cmm_root_path_var=\"ROOT\">./</linux_root_path>\n"
                f"{files}    </build>\n")

    apps = (download("sdxlemur-boot.img", "update", ' fastboot_complete="boot"')
            + download("sdxlemur-sysfs.ubi", "update", ' fastboot_complete="system"')
            + download("abl.elf", "update", ' fastboot_complete="abl"'))
    return (
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<contents>\n"
        "  <product_info>\n    <product_name>SDX65.LE.1.0-RG520NNADA</product_name>\n"
        "    <hlos_type cmm_var=\"HLOS_TYPE\">LE</hlos_type>\n"
        "    <chipid cmm_var=\"CHIPID\">SDXLEMUR</chipid>\n  </product_info>\n"
        "  <builds_flat>\n"
        + build("apps", BASE.project_rev, apps)
        + build("modem", "MPSS.DE.2.0-01234-SDXLEMUR_GEN_PACK-1",
                download("NON-HLOS.ubi", "update", ' fastboot_complete="modem"'))
        + build("common", BASE.project_rev,
                "        <file_ref>\n          <file_name>targetfiles.zip</file_name>\n"
                "          <file_path>upgrade/</file_path>\n        </file_ref>\n")
        + "  </builds_flat>\n</contents>\n"
    )


def _md5_list(firmware: Path) -> str:
    lines = []
    for sub in ("update", "upgrade"):
        for path in (firmware / sub).rglob("*"):
            if path.is_file():
                digest = hashlib.md5(path.read_bytes()).hexdigest()
                lines.append((path.relative_to(firmware).as_posix(), digest))
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(lines,
                                                                     key=lambda x: x[0].encode()))


def _write_firmware(firmware: Path, work: Path) -> None:
    epoch = BASE.epoch
    update, upgrade = firmware / "update", firmware / "upgrade"
    update.mkdir(parents=True)
    upgrade.mkdir()
    (update / "sdxlemur-boot.img").write_bytes(boot_image(False))
    (update / "abl.elf").write_bytes(abl_image(False))
    sysfs_ubi(base_rootfs(), work, update / "sdxlemur-sysfs.ubi", "base", epoch)
    modem_ubi(work, update / "NON-HLOS.ubi", epoch)
    write_tree(base_targetfiles_tree(), work / "targetfiles", epoch)
    zip_tree(work / "targetfiles", upgrade / "targetfiles.zip")
    (firmware / "contents.xml").write_text(_contents_xml())
    (firmware / "md5.txt").write_text(_md5_list(firmware))
    fix_modes_and_times(firmware, epoch)


def _write_sdk(sdk: Path, work: Path) -> None:
    epoch = NEXT.epoch
    target = sdk / "target"
    target.mkdir(parents=True)
    (target / "sdxlemur-boot.img").write_bytes(boot_image(True))
    (target / "abl.elf").write_bytes(abl_image(True))
    sysfs_ubi(next_rootfs(), work, target / "sdxlemur-sysfs.ubi", "next", epoch)
    fix_modes_and_times(target, epoch)
    write_tree(next_rootfs(), sdk / ROOTFS_DIR, epoch)
    os.chmod(sdk, 0o755)


def sample_stamp() -> str:
    """A hash of the generator's source (this package and the writers it uses)."""
    digest = hashlib.sha256()
    package = sorted(Path(__file__).parent.glob("*.py"))
    for path in [*package, Path(bootimg.__file__), Path(elf.__file__)]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def sample_is_current(root: Path) -> bool:
    """Whether `root` holds a whole sample made by this very generator."""
    root = Path(root)
    try:
        stamp = (root / SDK_DIR / STAMP_NAME).read_text().strip()
    except OSError:
        return False
    return (stamp == sample_stamp()
            and (root / FIRMWARE_DIR / "upgrade" / "targetfiles.zip").is_file()
            and (root / SDK_DIR / ROOTFS_DIR).is_dir())


def generate_sample(root: Path) -> None:
    """Write the sample under `root` (firmware/ and ql-ol-extsdk/), replacing any old one.

    Everything is built in a temporary folder inside `root` and renamed into place at the end;
    the stamp arrives last, so an interrupted run never leaves a sample that looks current.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(_BUILD_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        build = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=root))
    except OSError as exc:
        raise DfotaError(f"cannot write the sample here ({exc.strerror})", root) from exc
    try:
        work = build / "work"
        work.mkdir()
        _write_firmware(build / FIRMWARE_DIR, work)
        _write_sdk(build / SDK_DIR, work)
        stamp = build / SDK_DIR / STAMP_NAME
        stamp.write_text(sample_stamp() + "\n")
        os.chmod(stamp, 0o644)
        old = build / "old"
        old.mkdir()
        for name in (SDK_DIR, FIRMWARE_DIR):  # the stamp goes first...
            if os.path.lexists(root / name):
                os.replace(root / name, old / name)
        for name in (FIRMWARE_DIR, SDK_DIR):  # ...and comes back last
            os.replace(build / name, root / name)
    except OSError as exc:
        raise DfotaError(f"cannot write the sample ({exc.strerror})",
                         exc.filename or root) from exc
    finally:
        shutil.rmtree(build, ignore_errors=True)
