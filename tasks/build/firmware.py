"""Release firmware packages (note 2.1.3): their checksums, their targetfiles.zip against the
images that are flashed, a base targetfiles.zip built from those images, and their version.

The images in `update/` are what the module runs (note 2.2.1, FAQ 6.4): `sdxlemur-boot.img`
(the kernel), `sdxlemur-sysfs.ubi` (volume `rootfs`: SYSTEM) and `NON-HLOS.ubi` (its one UBIFS:
SYSTEM/firmware). A source targetfiles.zip that differs from them makes the module refuse the
package, so it is compared with them on the host before it is archived.

Device nodes (the image's dev/) cannot live in a zip: they are listed, never compared.
"""

from __future__ import annotations

import stat
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from dfota import __version__
from dfota.build.archive import Archive
from dfota.build.sdk_image import ROOTFS_VOLUME, ImageTreeReader
from dfota.build.targetfiles import (
    ABL,
    BOOT_IMAGE,
    FS_CONFIG,
    KEPT_FROM_SOURCE,
    SYSTEM,
    SYSTEM_MANIFEST,
    UPDATER,
    system_meta_items,
    system_tree,
)
from dfota.core.errors import DfotaError, quoted, shown_path
from dfota.core.tree import DIR, FILE, SYMLINK, Entry, Tree, sha1_file
from dfota.formats.bootimg import read_boot_image
from dfota.formats.elf import read_abl_elf
from dfota.formats.ubifs import UbifsTree, read_ubifs
from dfota.formats.version import VERSION_FILE, ProjectVersion, parse_version
from dfota.formats.zipio import (
    ZipItem,
    ZipSource,
    dir_item,
    link_item,
    member_item,
    path_item,
    write_zip,
)
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
TEMPLATE_FOLDERS = ("OTA", "RADIO", "RECOVERY")
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
# Comparing trees


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind_name(kind: str) -> str:
    return {FILE: "a file", DIR: "a directory", SYMLINK: "a symlink"}.get(kind, kind)


def compare_trees(expected: Mapping[str, Entry], actual: Mapping[str, Entry], *,
                  names: tuple[str, str] = ("targetfiles.zip", "the image"), prefix: str = "",
                  owners: bool = True) -> list[str]:
    """One line per difference, by path (shown with `prefix`): entries on one side only,
    type, content (sha1), mode, owner (unless `owners` is False) and link target.
    A name that is not valid UTF-8 is reported as such (no targetfiles.zip can carry it)."""
    a_name, b_name = names
    lines: list[str] = []
    for path in sorted(set(expected) | set(actual), key=lambda p: p.encode("utf-8",
                                                                            "surrogateescape")):
        shown = shown_path(prefix + path)
        a, b = expected.get(path), actual.get(path)
        if not _is_utf8(path):
            where = b_name if b is not None else a_name
            lines.append(f"{shown}: name is not valid UTF-8 (in {where})")
            continue
        if a is None and b is not None:
            lines.append(f"{shown}: in {b_name} only ({_kind_name(b.kind)})")
            continue
        if b is None and a is not None:
            lines.append(f"{shown}: in {a_name} only ({_kind_name(a.kind)})")
            continue
        assert a is not None and b is not None
        if a.kind != b.kind:
            lines.append(f"{shown}: {_kind_name(a.kind)} in {a_name}, {_kind_name(b.kind)} in "
                         f"{b_name}")
            continue
        if a.kind == FILE and a.sha1 != b.sha1:
            lines.append(f"{shown}: content differs ({a.size} bytes, sha1 {a.sha1[:12]} in "
                         f"{a_name}; {b.size} bytes, sha1 {b.sha1[:12]} in {b_name})")
        if a.kind == SYMLINK and a.link != b.link:
            lines.append(f"{shown}: link target {quoted(a.link)} in {a_name}, "
                         f"{quoted(b.link)} in {b_name}")
        if a.kind != SYMLINK and a.mode != b.mode:
            lines.append(f"{shown}: mode {a.mode:04o} in {a_name}, {b.mode:04o} in {b_name}")
        if owners and (a.uid, a.gid) != (b.uid, b.gid):
            lines.append(f"{shown}: owner {a.uid}:{a.gid} in {a_name}, {b.uid}:{b.gid} in "
                         f"{b_name}")
    return lines


def _under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder + "/")


