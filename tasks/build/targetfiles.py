"""The layout of targetfiles.zip, and the target's contents planned from the SDK output.

Section 2.2.2 of the note: the target is the source with `BOOTABLE_IMAGES/boot.img` and
`MULTIFOTA/abl.elf` replaced by the SDK's images, and `SYSTEM/` replaced by the SDK rootfs except
`SYSTEM/firmware/` and `SYSTEM/dev/`, which stay as they are in the source. Everything else is
carried over. `META/` gets the owner/mode sidecars of SYSTEM (see `system_meta_items`).
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dfota.core.errors import DfotaError, shown_path
from dfota.core.tree import DIR, FILE, SYMLINK, Entry, FolderScan, Tree, changed_error
from dfota.formats.version import VERSION_FILE, ProjectVersion, parse_version
from dfota.formats.zipio import (
    ZipItem,
    ZipSource,
    bytes_item,
    dir_item,
    link_item,
    path_item,
)

BOOT_IMAGE = "BOOTABLE_IMAGES/boot.img"
ABL = "MULTIFOTA/abl.elf"
UPDATER = "OTA/bin/updater"
SYSTEM = "SYSTEM"
KEPT_FROM_SOURCE = ("firmware", "dev")  # SYSTEM sub-folders the target takes from the source
SYSTEM_MANIFEST = "META/system_manifest.json"
FS_CONFIG = "META/filesystem_config.txt"
REQUIRED = (BOOT_IMAGE, ABL, UPDATER, SYSTEM, f"{SYSTEM}/firmware")
EXPECTED_FOLDERS = ("RADIO", "RECOVERY")
MANIFEST_FORMAT = 1


def system_path(rel: str) -> str:
    return f"{SYSTEM}/{rel}"


def check_source(src: ZipSource) -> list[str]:
    """Refuse a source that lacks what the target needs; warn about the folders it may lack."""
    for name in REQUIRED:
        if name not in src.members:
            if "." not in name and any(src.names(name + "/")):
                raise DfotaError(f"has entries below {name}/ but no entry for the folder "
                                 "itself; write it with `zip -r`, which records folders",
                                 src.path)
            raise DfotaError(f"has no {name}{'/' if '.' not in name else ''}; "
                             "is it a targetfiles.zip?", src.path)
    for name in (BOOT_IMAGE, ABL, UPDATER):
        if src.members[name].kind != FILE:
            raise DfotaError(f"{name} is not a regular file", src.path)
    for name in (SYSTEM, f"{SYSTEM}/firmware"):
        if src.members[name].kind != DIR:
            raise DfotaError(f"{name} is not a folder", src.path)
    return [f"{shown_path(src.path)}: has no {folder}/ folder" for folder in EXPECTED_FOLDERS
            if not any(src.names(folder + "/")) and folder not in src.members]


def partition_map(src: ZipSource) -> dict[str, str]:
    """Image file name -> partition, from Qualcomm's `RADIO/filesmap` (`abl.elf  abl`)."""
    mapping: dict[str, str] = {}
    if "RADIO/filesmap" in src.members:
        for line in src.read("RADIO/filesmap").decode("utf-8", "replace").splitlines():
            fields = line.split()
            if len(fields) >= 2 and not fields[0].startswith("#"):
                mapping[fields[0]] = fields[1]
    return mapping


def _fstab_line(src: ZipSource, mount_point: str) -> list[str]:
    """`mount point, type, device` of the recovery's fstab line for `mount_point`, if any."""
    for name in src.names("RECOVERY/"):
        if name.endswith("recovery.fstab") and src.members[name].kind == FILE:
            for line in src.read(name).decode("utf-8", "replace").splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[0] == mount_point:
                    return fields
    return []


def boot_partition(src: ZipSource) -> str:
    """The kernel's partition: the `/boot` line of recovery.fstab, else RADIO/filesmap."""
    fields = _fstab_line(src, "/boot")
    if fields:
        return fields[2].rsplit("/", 1)[-1]
    mapping = partition_map(src)
    return mapping.get("sdxlemur-boot.img") or mapping.get("boot.img") or "boot"


def system_mount(src: ZipSource) -> tuple[str, str, str]:
    """edify `mount()`'s file system, partition type and location for /system.

    From the recovery's fstab (`/system ubifs system`); a UBIFS volume is mounted as
    `mount("ubifs", "UBI", "system", "/system")` by Qualcomm Linux-Embedded updaters.
    """
    fields = _fstab_line(src, "/system")
    fs_type, location = (fields[1], fields[2].rsplit("/", 1)[-1]) if fields else ("ubifs",
                                                                                  "system")
    return fs_type, "UBI" if fs_type == "ubifs" else "MTD", location


def zip_version(src: ZipSource) -> ProjectVersion:
    name = system_path(VERSION_FILE)
    if name not in src.members or src.members[name].kind != FILE:
        raise DfotaError(f"has no {name}", src.path)
    return parse_version(src.read(name), f"{src.path}:{name}")


