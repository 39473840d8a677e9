"""What a delta package must do: each SYSTEM entry's change from the source to the target.

Entries are compared by type, sha1, link target, mode and owner. Every entry gets exactly one
change kind; the package writer turns the kinds into script steps, and the summary counts them.
Paths are relative to SYSTEM (`usr/bin/foo`); the module sees them under `/system/`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from dfota.build.targetfiles import SYSTEM, system_path
from dfota.core.errors import DfotaError
from dfota.core.tree import DIR, FILE, SYMLINK, Entry, Tree
from dfota.formats.filelists import FileLists, chmod_for
from dfota.package.mode import Part

MODEM_DIR = "firmware"


@dataclass(frozen=True)
class Span:
    """What a package updates: a module of the source version to the target, in these parts."""

    source_key: str
    target_key: str
    parts: frozenset[Part]


def covers(parts: frozenset[Part], path: str) -> bool:
    """Whether a SYSTEM path belongs to the parts a package covers."""
    in_modem = path == MODEM_DIR or path.startswith(MODEM_DIR + "/")
    return Part.MODEM in parts if in_modem else Part.ROOTFS in parts


class Kind(str, Enum):
    UNCHANGED = "unchanged"
    PATCHED = "patched"
    WHOLE = "whole"  # a changed file shipped whole (fullota, patch too large, diff failed)
    NEW = "new"  # a new file (shipped whole)
    NEW_DIR = "new_dir"
    DELETED = "deleted"  # a file removed
    DIR_REMOVED = "dir_removed"
    LINK_NEW = "symlink_created"
    LINK_RETARGETED = "symlink_retargeted"
    LINK_REMOVED = "symlink_removed"
    METADATA = "metadata"  # same content, other mode or owner
    REPLACED = "replaced"  # another type: file <-> link <-> directory


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    kind: Kind
    source: Entry | None
    target: Entry | None
    reason: str = ""  # why a file is shipped whole

    @property
    def shipped_whole(self) -> bool:
        """A regular file the package carries whole (and extracts)."""
        return self.target is not None and self.target.kind == FILE and self.kind in (
            Kind.WHOLE, Kind.NEW, Kind.REPLACED)


def classify(source: Entry | None, target: Entry | None, *, fullota: bool) -> Kind:
    if source is None and target is None:
        raise ValueError("nothing to classify")
    if source is None:
        assert target is not None
        return {FILE: Kind.NEW, DIR: Kind.NEW_DIR, SYMLINK: Kind.LINK_NEW}[target.kind]
    if target is None:
        return {FILE: Kind.DELETED, DIR: Kind.DIR_REMOVED, SYMLINK: Kind.LINK_REMOVED}[
            source.kind]
    if source.kind != target.kind:
        return Kind.REPLACED
    if target.kind == SYMLINK:  # the updater cannot set a link's owner or mode
        return Kind.UNCHANGED if source.link == target.link else Kind.LINK_RETARGETED
    if target.kind == FILE and fullota:
        return Kind.WHOLE
    if target.kind == FILE and source.sha1 != target.sha1:
        return Kind.PATCHED
    return Kind.UNCHANGED if source.same_metadata(target) else Kind.METADATA


DEVICE_NAME_MAX = 255  # bytes in one component of a path the module's kernel takes
DEVICE_PATH_MAX = 4096  # bytes in a whole path, its closing NUL included
PATCH_SUFFIX = ".patch"  # apply_patch writes the patched file beside it under this name


def name_limit(path: str, mount: str = "/system") -> str | None:
    """The kernel limit the module's path `mount/path` breaks, said in words; None if it fits."""
    raw = f"{mount}/{path}".encode("utf-8", "surrogateescape")
    if len(raw) >= DEVICE_PATH_MAX:
        return f"its path on the module is {len(raw)} bytes (the limit is {DEVICE_PATH_MAX - 1})"
    longest = max(len(part) for part in raw.split(b"/"))
    if longest > DEVICE_NAME_MAX:
        return f"a name in its path is {longest} bytes (the limit is {DEVICE_NAME_MAX})"
    return None


