"""`doit prune --keep N [--force]`: the archive only grows (170-230 MB a version at production
size); this removes the oldest versions but the N newest.

Never removed: a version that `out/` points to (this workspace's target, its package's source
and target, the bases of its packages in `out/deltas/`; the version `out/targetfiles.zip` is,
by its inode when it is a hard link into the archive, else by its sha256 when it is a copy),
a version whose zip has other hard links (another workspace's `out/` sharing the archive),
and, unless `--force`, a version
that a kept version records as the source it was built on (the next package from it needs
it). A version folder goes by one rename out of the way (so readers never see half of it),
then the index is rebuilt.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from dfota.build.archive import STAGING_PREFIX, Archive, archive_of, recorded_sha256
from dfota.core import owner
from dfota.core.atomic import read_json_object
from dfota.core.errors import DfotaError
from dfota.settings import Workspace
from dfota.state.workspace import read_record


def kept_by_workspace(ws: Workspace) -> set[str]:
    """The versions `out/` points to."""
    record = read_record(ws.record)
    keys = {record.target_key, record.source_key}
    summary = read_json_object(ws.update_summary)
    keys |= {str(summary.get("source") or ""), str(summary.get("target") or "")}
    index = read_json_object(ws.deltas_dir / "index.json")
    keys.add(str(index.get("target") or ""))
    for package in index.get("packages") or ():
        if isinstance(package, dict):
            keys.add(str(package.get("base") or ""))
    return (keys | _out_zip_is(ws)) - {""}


def _out_zip_is(ws: Workspace) -> set[str]:
    """The version `out/targetfiles.zip` is: the one it is a hard link of, else (a copy, on
    another file system) the one of its sha256, from the digest cache while it is as it was
    written."""
    try:
        st = ws.target_zip.stat()
    except OSError:
        return set()
    versions = archive_of(ws).versions()
    linked = {v.key for v in versions if _is(v.zip_path, st)}
    if linked:
        return linked
    with ws.open_state() as state:
        sha256 = recorded_sha256(state.digests, ws.target_zip)
    return {v.key for v in versions if v.sha256 == sha256}


def _is(path: Path, st: os.stat_result) -> bool:
    try:
        found = path.stat()
    except OSError:
        return False
    return (found.st_dev, found.st_ino) == (st.st_dev, st.st_ino)


def _links(path: Path) -> int:
    try:
        return path.stat().st_nlink
    except OSError:
        return 1


def prune(archive: Archive, keep: int, protected: set[str], force: bool,
          say: Callable[[str], None]) -> list[str]:
    """Remove the versions older than the `keep` newest (see the module's rules); the keys
    removed, oldest first."""
    versions = archive.versions()  # oldest package time first
    kept = versions[-keep:]
    needed = set() if force else {str(v.manifest.get("source") or "") for v in kept}
    removed = []
    for version in versions[:-keep]:
        if version.key in protected:
            say(f"prune: kept {version.key}: out/ points to it")
        elif _links(version.zip_path) > 1:
            say(f"prune: kept {version.key}: its zip has other hard links (an out/ of a "
                "workspace sharing the archive)")
        elif version.key in needed:
            say(f"prune: kept {version.key}: a kept version was built on it (--force removes it)")
        else:
            _remove(archive, version.folder)
            say(f"prune: removed {version.key}")
            removed.append(version.key)
    if removed:
        archive.write_index()
    return removed


def _remove(archive: Archive, folder: Path) -> None:
    # a staging name of this run: what a kill leaves behind, a later run's clean-up removes
    aside = folder.with_name(f"{STAGING_PREFIX}pruned-{folder.name}{owner.suffix()}")
    try:
        os.rename(folder, aside)
    except OSError as exc:
        raise DfotaError(f"cannot remove an archived version ({exc.strerror})", folder) from exc
    shutil.rmtree(aside, ignore_errors=True)
