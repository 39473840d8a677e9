"""Release firmware packages (note 2.1.3): their checksums, their targetfiles.zip against the
images that are flashed, and their version against the package's time. `doit import_base`
(dfota.build.import_base) archives a base version of one.

The images in `update/` are what the module runs (note 2.2.1, FAQ 6.4): `sdxlemur-boot.img`
(the kernel), `sdxlemur-sysfs.ubi` (volume `rootfs`: SYSTEM) and `NON-HLOS.ubi` (its one UBIFS:
SYSTEM/firmware). A source targetfiles.zip that differs from them makes the module refuse the
package, so it is compared with them on the host before it is archived.

Device nodes (the image's dev/) cannot live in a zip: they are listed, never compared.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from dfota import __version__
from dfota.build.sdk_image import ROOTFS_VOLUME
from dfota.build.targetfiles import (
    ABL,
    BOOT_IMAGE,
    FS_CONFIG,
    SYSTEM,
    SYSTEM_MANIFEST,
    system_tree,
)
from dfota.build.tree_compare import compare_trees, under
from dfota.core.errors import DfotaError, quoted, shown_path
from dfota.core.tree import FILE, Entry, Tree, sha1_file
from dfota.formats.bootimg import read_boot_image
from dfota.formats.ubifs import UbifsTree, read_ubifs
from dfota.formats.version import VERSION_FILE, ProjectVersion, parse_version
from dfota.formats.zipio import ZipSource
from dfota.state.store import hash_file

Say = Callable[[str], None]

MD5_LIST = "md5.txt"
CONTENTS = "contents.xml"
TARGETFILES = "upgrade/targetfiles.zip"
BOOT_IMG = "update/sdxlemur-boot.img"
ABL_IMG = "update/abl.elf"
SYSFS_UBI = "update/sdxlemur-sysfs.ubi"
MODEM_UBI = "update/NON-HLOS.ubi"
REQUIRED_IMAGES = (BOOT_IMG, SYSFS_UBI, MODEM_UBI)
FIRMWARE = "firmware"  # SYSTEM/firmware: the modem's UBIFS, mounted from NON-HLOS.ubi
# Zip times carry no time zone and a package is made some time after its build: a package time
# within a day of the version's Package Time is taken as the same.
PACKAGE_TIME_TOLERANCE = timedelta(hours=24)
_MAX_CONTENTS_XML = 4 << 20
TOOL = f"quecopen-dfota {__version__}"


# ---------------------------------------------------------------------------------------------
# md5.txt


def _md5_lines(listing: Path) -> list[tuple[str, str]]:
    """(md5, relative path) per line: `md5  path`, `md5 *path` or `path  md5`; `#` comments,
    Windows separators and line ends are accepted."""
    try:
        text = listing.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", listing) from exc
    except UnicodeDecodeError:
        raise DfotaError("is not UTF-8 text", listing) from None
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        first, _sep, rest = line.partition(" ")
        rest = rest.strip()
        if _is_md5(first) and rest:
            digest, name = first, rest.removeprefix("*")
        else:
            name, _sep, last = line.rpartition(" ")
            if not _is_md5(last) or not name.strip():
                raise DfotaError(f"line {number} is not 'md5  path': {quoted(line[:80])}", listing)
            digest, name = last, name.strip()
        name = name.replace("\\", "/").removeprefix("./")
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise DfotaError(f"line {number} names a path outside the package: {quoted(name)}",
                             listing)
        entries.append((digest.lower(), name))
    if not entries:
        raise DfotaError("lists no file", listing)
    return entries


def _is_md5(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdefABCDEF" for c in text)


def check_md5(firmware_dir: Path) -> list[str]:
    """Every file md5.txt lists has its md5; returns warnings for images it does not list.

    A name without a folder is looked for in `update/` too (some lists name bare images).
    """
    listing = firmware_dir / MD5_LIST
    if not listing.is_file():
        raise DfotaError(f"has no {MD5_LIST}; is it a release firmware package?", firmware_dir)
    covered: set[Path] = set()
    for digest, name in _md5_lines(listing):
        path = firmware_dir / name
        if not path.is_file() and "/" not in name and (firmware_dir / "update" / name).is_file():
            path = firmware_dir / "update" / name
        if not path.is_file():
            raise DfotaError(f"listed in {MD5_LIST} but missing from the package", path)
        actual = hash_file(path, "md5")
        if actual != digest:
            raise DfotaError(f"md5 {actual} does not match {digest} in {MD5_LIST}: the file "
                             "is damaged or not the one released", path)
        covered.add(path.resolve())
    warnings = []
    for rel in (*REQUIRED_IMAGES, ABL_IMG, TARGETFILES):
        path = firmware_dir / rel
        if path.is_file() and path.resolve() not in covered:
            warnings.append(f"{shown_path(path)}: not listed in {MD5_LIST}; "
                            "its integrity is unchecked")
    return warnings


# ---------------------------------------------------------------------------------------------
# The images of a package


@dataclass(frozen=True)
class FirmwareImages:
    """The flashed images of a package, read and checked."""

    folder: Path
    rootfs: UbifsTree  # volume rootfs of sdxlemur-sysfs.ubi
    modem: UbifsTree  # the UBIFS of NON-HLOS.ubi
    version: ProjectVersion

    @property
    def boot_image(self) -> Path:
        return self.folder / BOOT_IMG

    @property
    def abl(self) -> Path:
        return self.folder / ABL_IMG


def read_images(firmware_dir: Path) -> FirmwareImages:
    for rel in REQUIRED_IMAGES:
        if not (firmware_dir / rel).is_file():
            raise DfotaError("missing from the firmware package", firmware_dir / rel)
    read_boot_image(firmware_dir / BOOT_IMG)
    rootfs = read_ubifs(firmware_dir / SYSFS_UBI, ROOTFS_VOLUME)
    modem = read_ubifs(firmware_dir / MODEM_UBI)
    return FirmwareImages(firmware_dir, rootfs, modem, image_version(rootfs))


def image_version(rootfs: UbifsTree) -> ProjectVersion:
    """`etc/quectel-project-version` of a rootfs volume."""
    where = f"{rootfs.image}:{rootfs.volume}:/{VERSION_FILE}"
    entry = rootfs.entries.get(VERSION_FILE)
    if entry is None or entry.kind != FILE:
        raise DfotaError(f"volume {rootfs.volume} has no {VERSION_FILE}", rootfs.image)
    return parse_version(rootfs.read(VERSION_FILE), where)


def _zip_records_owners(src: ZipSource) -> bool:
    return SYSTEM_MANIFEST in src.members or FS_CONFIG in src.members


@dataclass(frozen=True, slots=True)
class ImageCheck:
    """A targetfiles.zip against the images: differences (each by path) and notes."""

    differences: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def consistent(self) -> bool:
        return not self.differences


def _split_firmware(tree: Mapping[str, Entry]) -> tuple[Tree, Tree]:
    """(SYSTEM without firmware/, firmware/'s content relative to it)."""
    rootfs = {p: e for p, e in tree.items() if not under(p, FIRMWARE)}
    cut = len(FIRMWARE) + 1
    modem = {p[cut:]: replace(e, path=p[cut:]) for p, e in tree.items()
             if p.startswith(FIRMWARE + "/")}
    return rootfs, modem


def check_targetfiles_against_images(firmware_dir: Path,
                                     images: FirmwareImages | None = None) -> ImageCheck:
    """`upgrade/targetfiles.zip` against `update/`: boot.img, abl.elf, SYSTEM/ (owners too when
    the zip records them in META/) and SYSTEM/firmware/."""
    images = images or read_images(firmware_dir)
    zip_path = firmware_dir / TARGETFILES
    differences: list[str] = []
    notes: list[str] = []
    with ZipSource(zip_path) as src:
        for member, rel in ((BOOT_IMAGE, BOOT_IMG), (ABL, ABL_IMG)):
            image = firmware_dir / rel
            if member not in src.members or src.members[member].kind != FILE:
                differences.append(f"{member}: missing from targetfiles.zip")
            elif not image.is_file():
                notes.append(f"{member} not checked: the package has no {rel}")
            elif src.sha1(member) != sha1_file(image):
                differences.append(f"{member}: content differs from {rel}")
        owners = _zip_records_owners(src)
        zip_rootfs, zip_modem = _split_firmware(system_tree(src))
    img_rootfs = {p: e for p, e in images.rootfs.entries.items() if not under(p, FIRMWARE)}
    differences += compare_trees(zip_rootfs, img_rootfs, prefix=f"{SYSTEM}/", owners=owners,
                                 names=("targetfiles.zip", f"{SYSFS_UBI} ({ROOTFS_VOLUME})"))
    differences += compare_trees(zip_modem, images.modem.entries,
                                 prefix=f"{SYSTEM}/{FIRMWARE}/", owners=owners,
                                 names=("targetfiles.zip", MODEM_UBI))
    if not owners:
        others = sum(1 for e in [*img_rootfs.values(), *images.modem.entries.values()]
                     if (e.uid, e.gid) != (0, 0))
        notes.append("owners not compared: the zip records none (no META/filesystem_config.txt"
                     f"); {others} entr{'y' if others == 1 else 'ies'} of the images are not "
                     "owned by root")
    if images.rootfs.special:
        notes.append(f"{len(images.rootfs.special)} device node(s) of {SYSFS_UBI} left out of "
                     "the comparison (a zip cannot hold them): "
                     + ", ".join(shown_path(p) for p in images.rootfs.device_nodes[:8])
                     + (", ..." if len(images.rootfs.special) > 8 else ""))
    return ImageCheck(tuple(differences), tuple(notes))


# ---------------------------------------------------------------------------------------------
# Package time


def _zip_time(zip_path: Path) -> datetime | None:
    """The newest entry time in a zip (local time of the machine that made it)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            times = [datetime(*i.date_time) for i in zf.infolist() if i.date_time[0] > 1980]
    except (OSError, zipfile.BadZipFile, ValueError):
        return None
    return max(times) if times else None


def _contents_build_id(path: Path) -> str | None:
    """contents.xml's build id of the `apps` build (the Linux side), if it has one."""
    try:
        if path.stat().st_size > _MAX_CONTENTS_XML:
            return None
        root = ET.fromstring(path.read_bytes())
    except (OSError, ET.ParseError):
        return None
    for build in root.iter("build"):
        if (build.findtext("name") or "").strip() == "apps":
            return (build.findtext("build_id") or "").strip() or None
    return None


def package_time_warnings(firmware_dir: Path, version: ProjectVersion) -> list[str]:
    """The images' version against what the package shows (note 2.2.1 steps 1 and 2).

    The package's generation time is the newest entry time of upgrade/targetfiles.zip (what a
    file manager shows for the files it unpacks; it survives copying, unlike the zip file's own
    mtime); without a targetfiles.zip, the newest mtime of the images in update/. contents.xml's
    `apps` build id, when there is one, is compared with the Project Rev.
    """
    warnings = []
    zip_path = firmware_dir / TARGETFILES
    when: datetime | None = None
    shown_from = ""
    if zip_path.is_file():
        when, shown_from = _zip_time(zip_path), f"{TARGETFILES} (newest entry)"
    else:
        stamps = [(firmware_dir / rel).stat().st_mtime for rel in REQUIRED_IMAGES
                  if (firmware_dir / rel).is_file()]
        if stamps:
            when, shown_from = datetime.fromtimestamp(max(stamps)), "the images in update/"
    stated = f"{version.package_time:%Y-%m-%d,%H:%M}"
    if when is None:
        warnings.append(f"{shown_path(firmware_dir)}: shows no generation time to check "
                        "Package Time "
                        f"{stated} against")
    elif abs(when - version.package_time) > PACKAGE_TIME_TOLERANCE:
        warnings.append(f"{shown_path(firmware_dir)}: {shown_from} dates from "
                        f"{when:%Y-%m-%d,%H:%M}, but "
                        f"the images' Package Time is {stated}: is this the package of the "
                        "firmware the module runs? (note 2.2.1)")
    build_id = _contents_build_id(firmware_dir / CONTENTS)
    if build_id is not None and build_id != version.project_rev:
        warnings.append(f"{shown_path(firmware_dir / CONTENTS)}: apps build id "
                        f"{shown_path(build_id)} is not the "
                        f"images' Project Rev {version.project_rev}")
    return warnings
