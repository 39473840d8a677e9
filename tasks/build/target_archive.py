"""The target written once, straight into its staging folder in the archive, and
`out/targetfiles.zip` made the archived zip: a hard link where out/ and the archive share a
file system, else a copy by the kernel.

The zip is written in one pass (dfota.formats.zipwrite), hashed as it is written; the members
that the layout zip (the workspace's previous target, else the source, when archived with its
members' sha1s) holds as they would be written are copied from it by the kernel. Nothing is
put in place until the zip, its manifest and out/'s temporary name are complete: the source
and target are staged, then renamed into the archive together, then out/ renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from dfota.build.archive import (
    Archive,
    ArchivedVersion,
    Batch,
    member_sha1s,
)
from dfota.core import atomic
from dfota.core.errors import DfotaError, shown_path
from dfota.formats.zipio import ZipItem, ZipSource
from dfota.formats.zipwrite import Layout, Traffic, Written
from dfota.state.store import Records

MEMBER_SHA1S = "member-sha1s"  # delta's record of all a zip's sha1s (package.ahead), by its sha256
# the sha1s of a source's members that a build learned (not all of them), by its sha256
SOURCE_SHA1S = "targetfiles-source-sha1s"
# what a failed hard link means: not possible here (another file system, no links), not wrong
_NO_LINK = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP})


@dataclass(frozen=True, slots=True)
class LayoutChoice:
    version: ArchivedVersion
    sha1s: Mapping[str, str]


def choose_layout(archive: Archive, keys: Iterable[str]) -> tuple[LayoutChoice | None,
                                                                   list[str]]:
    """The first of the versions `keys` archived with its members' sha1s and still intact
    (its sha256 checked when its stat moved); warnings for one that was altered."""
    warnings = []
    for key in dict.fromkeys(k for k in keys if k):
        version = archive.get(key)
        sha1s = member_sha1s(version) if version is not None else None
        if version is None or sha1s is None:
            continue
        try:
            archive.check_intact(version)
        except DfotaError as exc:
            warnings.append(f"{exc}; not used to copy members from")
            continue
        return LayoutChoice(version, sha1s), warnings
    return None, warnings


def open_layout(choice: LayoutChoice | None, src: ZipSource,
                stack: contextlib.ExitStack) -> Layout | None:
    """The layout zip opened (the source's, already open, when it is the same file)."""
    if choice is None:
        return None
    path = choice.version.zip_path
    same = src.path.resolve() == path.resolve()
    return Layout(src if same else stack.enter_context(ZipSource(path)), choice.sha1s)


def learn_source_sha1s(src: ZipSource, records: Records, sha256: str,
                       version: ArchivedVersion | None) -> None:
    """What is known of the source's members: the records kept by its sha256 (delta's, whole,
    and the builds') and, for a version archived with its members' sha1s, those."""
    for name in (MEMBER_SHA1S, SOURCE_SHA1S):
        src.learn_sha1s(records.get(name, sha256))
    if version is not None:
        src.learn_sha1s(member_sha1s(version))


def with_known_sha1s(items: Iterable[ZipItem], src: ZipSource) -> list[ZipItem]:
    """The items, each member of `src` with the sha1 known for it (the zip writer then
    copies it from the layout when that holds the same, instead of reading it)."""
    known = src.known_sha1s()
    return [dataclasses.replace(i, sha1=known[i.source_member])
            if i.source_zip == src.path and i.source_member in known and not i.sha1 else i
            for i in items]


def source_sha1s(src: ZipSource, items: Iterable[ZipItem], written: Written) -> dict[str, str]:
    """Every sha1 of `src`'s members this build learned (hashed, or read as they were
    copied into the target): the record kept by the source's sha256."""
    found = src.known_sha1s()
    for item in items:
        if item.source_zip == src.path and item.source_member and item.name in written.sha1s:
            found[item.source_member] = written.sha1s[item.name]
    return found


def link_or_copy(archived: Path, out_tmp: Path, archive: Archive, sha256: str) -> None:
    """`out_tmp` (out/'s temporary name, renamed into place by the caller) made the archived
    zip: a hard link, else (another file system) a copy by the kernel, synced, its digest
    noted so it is not hashed again while it stays as it is."""
    out_tmp.unlink(missing_ok=True)
    try:
        os.link(archived, out_tmp)
        return
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
    with open(archived, "rb") as inp:
        atomic.copy_synced(inp, out_tmp, archived)
    os.chmod(out_tmp, archive.file_mode)
    archive.note_copy(out_tmp, sha256)


def out_is_target(archive: Archive, out_tmp: Path, key: str, staged: Path | None,
                  sha256: str) -> None:
    """out/'s temporary name made the target: the zip `staged` (a new version), else the
    archived version `key`, which holds these bytes (checked intact)."""
    if staged is None:
        existing = archive.get(key)
        assert existing is not None
        archive.check_intact(existing)
        staged = existing.zip_path
    link_or_copy(staged, out_tmp, archive, sha256)


def traffic_line(traffic: Traffic) -> str:
    """What writing the zip moved, for the run's log."""
    names = ", ".join(shown_path(name) for name in traffic.written[:50]) \
        + (" ..." if len(traffic.written) > 50 else "")
    return (f"targetfiles: entries read {traffic.bytes_read} bytes, hashed "
            f"{traffic.bytes_hashed}, wrote {traffic.bytes_written}, copied by the kernel "
            f"{traffic.bytes_copied} ({traffic.copied} entries); written: {names}")


def same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def target_in_place(batch: Batch, placed: list[ArchivedVersion], key: str) -> ArchivedVersion:
    """The archived version `key` after the batch's commit."""
    found = next((v for v in placed if v.key == key), None) or batch.archive.get(key)
    if found is None:  # pragma: no cover (committed just now)
        raise DfotaError(f"version {key} is not in the archive", batch.archive.root)
    return found


def relink_if_replaced(version: ArchivedVersion, out_tmp: Path, archive: Archive) -> None:
    """Another run may have put the same version in place first (same bytes): out/ is then
    made its zip, not the staged one that was dropped."""
    if not same_file(version.zip_path, out_tmp):
        link_or_copy(version.zip_path, out_tmp, archive, version.sha256)

