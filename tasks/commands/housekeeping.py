"""The tasks that keep the archive and the workspace: `import_base` (a release firmware
package as a base version), `versions` (the archive's list), `prune` (old versions out) and
doit's `clean` of the chain's tasks (the workspace's outputs and state, never the archive).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from typing import Any

from dfota.build.archive import archive_of
from dfota.commands.action import TaskDict, always_run
from dfota.commands.configure import Configuration
from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.settings import Workspace, resolve_path
from dfota.state.workspace import read_record, record_versions


def import_base(conf: Configuration) -> TaskDict:
    """check a release firmware package against its images and archive it as a base version"""
    ws = conf.workspace
    return always_run("import_base", ws.log_dir,
                      lambda log: _import_base(ws, conf.import_options, log))


def prune(conf: Configuration) -> TaskDict:
    """remove old archived versions: keep the newest --keep N (and what they need)"""
    ws = conf.workspace
    return always_run("prune", ws.log_dir, lambda log: _prune(ws, conf.prune_options, log))


def versions(conf: Configuration) -> TaskDict:
    """list the archived versions, oldest first, with the source each was built on"""
    ws = conf.workspace
    return always_run("versions", None, lambda log: _list_versions(ws, log))


# below, `options` are a command's settings, each of the type its parameter declares
def _import_base(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.build.import_base import import_base

    firmware, template = str(options["firmware"]), str(options["template"])
    if not firmware:
        raise DfotaError("name the firmware package: doit import_base --firmware DIR")
    with ws.open_state() as state:
        key = import_base(resolve_path(firmware), archive_of(ws, state),
                          template=resolve_path(template) if template else None,
                          from_images=bool(options["from_images"]), say=log.say,
                          work_dir=ws.state_dir)
    record_versions(ws.record, [key])


def clean_workspace(ws: Workspace) -> None:
    """`doit clean`: the workspace's outputs and state go; the archive never does."""
    for folder in (ws.out_dir, ws.state_dir):
        if ws.archive_dir.resolve().is_relative_to(folder.resolve()):
            raise DfotaError(f"holds the archive ({ws.archive_dir}): not removed", folder)
    for folder in (ws.out_dir, ws.state_dir):
        if folder.exists():
            shutil.rmtree(folder)
            print(f"clean: removed {folder}", flush=True)


def _prune(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.build.prune import kept_by_workspace, prune

    keep = int(options["keep"])
    if keep < 1:
        raise DfotaError("name how many versions to keep: doit prune --keep N (N >= 1)")
    archive = archive_of(ws)
    removed = prune(archive, keep, kept_by_workspace(ws), bool(options["force"]), log.say)
    log.say(f"prune: {len(removed)} version(s) removed from {ws.archive_dir}")


def _list_versions(ws: Workspace, log: RunLog) -> None:
    archive = archive_of(ws)
    versions = archive.versions()
    known = set(read_record(ws.record).versions)
    if not versions:
        log.say(f"{ws.archive_dir}: no archived version yet")
    for v in versions:
        source = v.manifest.get("source") or "-"
        mark = "*" if v.key in known else " "
        log.say(f"{mark} {v.key}  {v.manifest.get('origin', '?'):<11}  built on {source}  "
                f"sha256 {v.sha256[:12]}  {v.manifest.get('size', '?')} bytes")
    if known:
        log.say("(* built or imported by this workspace)")