def patchable(path: str, mount: str = "/system") -> bool:
    """Whether apply_patch can write `<path>.patch` beside the file."""
    return name_limit(path + PATCH_SUFFIX, mount) is None


def refuse_unwritable(paths: Iterable[str], mount: str = "/system") -> None:
    """One line naming the first path the module could not create, and the limit."""
    for path in paths:
        why = name_limit(path, mount)
        if why is not None:
            raise DfotaError(f"the module's updater cannot create it: {why}",
                             f"SYSTEM/{path}")


def noota_kept(noota: Iterable[str], source: Mapping[str, Entry]) -> set[str]:
    """The noota rule: what a package leaves as the source has it. A noota path present in the
    source stays (content, mode, owner), and so do the folders above it; a noota path absent
    from the source is not created (the caller skips every noota path). SYSTEM-relative."""
    kept: set[str] = set()
    for path in noota:
        if path in source:
            parts = path.split("/")
            kept.update("/".join(parts[:depth]) for depth in range(1, len(parts) + 1))
    return kept


def plan_changes(source: Mapping[str, Entry], target: Mapping[str, Entry], *,
                 parts: frozenset[Part], fullota: Iterable[str] = (),
                 noota: Iterable[str] = ()) -> list[Change]:
    """One change per covered path of either tree, in path order.

    `fullota` and `noota` are SYSTEM-relative paths: fullota files are always shipped whole;
    noota files are left alone (neither touched nor checked), and so are the folders above
    one the source holds (`noota_kept`).
    """
    forced, kept = set(fullota), set(noota)
    above = noota_kept(kept, source) - kept  # folders that hold a noota file of the source
    changes = []
    for path in sorted(set(source) | set(target)):
        if path in kept or not covers(parts, path):
            continue
        src, tgt = source.get(path), target.get(path)
        if path in above and (tgt is None or tgt.kind != DIR):
            if tgt is not None:
                raise DfotaError(f"the target makes it a {tgt.kind}, but it holds a file of "
                                 "the noota list that the module keeps", f"SYSTEM/{path}")
            continue  # stays as the source has it
        kind = classify(src, tgt, fullota=path in forced)
        reason = "fullota list" if kind is Kind.WHOLE else ""
        if kind is Kind.PATCHED and not patchable(path):
            kind, reason = Kind.WHOLE, f"name too long for the updater's {PATCH_SUFFIX} file"
        changes.append(Change(path, kind, src, tgt, reason))
    return changes


def expected_system(source: Tree, target: Tree, parts: frozenset[Part],
                    lists: FileLists) -> Tree:
    """What /system must hold after the update: the target where the package covers it, the
    source elsewhere and for noota files, with the chmod list applied as the script does."""
    noota = {p.removeprefix(SYSTEM + "/") for p in lists.noota}
    kept = noota | {p for p in noota_kept(noota, source) if p not in target}
    result: Tree = {}
    for path in sorted(set(source) | set(target)):
        chosen = source if path in kept or not covers(parts, path) else target
        if path in chosen:
            result[path] = chosen[path]
    applicable = [r for r in lists.chmod
                  if (rel := r.path.removeprefix(SYSTEM + "/")) in target
                  and covers(parts, rel) and target[rel].kind != SYMLINK
                  and (target[rel].kind == DIR) == r.is_folder]
    for path, entry in result.items():
        if entry.kind == SYMLINK or not covers(parts, path):
            continue
        rule = chmod_for(applicable, system_path(path), entry.kind == DIR)
        if rule is not None:
            uid, gid, mode = rule
            result[path] = Entry(path, entry.kind, mode, uid, gid, entry.size, entry.sha1,
                                 entry.link)
    return result