@dataclass(frozen=True, slots=True)
class _Recorded:
    uid: int
    gid: int
    size: int = -1  # -1: not recorded
    sha1: str = ""


def _recorded(src: ZipSource) -> dict[str, _Recorded]:
    """SYSTEM owners (and, from this tool's manifest, sizes and sha1s) recorded in the zip's
    sidecars, when it has them (vendor zips often do not)."""
    if SYSTEM_MANIFEST in src.members:
        try:
            data = json.loads(src.read(SYSTEM_MANIFEST))
            return {e["path"]: _Recorded(int(e["uid"]), int(e["gid"]), int(e["size"]),
                                         str(e["sha1"])) for e in data["entries"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise DfotaError(f"{SYSTEM_MANIFEST} is not a valid manifest ({exc})",
                             src.path) from exc
    recorded: dict[str, _Recorded] = {}
    if FS_CONFIG in src.members:
        for line in src.read(FS_CONFIG).decode("utf-8", "replace").splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[0].startswith("system/"):
                try:
                    recorded[fields[0][len("system/"):]] = _Recorded(int(fields[1]),
                                                                     int(fields[2]))
                except ValueError:
                    continue
    return recorded


def system_tree(src: ZipSource, *, under: str = "", recorded_sha1s: bool = False) -> Tree:
    """The SYSTEM entries of a targetfiles zip (optionally only those under `under`).

    Files are hashed, unless `recorded_sha1s` (for a zip this tool built and archived, byte
    for byte): then the sha1s its manifest recorded serve where the sizes agree.
    """
    recorded = _recorded(src)
    top = system_path(under) if under else SYSTEM
    tree: Tree = {}
    for name in src.names(top):
        if not (name.startswith(top + "/") or (under and name == top)):
            continue
        member = src.members[name]
        rel = name[len(SYSTEM) + 1:]
        known = recorded.get(rel, _Recorded(0, 0))
        if member.kind == FILE:
            sha1 = (known.sha1 if recorded_sha1s and known.sha1 and known.size == member.size
                    else src.sha1(name))
            tree[rel] = Entry(rel, FILE, member.mode, known.uid, known.gid, member.size, sha1)
        elif member.kind == SYMLINK:
            target = src.link_target(name)
            tree[rel] = Entry(rel, SYMLINK, 0o777, known.uid, known.gid, member.size, "",
                              target)
        else:
            tree[rel] = Entry(rel, DIR, member.mode, known.uid, known.gid)
    return tree


@dataclass(frozen=True, slots=True)
class SdkOutput:
    """The files of a QuecOpen SDK build that make a target (note section 2.2.2)."""

    folder: Path
    boot_image: Path
    abl: Path
    rootfs: Path
    sysfs_ubi: Path | None


def locate_sdk(folder: Path) -> SdkOutput:
    if not folder.is_dir():
        raise DfotaError("SDK folder not found (expected the ql-ol-extsdk folder)", folder)
    target = folder / "target"
    boot, abl, rootfs = target / "sdxlemur-boot.img", target / "abl.elf", folder / "ql-ol-rootfs"
    for path in (boot, abl):
        if not path.is_file():
            raise DfotaError("missing from the SDK output", path)
    if not rootfs.is_dir():
        raise DfotaError("rootfs folder missing from the SDK", rootfs)
    ubi = target / "sdxlemur-sysfs.ubi"
    return SdkOutput(folder, boot, abl, rootfs, ubi if ubi.is_file() else None)


_KIND_WORDS = {DIR: "folder", SYMLINK: "symlink", FILE: "file"}


def rootfs_version(rootfs: Path, scan: FolderScan | None = None) -> ProjectVersion:
    path = rootfs / VERSION_FILE
    entry = scan.entries.get(VERSION_FILE) if scan else None
    if entry is not None and entry.kind != FILE:  # never read through a link
        raise DfotaError(f"version file is a {_KIND_WORDS[entry.kind]}, not a regular file",
                         path)
    if (scan and entry is None) or not path.is_file():
        raise DfotaError("version file missing from the rootfs", path)
    try:
        return parse_version(path.read_bytes(), str(path))
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc


PASSWD, GROUP = "etc/passwd", "etc/group"
_SHOWN_PATHS = 5


def _known_ids(rootfs: Path, scan: FolderScan, rel: str) -> set[int] | None:
    """The numeric ids (third field) of the rootfs's own etc/passwd or etc/group; None when
    it has no such regular file (never read through a link)."""
    entry = scan.entries.get(rel)
    if entry is None or entry.kind != FILE:
        return None
    path = rootfs / rel
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise changed_error(path)
        text = f.read().decode("utf-8", "replace")
    fields = (line.split(":") for line in text.splitlines())
    return {int(f[2]) for f in fields if len(f) >= 3 and f[2].strip().isdigit()}


def unknown_owners(rootfs: Path, scan: FolderScan) -> list[str]:
    """Warnings for owners (uids) and groups (gids) of the rootfs, as recorded (the build
    user mapped to root), that its own etc/passwd and etc/group do not list; 0 is always
    known. One warning per unknown id, naming its paths; one when neither file is there."""
    users, groups = _known_ids(rootfs, scan, PASSWD), _known_ids(rootfs, scan, GROUP)
    if users is None and groups is None:
        return [f"{shown_path(rootfs)}: has no {PASSWD} nor {GROUP}; owners and groups are "
                "not checked"]
    lines: list[str] = []
    for word, known, listing in (("uid", users, PASSWD), ("gid", groups, GROUP)):
        if known is None:
            lines.append(f"{shown_path(rootfs / listing)}: missing; {word}s are not checked")
            continue
        unknown: dict[int, list[str]] = {}
        for entry in scan.entries.values():
            number = entry.uid if word == "uid" else entry.gid
            if number != 0 and number not in known:
                unknown.setdefault(number, []).append(entry.path)
        for number, paths in sorted(unknown.items()):
            shown = ", ".join(shown_path(p) for p in paths[:_SHOWN_PATHS])
            more = f" and {len(paths) - _SHOWN_PATHS} more" if len(paths) > _SHOWN_PATHS else ""
            lines.append(f"{shown_path(rootfs)}: {word} {number} is not in {listing}: "
                         f"{shown}{more}")
    return lines


@dataclass(frozen=True, slots=True)
class TargetPlan:
    items: tuple[ZipItem, ...]
    system: Tree
    version: ProjectVersion


def plan_target(sdk: SdkOutput, src: ZipSource, rootfs: FolderScan) -> TargetPlan:
    """Every entry of the target targetfiles.zip, and the SYSTEM tree it describes."""
    kept = [system_path(k) for k in KEPT_FROM_SOURCE]
    replaced = {BOOT_IMAGE, ABL, SYSTEM_MANIFEST, FS_CONFIG}

    def from_rootfs(name: str) -> bool:
        return (name == SYSTEM or name.startswith(SYSTEM + "/")) and not any(
            name == k or name.startswith(k + "/") for k in kept)

    items: list[ZipItem] = []
    for name in src.members:
        if name in replaced or from_rootfs(name):
            continue
        items.append(src.item(name))
    items.append(path_item(BOOT_IMAGE, sdk.boot_image, src.members[BOOT_IMAGE].mode))
    items.append(path_item(ABL, sdk.abl, src.members[ABL].mode))
    system_dir = src.members.get(SYSTEM)
    items.append(dir_item(SYSTEM, system_dir.mode if system_dir else 0o755))

    rootfs_dir = sdk.rootfs.resolve()
    system: Tree = {}
    for kept_dir in KEPT_FROM_SOURCE:
        system.update(system_tree(src, under=kept_dir))
    for rel, entry in rootfs.entries.items():
        system[rel] = entry
        name = system_path(rel)
        if entry.kind == DIR:
            items.append(dir_item(name, entry.mode))
        elif entry.kind == SYMLINK:
            items.append(link_item(name, entry.link))
        else:
            items.append(path_item(name, rootfs_dir / rel, entry.mode, entry.sha1))
    items.extend(system_meta_items(system))
    items.extend(missing_parents(items))
    return TargetPlan(tuple(items), system, rootfs_version(sdk.rootfs, rootfs))


def missing_parents(items: Iterable[ZipItem]) -> list[ZipItem]:
    """Directory entries for parents that have none (zip -r always writes them)."""
    names = {i.name for i in items}
    missing: set[str] = set()
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in names:
                missing.add(parent)
    return [dir_item(p, 0o755) for p in sorted(missing)]


def system_meta_items(system: Mapping[str, Entry]) -> list[ZipItem]:
    """`META/system_manifest.json` (the whole truth) and Android's `filesystem_config.txt`.

    The Android format splits on whitespace, so names holding whitespace are left out of it;
    the JSON manifest carries every name exactly.
    """
    ordered = [system[p] for p in sorted(system)]
    # one entry a line, each by json's C encoder (an indented dump is 10x slower)
    manifest = ('{"entries": [\n'
                + ",\n".join(json.dumps(e.to_json(), sort_keys=True) for e in ordered)
                + f'\n], "format": {json.dumps(MANIFEST_FORMAT)}}}\n')
    lines = ["system 0 0 755"]
    lines += [f"system/{e.path} {e.uid} {e.gid} {e.mode:o}" for e in ordered
              if not any(c.isspace() for c in e.path)]
    return [
        bytes_item(SYSTEM_MANIFEST, manifest.encode("utf-8")),
        bytes_item(FS_CONFIG, ("\n".join(lines) + "\n").encode("utf-8")),
    ]
