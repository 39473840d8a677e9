"""`doit import_base`: a release firmware package (dfota.build.firmware) checked and its base
version archived: its own targetfiles.zip when it matches the images, else a base
targetfiles.zip built from the images (note 2.2.1, approach 2) with OTA/, RADIO/ and RECOVERY/
from a template."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from dfota.build.archive import Archive
from dfota.build.firmware import (
    ABL_IMG,
    BOOT_IMG,
    FIRMWARE,
    MODEM_UBI,
    REQUIRED_IMAGES,
    SYSFS_UBI,
    TARGETFILES,
    TOOL,
    FirmwareImages,
    Say,
    check_md5,
    check_targetfiles_against_images,
    package_time_warnings,
    read_images,
)
from dfota.build.sdk_image import ROOTFS_VOLUME
from dfota.build.targetfiles import (
    ABL,
    BOOT_IMAGE,
    FS_CONFIG,
    SYSTEM,
    SYSTEM_MANIFEST,
    UPDATER,
    missing_parents,
    system_meta_items,
)
from dfota.build.tree_compare import is_utf8, under
from dfota.core.errors import DfotaError, shown_path
from dfota.core.tree import DIR, FILE, SYMLINK, Entry, Tree, sha1_file
from dfota.formats.elf import read_abl_elf
from dfota.formats.ubifs import UbifsTree
from dfota.formats.zipio import ZipItem, ZipSource, dir_item, link_item, path_item, write_zip

if TYPE_CHECKING:
    from typing_extensions import Unpack

TEMPLATE_FOLDERS = ("OTA", "RADIO", "RECOVERY")


# ---------------------------------------------------------------------------------------------
# A base targetfiles.zip from the images


def _refuse_non_utf8(tree: UbifsTree) -> None:
    for entry in tree.entries.values():
        if not is_utf8(entry.path):
            raise DfotaError(f"volume {tree.volume}: {shown_path(entry.path)}: name is not "
                             "valid UTF-8; a targetfiles.zip cannot carry it (rename it)",
                             tree.image)
        if entry.kind == SYMLINK and not is_utf8(entry.link):
            raise DfotaError(f"volume {tree.volume}: {shown_path(entry.path)}: link target is "
                             "not valid UTF-8; a targetfiles.zip cannot carry it", tree.image)


@dataclass(frozen=True, slots=True)
class _Template:
    """What a base takes from the template: everything but SYSTEM/, boot.img, abl.elf and the
    META sidecars, the count of files and links per top-level folder, and the modes of
    SYSTEM/, boot.img and abl.elf."""

    items: tuple[ZipItem, ...]
    counts: Mapping[str, int]
    system_mode: int
    boot_mode: int
    abl_mode: int


def _read_template(template: Path) -> _Template:
    with ZipSource(template) as src:
        if UPDATER not in src.members or src.members[UPDATER].kind != FILE:
            raise DfotaError(f"has no {UPDATER}: not a targetfiles.zip to take OTA/, RADIO/ "
                             "and RECOVERY/ from", template)
        taken = {BOOT_IMAGE, ABL, SYSTEM_MANIFEST, FS_CONFIG}
        items: list[ZipItem] = []
        counts: dict[str, int] = {}
        for name, member in src.members.items():
            if name in taken or under(name, SYSTEM):
                continue
            items.append(src.item(name))
            if member.kind != DIR:
                top = name.split("/", 1)[0]
                counts[top] = counts.get(top, 0) + 1

        def mode(name: str, default: int) -> int:
            return src.members[name].mode if name in src.members else default
        return _Template(tuple(items), counts, mode(SYSTEM, 0o755), mode(BOOT_IMAGE, 0o644),
                         mode(ABL, 0o644))


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


def _checked_images(images: FirmwareImages) -> Tree:
    """The images fit for a base: abl.elf there, every name UTF-8, firmware/ a folder. The
    rootfs volume without what firmware/ holds (the modem's UBIFS is mounted over it)."""
    if not images.abl.is_file():
        raise DfotaError("missing from the firmware package", images.abl)
    read_abl_elf(images.abl)
    for tree in (images.rootfs, images.modem):
        _refuse_non_utf8(tree)
    if FIRMWARE in images.rootfs.entries and images.rootfs.entries[FIRMWARE].kind != DIR:
        raise DfotaError(f"volume {ROOTFS_VOLUME}: {FIRMWARE} is not a directory",
                         images.rootfs.image)
    return {p: e for p, e in images.rootfs.entries.items() if not p.startswith(FIRMWARE + "/")}


def _system_tree(rootfs: Tree, modem: UbifsTree) -> Tree:
    """SYSTEM as the module mounts it: the rootfs, the modem's UBIFS under firmware/."""
    system: Tree = dict(rootfs)
    for path, entry in modem.entries.items():
        system[f"{FIRMWARE}/{path}"] = replace(entry, path=f"{FIRMWARE}/{path}")
    system.setdefault(FIRMWARE, Entry(FIRMWARE, DIR, 0o755))
    return system


def _write_base(images: FirmwareImages, rootfs: Tree, template: _Template, dest: Path) -> None:
    """The base zip: the template's part, the images', the META sidecars of SYSTEM."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as tmp:
        stored: dict[str, Path] = {}
        items = [
            *template.items,
            path_item(BOOT_IMAGE, images.boot_image, template.boot_mode),
            path_item(ABL, images.abl, template.abl_mode),
            dir_item(SYSTEM, template.system_mode),
            *_image_items(images.rootfs, rootfs, SYSTEM, Path(tmp), stored),
            *_image_items(images.modem, images.modem.entries, f"{SYSTEM}/{FIRMWARE}",
                          Path(tmp), stored),
            *system_meta_items(_system_tree(rootfs, images.modem)),
        ]
        if FIRMWARE not in rootfs:
            items.append(dir_item(f"{SYSTEM}/{FIRMWARE}", 0o755))
        items += missing_parents(items)
        write_zip(dest, items)


def _base_parts(images: FirmwareImages, rootfs: Tree, counts: Mapping[str, int],
                template: Path) -> list[str]:
    """Where each part of the base came from, one line each."""
    parts = [f"{BOOT_IMAGE}: {BOOT_IMG}", f"{ABL}: {ABL_IMG}",
             f"{SYSTEM}/ ({len(rootfs)} entries, {FIRMWARE}/ apart): volume {ROOTFS_VOLUME} "
             f"of {SYSFS_UBI}, modes and owners from its inodes",
             f"{SYSTEM}/{FIRMWARE}/ ({len(images.modem.entries)} entries): {MODEM_UBI} "
             f"(volume {images.modem.volume})"]
    hidden = len(images.rootfs.entries) - len(rootfs)
    if hidden:
        parts.append(f"{FIRMWARE}/ of volume {ROOTFS_VOLUME}: {hidden} entries left out (the "
                     f"modem's file system is mounted over them)")
    if images.rootfs.special:
        parts.append(f"{SYSTEM}/dev/: {len(images.rootfs.special)} device node(s) of the image "
                     "left out (a zip cannot hold them; the module's /dev is made at boot)")
    parts += [f"{top}/ ({counts[top]} files and links): template {template}"
              for top in sorted(counts)]
    parts += [f"{top}/: not in the template {template}; the base has none"
              for top in TEMPLATE_FOLDERS if top not in counts]
    parts.append(f"{SYSTEM_MANIFEST}, {FS_CONFIG}: written from the images' SYSTEM tree")
    return parts


def build_base_from_images(firmware_dir: Path, template: Path, dest: Path,
                           images: FirmwareImages | None = None) -> list[str]:
    """Write `dest`, the base targetfiles.zip of the firmware in `update/` (note 2.2.1,
    approach 2), and say where each part came from.

    SYSTEM/ is the rootfs volume with modes and owners from its inodes (owners go to the META
    sidecars), SYSTEM/firmware/ the UBIFS of NON-HLOS.ubi, boot.img and abl.elf the images;
    OTA/, RADIO/, RECOVERY/ (and any other folder the images cannot give) come from `template`,
    a targetfiles.zip of the same product.
    """
    images = images or read_images(firmware_dir)
    rootfs = _checked_images(images)
    taken = _read_template(template)
    _write_base(images, rootfs, taken, dest)
    return _base_parts(images, rootfs, taken.counts, template)


# ---------------------------------------------------------------------------------------------
# doit import_base


class BaseImport(TypedDict, total=False):
    """How `import_base` takes the base (each optional)."""

    template: Path | None  # the targetfiles.zip to take OTA/, RADIO/ and RECOVERY/ from
    from_images: bool  # built from the images even when the package has a targetfiles.zip
    say: Say  # where the warnings, notes and the outcome go (default: print)
    work_dir: Path | None  # where a built base is staged (default: the temporary folder)


def import_base(firmware_dir: Path, archive: Archive, **how: Unpack[BaseImport]) -> str:
    """Check a release firmware package and archive its base version; returns the key.

    With `upgrade/targetfiles.zip` (and not `from_images`): the zip must match the images and
    is archived unchanged. Otherwise the base is built from the images, with OTA/, RADIO/ and
    RECOVERY/ from `template` (default: the package's own targetfiles.zip, if any), staged in
    `work_dir` (default: the system's temporary folder).
    """
    say = how.get("say", print)
    images, manifest = _checked_package(firmware_dir, say)
    key = images.version.key
    existing = archive.get(key)
    zip_path = firmware_dir / TARGETFILES
    if zip_path.is_file() and not how.get("from_images", False):
        _check_package_zip(firmware_dir, images, say)
        archived = archive.add(key, zip_path, {**manifest, "checked_against_images": True,
                                               "built_from_images": None})
    else:
        template = how.get("template") or (zip_path if zip_path.is_file() else None)
        if template is None:
            raise DfotaError(f"has no {TARGETFILES}: pass a targetfiles.zip of the same product "
                             "as the template for OTA/, RADIO/ and RECOVERY/ (note 2.2.1, "
                             "approach 2)", firmware_dir)
        work_dir = how.get("work_dir")
        if work_dir is not None:
            work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="import_base.", dir=work_dir) as tmp:
            built = Path(tmp) / "targetfiles.zip"
            parts = build_base_from_images(firmware_dir, template, built, images)
            for line in parts:
                say(f"  {line}")
            archived = archive.add(key, built, {
                **manifest, "checked_against_images": False, "built_from_images": parts,
                "template": str(template)})
    say(f"import_base: {key} "
        + ("already archived, same content" if existing is not None else "archived")
        + f" ({archived.zip_path})")
    return key


def _checked_package(firmware_dir: Path, say: Say) -> tuple[FirmwareImages,
                                                            dict[str, object]]:
    """The package's checksums checked, its images read, their version against the package
    time (warnings said); the images and the archive manifest every base of them carries."""
    if not firmware_dir.is_dir():
        raise DfotaError("firmware package folder not found", firmware_dir)
    for warning in check_md5(firmware_dir):
        say(f"warning: {warning}")
    images = read_images(firmware_dir)
    version = images.version
    for warning in package_time_warnings(firmware_dir, version):
        say(f"warning: {warning}")
    manifest: dict[str, object] = {
        "origin": "firmware", "imported_from": firmware_dir.name, "version": version.to_json(),
        "source": None, "tool": TOOL,
        "images": {rel: sha1_file(firmware_dir / rel) for rel in REQUIRED_IMAGES},
    }
    return images, manifest


def _check_package_zip(firmware_dir: Path, images: FirmwareImages, say: Say) -> None:
    """The package's targetfiles.zip matches its images, or each difference is said and the
    import refused."""
    check = check_targetfiles_against_images(firmware_dir, images)
    for note in check.notes:
        say(f"note: {note}")
    if check.differences:
        for line in check.differences:
            say(f"  {line}")
        raise DfotaError(f"does not match the firmware images in update/: "
                         f"{len(check.differences)} difference(s), listed above; the images "
                         "are what the module runs: build the base from them instead "
                         "(--from-images, note 2.2.1)", firmware_dir / TARGETFILES)