def _split_firmware(tree: Mapping[str, Entry]) -> tuple[Tree, Tree]:
    """(SYSTEM without firmware/, firmware/'s content relative to it)."""
    rootfs = {p: e for p, e in tree.items() if not _under(p, FIRMWARE)}
    cut = len(FIRMWARE) + 1
    modem = {p[cut:]: replace(e, path=p[cut:]) for p, e in tree.items()
             if p.startswith(FIRMWARE + "/")}
    return rootfs, modem


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
    img_rootfs = {p: e for p, e in images.rootfs.entries.items() if not _under(p, FIRMWARE)}
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


# ---------------------------------------------------------------------------------------------
# A base targetfiles.zip from the images


def _refuse_non_utf8(tree: UbifsTree) -> None:
    for entry in tree.entries.values():
        if not _is_utf8(entry.path):
            raise DfotaError(f"volume {tree.volume}: {shown_path(entry.path)}: name is not "
                             "valid UTF-8; a targetfiles.zip cannot carry it (rename it)",
                             tree.image)
        if entry.kind == SYMLINK and not _is_utf8(entry.link):
            raise DfotaError(f"volume {tree.volume}: {shown_path(entry.path)}: link target is "
                             "not valid UTF-8; a targetfiles.zip cannot carry it", tree.image)


def _missing_parents(names: Iterable[str]) -> list[ZipItem]:
    present = set(names)
    missing: set[str] = set()
    for name in present:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in present:
                missing.add(parent)
    return [dir_item(p, 0o755) for p in sorted(missing)]


def _template_items(src: ZipSource) -> tuple[list[ZipItem], dict[str, int]]:
    """What a base takes from the template: everything but SYSTEM/, boot.img, abl.elf and the
    META sidecars; with the count of files and links per top-level folder."""
    taken = {BOOT_IMAGE, ABL, SYSTEM_MANIFEST, FS_CONFIG}
    items: list[ZipItem] = []
    counts: dict[str, int] = {}
    for name, member in src.members.items():
        if name in taken or _under(name, SYSTEM):
            continue
        link = src.link_target(name) if member.kind == SYMLINK else ""
        items.append(member_item(name, src.path, member.info.filename, member.kind,
                                 member.mode, link))
        if member.kind != DIR:
            top = name.split("/", 1)[0]
            counts[top] = counts.get(top, 0) + 1
    return items, counts


def _image_items(tree: UbifsTree, entries: Mapping[str, Entry], prefix: str, store: Path,
                 stored: dict[str, Path]) -> list[ZipItem]:
    """Zip items for `entries` of a volume, under `prefix`; file contents go to `store` (one
    file per distinct content, streamed from the image)."""
    items = []
    for path, entry in entries.items():
        name = f"{prefix}/{path}"
        if entry.kind == DIR:
            items.append(dir_item(name, entry.mode))
        elif entry.kind == SYMLINK:
            items.append(link_item(name, entry.link))
        else:
            if entry.sha1 not in stored:
                dest = store / entry.sha1
                try:
                    with open(dest, "wb") as out:
                        for chunk in tree.chunks(path):
                            out.write(chunk)
                except OSError as exc:
                    raise DfotaError(f"cannot write file ({exc.strerror})", dest) from exc
                stored[entry.sha1] = dest
            items.append(path_item(name, stored[entry.sha1], entry.mode))
    return items


