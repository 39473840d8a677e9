"""The chain's tasks: `targetfiles` (after `_targetfiles_inputs`), `delta` (beside
`_delta_ahead`) and `verify`, each up to date exactly while its own settings are; their
actions call the build, package and proof parts and keep the workspace's record.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from doit.tools import config_changed

from dfota.build.archive import archive_of
from dfota.commands.action import TOOL, TaskDict, guarded
from dfota.commands.configure import Configuration
from dfota.commands.housekeeping import clean_workspace
from dfota.core import atomic
from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.core.volumes import Volumes
from dfota.settings import (
    TEMPLATES,
    DeltaSettings,
    PackageInputs,
    TargetfilesSettings,
    VerifySettings,
    Workspace,
    key_of,
)
from dfota.state.store import State
from dfota.state.workspace import (
    WorkspaceRecord,
    read_record,
    record_package,
    record_target,
)


def targetfiles(conf: Configuration) -> Iterator[TaskDict]:
    """assemble out/targetfiles.zip from the SDK output and the source version; archive both"""
    ws, settings = conf.workspace, conf.targetfiles
    yield {
        "basename": "_targetfiles_inputs",
        "doc": "record what the target is made from (SDK images, rootfs tree, source) and "
               "the rootfs scan it was made from",
        "actions": [guarded("_targetfiles_inputs", ws.log_dir,
                            lambda log: _targetfiles_inputs(settings, log))],
        "task_dep": ["sample"] if settings.sdk_is_sample else [],
        "targets": [ws.inputs_manifest],
        "uptodate": [False],
        "verbosity": 2,  # hashing the rootfs shows its progress
    }
    yield {
        "basename": "targetfiles",
        "doc": targetfiles.__doc__,
        # the inputs step ran first (always out of date), unless doit skips it (-s)
        "actions": [guarded("targetfiles", ws.log_dir,
                            lambda log: _targetfiles(conf, log, inputs_recorded=not conf.single))],
        "file_dep": [ws.inputs_manifest],
        "targets": [ws.target_zip],
        "uptodate": [config_changed({"tool": TOOL, **key_of(settings)}),
                     lambda task, values: _still_archived(ws, values)],
        "clean": [lambda: clean_workspace(ws)],
        "verbosity": 2,
    }


def delta(conf: Configuration) -> Iterator[TaskDict]:
    """make the DFOTA update.zip from the base version to this workspace's target"""
    ws, settings = conf.workspace, conf.delta
    lists = sorted(settings.config_dir.glob("quectel_*_filelist.txt")) \
        if settings.config_dir else []
    yield {
        "basename": "_delta_ahead",
        "doc": "make what delta asks for from the inputs manifest (the base's sha1s, the "
               "kernel's patch), beside targetfiles",
        "actions": [guarded("_delta_ahead", ws.log_dir,
                            lambda log: _delta_ahead(settings, conf.targetfiles, log))],
        "file_dep": [ws.inputs_manifest],
        "targets": [ws.delta_ahead],
        "uptodate": [config_changed({"tool": TOOL, "base": settings.base,
                                     "mode": settings.mode,
                                     "diff_timeout": settings.diff_timeout})],
        "verbosity": 2,
    }
    yield {
        "basename": "delta",
        "doc": delta.__doc__,
        "actions": [guarded("delta", ws.log_dir, lambda log: _delta(conf, log))],
        "task_dep": ["targetfiles", "_delta_ahead"],
        "file_dep": [ws.target_zip, *lists, TEMPLATES / "updater-script.j2"],
        "targets": [ws.update_summary],
        "uptodate": [WithTargetVolumes({"tool": TOOL, **key_of(settings)}, ws),
                     lambda task, values: _no_diff_timeout(ws)],
        "clean": [lambda: clean_workspace(ws)],
        "verbosity": 2,
    }


