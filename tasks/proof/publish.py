"""`doit verify`'s two ways in: the package `doit delta` left aside, proven then published at
`out/update.zip` (or moved to `out/rejected/` with its report), and a package named by
`--package`, proven against archived versions without being moved.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from dfota.build.archive import archive_of, sha256_file
from dfota.core import atomic
from dfota.core.errors import CheckFailed, DfotaError, shown_path
from dfota.core.runlog import RunLog
from dfota.core.volumes import Volumes
from dfota.formats.filelists import lists_in
from dfota.formats.version import parse_version
from dfota.formats.zipio import ZipSource
from dfota.package.mode import Part, parse_mode
from dfota.package.writer import VERSION_ENTRY
from dfota.proof.published import read_summary
from dfota.proof.verify import VerifyInputs, VerifyReport, verify_package
from dfota.report.summary import write_report, write_summary
from dfota.settings import PackageInputs, VerifySettings, Workspace
from dfota.state.store import State


def verify_delta(settings: VerifySettings, log: RunLog, inputs: PackageInputs,
                 state: State | None = None) -> VerifyReport:
    """Verify the package `doit delta` left aside, made from `inputs` as `out/update.json`
    describes it; publish it at `out/update.zip` when it passes, move it to `out/rejected/`
    when it fails. With no package aside, a published `out/update.zip` that is not the one
    proven is proven again: kept when it passes, moved out when it fails. `state`: the
    workspace's (default: opened here)."""
    if state is None:
        with settings.workspace.open_state() as opened:
            return verify_delta(settings, log, inputs, opened)
    workspace = settings.workspace
    summary = read_summary(workspace)
    changed = not workspace.pending_zip.is_file() and workspace.update_zip.is_file()
    package = workspace.update_zip if changed else workspace.pending_zip
    if not package.is_file():
        raise DfotaError("no package to verify: run `doit delta` first", workspace.pending_zip)
    if changed:
        log.say(f"verify: {shown_path(package)} changed after it was verified: proving it again")
    # the mode is the list of parts `doit delta` wrote there
    parts = frozenset(Part(str(value)) for value in summary["mode"])  # type: ignore[attr-defined]
    lists = lists_in(inputs.config_dir)
    archive = archive_of(workspace, state)
    proved = VerifyInputs(package, inputs.base_zip, inputs.target_zip, parts, lists,
                          target_recorded=archive.built_here(str(summary["target"]),
                                                             inputs.target_zip),
                          volumes=Volumes.from_json(summary.get("volumes")),
                          base_sha256=archive.sha256_of(inputs.base_zip))
    report = verify_package(proved, log, permission_replays=settings.permission_replays,
                            records=state.records)
    summary["verify"] = verified = report.to_json()
    places = inputs.places(workspace)
    if report.ok:
        # what the summary records is where the package is once published
        summary["package"] = verified["package"] = str(workspace.update_zip)
        summary["package_sha256"] = sha256_file(package)
        summary["published"] = True
        write_summary(workspace.update_summary, summary, places)
        write_report(workspace.update_summary, workspace.update_report)
        if not changed:
            os.replace(workspace.pending_zip, workspace.update_zip)  # published: proven
        return report
    rejected = reject(workspace, summary, places, package)
    failed = next(c for c in report.checks if not c.ok)
    why = "changed after it was verified, and" if changed else "package"
    raise CheckFailed(f"{why} failed verification ({failed.name}: {failed.detail}); moved to "
                      f"{rejected}", package)


def reject(workspace: Workspace, summary: Mapping[str, object], places: Mapping[Path, str],
           package: Path) -> Path:
    """Move the package and its report out of the way of anything that publishes out/."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = workspace.out_dir / "rejected" / stamp
    folder.mkdir(parents=True, exist_ok=True)
    write_summary(folder / "update.json", summary, places)
    write_report(folder / "update.json", folder / "update.html")
    shutil.move(str(package), folder / "update.zip")
    workspace.update_summary.unlink(missing_ok=True)
    workspace.update_report.unlink(missing_ok=True)
    return folder


def _package_source(package: Path) -> str:
    """The version key of the source a package was made for: its quectel-project-version."""
    try:
        with ZipSource(package) as pkg:
            if VERSION_ENTRY not in pkg.members:
                raise DfotaError(f"no {VERSION_ENTRY} in the package: give --source KEY",
                                 package)
            return parse_version(pkg.read(VERSION_ENTRY), f"{package}:{VERSION_ENTRY}").key
    except DfotaError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DfotaError(f"cannot be read as a zip ({exc})", package) from exc


def verify_named(settings: VerifySettings, log: RunLog, state: State
                 ) -> tuple[VerifyReport, Path]:
    """`doit verify --package PATH`: prove any update.zip against archived versions, without
    moving or publishing it; the report goes to the state folder. The source is the version
    its quectel-project-version names (or `--source`), the target the one the update.json
    beside it names (or `--target`), with that summary's mode and lists (else all, none)."""
    package, workspace = settings.package, settings.workspace
    assert package is not None
    if not package.is_file():
        raise DfotaError("no such package", package)
    summary = atomic.read_json_object(package.with_name("update.json"))
    source = settings.source or _package_source(package)
    target = settings.target or str(summary.get("target") or "")
    if not target:
        raise DfotaError("no update.json beside it names the target: give --target KEY|ZIP",
                         package)
    archive = archive_of(workspace, state)
    base_zip, target_zip = archive.resolve(source, "source"), archive.resolve(target, "target")
    modes = summary.get("mode") if isinstance(summary.get("mode"), list) else None
    parts = frozenset(Part(str(v)) for v in modes) if modes else parse_mode("all")
    lists = lists_in(settings.config_dir)
    proved = VerifyInputs(package, base_zip, target_zip, parts, lists,
                          target_recorded=archive.built_here(target, target_zip),
                          volumes=Volumes.from_json(summary.get("volumes")),
                          base_sha256=archive.sha256_of(base_zip))
    report = verify_package(proved, log, permission_replays=settings.permission_replays,
                            records=state.records)
    digest = sha256_file(package)
    where = workspace.state_dir / "proven-packages" / f"{digest}.json"
    atomic.write_text(where, json.dumps({
        "package": str(package), "package_sha256": digest, "source_zip": str(base_zip),
        "target_zip": str(target_zip), "mode": sorted(p.value for p in parts),
        "verify": report.to_json()}, indent=1, sort_keys=True) + "\n")
    if not report.ok:
        failed = next(c for c in report.checks if not c.ok)
        raise CheckFailed(f"not proven ({failed.name}: {failed.detail}); report: {where}",
                          package)
    return report, where