def build_base_from_images(firmware_dir: Path, template: Path, dest: Path,  # noqa: C901
                           images: FirmwareImages | None = None) -> list[str]:
    """Write `dest`, the base targetfiles.zip of the firmware in `update/` (note 2.2.1,
    approach 2), and say where each part came from.

    SYSTEM/ is the rootfs volume with modes and owners from its inodes (owners go to the META
    sidecars), SYSTEM/firmware/ the UBIFS of NON-HLOS.ubi, boot.img and abl.elf the images;
    OTA/, RADIO/, RECOVERY/ (and any other folder the images cannot give) come from `template`,
    a targetfiles.zip of the same product.
    """
    images = images or read_images(firmware_dir)
    if not images.abl.is_file():
        raise DfotaError("missing from the firmware package", images.abl)
    read_abl_elf(images.abl)
    for tree in (images.rootfs, images.modem):
        _refuse_non_utf8(tree)
    if FIRMWARE in images.rootfs.entries and images.rootfs.entries[FIRMWARE].kind != DIR:
        raise DfotaError(f"volume {ROOTFS_VOLUME}: {FIRMWARE} is not a directory",
                         images.rootfs.image)

    rootfs = {p: e for p, e in images.rootfs.entries.items() if not p.startswith(FIRMWARE + "/")}
    system: Tree = dict(rootfs)
    for path, entry in images.modem.entries.items():
        system[f"{FIRMWARE}/{path}"] = replace(entry, path=f"{FIRMWARE}/{path}")
    system.setdefault(FIRMWARE, Entry(FIRMWARE, DIR, 0o755))

    parts: list[str] = []
    with ZipSource(template) as src:
        if UPDATER not in src.members or src.members[UPDATER].kind != FILE:
            raise DfotaError(f"has no {UPDATER}: not a targetfiles.zip to take OTA/, RADIO/ "
                             "and RECOVERY/ from", template)
        template_items, counts = _template_items(src)
        system_mode = src.members[SYSTEM].mode if SYSTEM in src.members else 0o755
        boot_mode = src.members[BOOT_IMAGE].mode if BOOT_IMAGE in src.members else 0o644
        abl_mode = src.members[ABL].mode if ABL in src.members else 0o644
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
            stored: dict[str, Path] = {}
            items = [
                *template_items,
                path_item(BOOT_IMAGE, images.boot_image, boot_mode),
                path_item(ABL, images.abl, abl_mode),
                dir_item(SYSTEM, system_mode),
                *_image_items(images.rootfs, rootfs, SYSTEM, Path(tmp), stored),
                *_image_items(images.modem, images.modem.entries, f"{SYSTEM}/{FIRMWARE}",
                              Path(tmp), stored),
                *system_meta_items(system),
            ]
            if FIRMWARE not in rootfs:
                items.append(dir_item(f"{SYSTEM}/{FIRMWARE}", 0o755))
            items += _missing_parents(i.name for i in items)
            write_zip(dest, items)

    parts.append(f"{BOOT_IMAGE}: {BOOT_IMG}")
    parts.append(f"{ABL}: {ABL_IMG}")
    parts.append(f"{SYSTEM}/ ({len(rootfs)} entries, {FIRMWARE}/ apart): volume {ROOTFS_VOLUME} "
                 f"of {SYSFS_UBI}, modes and owners from its inodes")
    parts.append(f"{SYSTEM}/{FIRMWARE}/ ({len(images.modem.entries)} entries): {MODEM_UBI} "
                 f"(volume {images.modem.volume})")
    hidden = len(images.rootfs.entries) - len(rootfs)
    if hidden:
        parts.append(f"{FIRMWARE}/ of volume {ROOTFS_VOLUME}: {hidden} entries left out (the "
                     f"modem's file system is mounted over them)")
    if images.rootfs.special:
        parts.append(f"{SYSTEM}/dev/: {len(images.rootfs.special)} device node(s) of the image "
                     "left out (a zip cannot hold them; the module's /dev is made at boot)")
    for top in sorted(counts):
        parts.append(f"{top}/ ({counts[top]} files and links): template {template}")
    for top in TEMPLATE_FOLDERS:
        if top not in counts:
            parts.append(f"{top}/: not in the template {template}; the base has none")
    parts.append(f"{SYSTEM_MANIFEST}, {FS_CONFIG}: written from the images' SYSTEM tree")
    return parts



# ---------------------------------------------------------------------------------------------
# doit import_base