def verify(conf: Configuration) -> TaskDict:
    """prove the package on the host (apply, power loss at every step), then publish it
    as out/update.zip; reject it on failure"""
    ws = conf.workspace
    if conf.verify.package is not None:  # a package of the user's: proven every time
        return {"actions": [guarded("verify", ws.log_dir,
                                    lambda log: _verify_named(conf.verify, log))],
                "uptodate": [False], "verbosity": 2}
    return {
        "actions": [guarded("verify", ws.log_dir, lambda log: _verify(conf.verify, log))],
        "task_dep": ["delta"],
        "file_dep": [ws.update_summary, ws.target_zip],
        "targets": [ws.verify_stamp],
        # what is published must be what was proven: a changed out/update.zip is proven
        # again
        "uptodate": [config_changed({"tool": TOOL, **key_of(conf.verify)}),
                     lambda task, values: _published_is_proven(ws)],
        "clean": [lambda: clean_workspace(ws)],
        "verbosity": 2,
    }


def _targetfiles_inputs(settings: TargetfilesSettings, log: RunLog) -> None:
    from dfota.build.inputs import write_inputs_manifest

    known = read_record(settings.workspace.record).versions
    with settings.workspace.open_state() as state:
        write_inputs_manifest(settings, known, state, log)


def _targetfiles(conf: Configuration, log: RunLog, inputs_recorded: bool) -> dict[str, str]:
    from dfota.build.assemble import build_targetfiles, describe

    settings = conf.targetfiles
    record = settings.workspace.record
    with settings.workspace.open_state() as state:
        result = build_targetfiles(settings, log, read_record(record).versions, state,
                                   inputs_recorded=inputs_recorded)
    record_target(record, conf.recorded_options["targetfiles"],
                  {"key": result.target_key, "sha256": result.sha256,
                   "source": result.source_key, "warnings": list(result.warnings),
                   "volumes": result.volumes.to_json() if result.volumes else None},
                  [result.source_key, result.target_key])
    log.say(describe(result))
    return {"target_key": result.target_key, "sha256": result.sha256}


def _still_archived(ws: Workspace, values: dict[str, Any]) -> bool:
    """The last build's target is still in the archive, and the archived zip and
    out/targetfiles.zip (one file, or a copy) still hold the bytes built: hashed again only
    when a file's size, times or inode moved. Else targetfiles runs and meets what changed."""
    key, sha256 = values.get("target_key"), values.get("sha256")
    if not key:
        return False
    try:
        with ws.open_state() as state:
            archive = archive_of(ws, state)
            version = archive.get(key)
            return version is not None and version.sha256 == sha256 and all(
                archive.sha256_of(path) == sha256 for path in (version.zip_path, ws.target_zip))
    except (DfotaError, OSError):
        return False


def target_volumes(record: WorkspaceRecord) -> Volumes | None:
    """The sizes of /system and /cache the target's SDK image gave (None: it had none)."""
    volumes = record.target.get("volumes")
    return Volumes.from_json(volumes) if isinstance(volumes, dict) else None


class WithTargetVolumes(config_changed):
    """doit's `config_changed` over a task's settings and the sizes the target's SDK image
    gave, read when doit asks: after `targetfiles` ran, when the command runs it first."""

    def __init__(self, settings: dict[str, object], ws: Workspace) -> None:
        super().__init__(settings)
        self.settings, self.ws = settings, ws

    def _calc_digest(self) -> str:
        image = target_volumes(read_record(self.ws.record))
        self.config = {**self.settings, "image_volumes": image.to_json() if image else None}
        return str(super()._calc_digest())


def _no_diff_timeout(ws: Workspace) -> bool:
    """A package in which a diff ran out of time is never up to date."""
    return not atomic.read_json_object(ws.update_summary).get("diff_timeouts")


def _delta_ahead(delta: DeltaSettings, targetfiles: TargetfilesSettings, log: RunLog) -> None:
    from dfota.package.ahead import load_delta_code, make_ahead

    log.detail(make_ahead(delta, targetfiles))
    load_delta_code(delta.workspace)


def _delta(conf: Configuration, log: RunLog) -> None:
    from dfota.package.bases import build_for_bases
    from dfota.package.delta import TargetBuild, build_delta, describe

    ws = conf.workspace
    record = read_record(ws.record)
    # a size the user did not set is the one the target's SDK image gave, if any
    settings = dataclasses.replace(conf.delta,
                                   volumes=conf.delta.volumes.over(target_volumes(record)))
    with ws.open_state() as state:
        check_target_is_recorded(ws, record, state)
        sdk = record.tasks.get("targetfiles", {}).get("sdk")
        result = build_delta(settings, log, TargetBuild(record.source_key, record.build_warnings,
                                                        Path(str(sdk)) if sdk else None), state)
        for warning in result.warnings:
            log.say(f"warning: {warning}")
        log.say(describe(result))
        if settings.bases:
            outcomes = build_for_bases(settings, log, record.versions, _verify_one, state)
            log.say(f"delta: {len(outcomes)} packages in {ws.deltas_dir} (index.json)")
        else:
            shutil.rmtree(ws.deltas_dir, ignore_errors=True)  # packages of an earlier run
    record_package(ws.record, conf.recorded_options["delta"], result.inputs.to_json())


def check_target_is_recorded(ws: Workspace, record: WorkspaceRecord, state: State) -> None:
    """out/targetfiles.zip is the target this workspace's last `doit targetfiles` built."""
    if not record.target_key:
        raise DfotaError("this workspace has no target yet: run `doit targetfiles` first",
                         ws.record)
    # targetfiles noted its copy's sha256 by stat: nothing is hashed while the file is as made
    if ws.target_zip.is_file() and \
            archive_of(ws, state).sha256_of(ws.target_zip) != record.target.get("sha256"):
        raise DfotaError(f"is not the target this workspace built ({record.target_key}): run "
                         "`doit targetfiles` again", ws.target_zip)


def _verify_one(ws: Workspace, log: RunLog, inputs: PackageInputs, state: State) -> None:
    from dfota.proof.publish import verify_delta

    verify_delta(VerifySettings(ws), log, inputs, state)


def package_inputs(ws: Workspace) -> PackageInputs:
    """What the workspace's package was made from (its record says; `out/` does not)."""
    try:
        return PackageInputs.from_json(read_record(ws.record).package)
    except ValueError as exc:
        raise DfotaError("this workspace's record does not say what its package was made "
                         "from: run `doit delta` again", ws.record) from exc


def _verify(settings: VerifySettings, log: RunLog) -> None:
    from dfota.proof.publish import verify_delta
    from dfota.proof.published import verify_needed

    ws = settings.workspace
    with ws.open_state() as state:
        if not verify_needed(ws, state.digests):
            log.say("verify: nothing to verify (no package, or this package was verified)")
        else:
            report = verify_delta(settings, log, package_inputs(ws), state)
            for check in report.checks:
                log.say(f"verify: ok  {check.name}: {check.detail}")
            log.say(f"verify: {ws.update_zip} passed {len(report.checks)} checks in "
                    f"{report.seconds:.1f} s and is published; report: {ws.update_report}")
    atomic.write_text(ws.verify_stamp, "verified\n")


def _published_is_proven(ws: Workspace) -> bool:
    from dfota.proof.published import published_is_proven

    with ws.open_state() as state:
        return published_is_proven(ws, digests=state.digests)


def _verify_named(settings: VerifySettings, log: RunLog) -> None:
    from dfota.proof.publish import verify_named

    with settings.workspace.open_state() as state:
        report, where = verify_named(settings, log, state)
    for check in report.checks:
        log.say(f"verify: ok  {check.name}: {check.detail}")
    log.say(f"verify: {settings.package} is proven ({len(report.checks)} checks in "
            f"{report.seconds:.1f} s); report: {where}")