def import_base(firmware_dir: Path, archive: Archive, *, template: Path | None = None,  # noqa: C901, PLR0913
                from_images: bool = False, say: Say = print,
                work_dir: Path | None = None) -> str:
    """Check a release firmware package and archive its base version; returns the key.

    With `upgrade/targetfiles.zip` (and not `from_images`): the zip must match the images and
    is archived unchanged. Otherwise the base is built from the images, with OTA/, RADIO/ and
    RECOVERY/ from `template` (default: the package's own targetfiles.zip, if any), staged in
    `work_dir` (default: the system's temporary folder).
    """
    if not firmware_dir.is_dir():
        raise DfotaError("firmware package folder not found", firmware_dir)
    for warning in check_md5(firmware_dir):
        say(f"warning: {warning}")
    images = read_images(firmware_dir)
    version = images.version
    for warning in package_time_warnings(firmware_dir, version):
        say(f"warning: {warning}")
    zip_path = firmware_dir / TARGETFILES
    manifest: dict[str, object] = {
        "origin": "firmware", "imported_from": firmware_dir.name, "version": version.to_json(),
        "source": None, "tool": TOOL,
        "images": {rel: sha1_file(firmware_dir / rel) for rel in REQUIRED_IMAGES},
    }
    existing = archive.get(version.key)
    if zip_path.is_file() and not from_images:
        check = check_targetfiles_against_images(firmware_dir, images)
        for note in check.notes:
            say(f"note: {note}")
        if check.differences:
            for line in check.differences:
                say(f"  {line}")
            raise DfotaError(f"does not match the firmware images in update/: "
                             f"{len(check.differences)} difference(s), listed above; the images "
                             "are what the module runs: build the base from them instead "
                             "(--from-images, note 2.2.1)", zip_path)
        archived = archive.add(version.key, zip_path, {**manifest, "checked_against_images":
                                                       True, "built_from_images": None})
    else:
        template = template or (zip_path if zip_path.is_file() else None)
        if template is None:
            raise DfotaError(f"has no {TARGETFILES}: pass a targetfiles.zip of the same product "
                             "as the template for OTA/, RADIO/ and RECOVERY/ (note 2.2.1, "
                             "approach 2)", firmware_dir)
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="import_base.", dir=work_dir) as tmp:
            built = Path(tmp) / "targetfiles.zip"
            parts = build_base_from_images(firmware_dir, template, built, images)
            for line in parts:
                say(f"  {line}")
            archived = archive.add(version.key, built, {
                **manifest, "checked_against_images": False, "built_from_images": parts,
                "template": str(template)})
    say(f"import_base: {version.key} "
        + ("already archived, same content" if existing is not None else "archived")
        + f" ({archived.zip_path})")
    return version.key


# ---------------------------------------------------------------------------------------------
# The SDK's own sysfs image against its rootfs folder


def read_sdk_image(sysfs_ubi: Path) -> UbifsTree:
    """Volume rootfs of the SDK's `target/sdxlemur-sysfs.ubi`."""
    return read_ubifs(sysfs_ubi, ROOTFS_VOLUME)


def _comparable(tree: Mapping[str, Entry]) -> Tree:
    """A rootfs without the folders the target takes from the source (firmware/, dev/)."""
    return {p: e for p, e in tree.items() if not any(_under(p, k) for k in KEPT_FROM_SOURCE)}


def image_drift(rootfs_tree: Mapping[str, Entry], image: UbifsTree) -> list[str]:
    """Warnings, by path, where the SDK's rootfs folder (as scanned: the build user's files
    recorded as root) differs from the UBI image the module will run."""
    return _drift(rootfs_tree, image.entries, image.image)


def _drift(rootfs_tree: Mapping[str, Entry], image_tree: Mapping[str, Entry],
           image: Path) -> list[str]:
    lines = compare_trees(_comparable(image_tree), _comparable(rootfs_tree),
                          names=("the image", "ql-ol-rootfs"))
    return [f"{shown_path(image)}: {line}" for line in lines]


def sdk_image_drift(rootfs_tree: Mapping[str, Entry], image: ImageTreeReader) -> list[str]:
    """`image_drift` against the SDK's sysfs image, its tree as `image` gives it (from its
    record, or read: seconds of decompressing)."""
    return _drift(rootfs_tree, image.tree(), image.sysfs_ubi)


def take_image_metadata(rootfs_tree: Mapping[str, Entry],
                        image: UbifsTree) -> tuple[Tree, list[str]]:
    """The rootfs tree with modes and owners of the image's same-type entries; warnings for
    entries the image does not have (they keep the folder's metadata)."""
    out: Tree = {}
    warnings = []
    for path, entry in rootfs_tree.items():
        other = image.entries.get(path)
        if other is None or other.kind != entry.kind:
            warnings.append(f"{shown_path(image.image)}: {shown_path(path)}: not in the image as "
                            f"{_kind_name(entry.kind)}; its mode and owner stay the folder's")
            out[path] = entry
        else:
            mode = entry.mode if entry.kind == SYMLINK else other.mode
            out[path] = replace(entry, mode=stat.S_IMODE(mode), uid=other.uid, gid=other.gid)
    return out, warnings

