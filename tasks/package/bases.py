"""`doit delta --bases`: one package per base, each proven in a folder of its own under
`out/deltas/`, and an index of them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from dfota.build.archive import Archive, archive_of
from dfota.build.targetfiles import zip_version
from dfota.core import atomic
from dfota.core.errors import CheckFailed, DfotaError, shown_path
from dfota.core.runlog import RunLog
from dfota.formats.version import ProjectVersion
from dfota.formats.zipio import ZipSource
from dfota.package.delta import build_delta, resolve_target
from dfota.settings import (
    DeltaSettings,
    PackageInputs,
    Workspace,
    public_name,
    without_host_paths,
)
from dfota.state.store import State


@dataclass(frozen=True, slots=True)
class BaseOutcome:
    base: str
    folder: Path
    ok: bool
    message: str
    package_size: int = 0


def pick_bases(spec: str, archive: Archive, target: ProjectVersion,
               known: Collection[str]) -> tuple[list[str], list[str]]:
    """The bases of `--bases` and the warnings about them. `N`: the N newest versions older
    than the target among those this workspace built or imported (`known`); else a comma
    list of keys, unique key prefixes or targetfiles.zip paths (a newer one only so, by name)."""
    spec = spec.strip()
    if not spec.isdigit():
        return [word.strip() for word in spec.split(",") if word.strip()], []
    wanted = int(spec)
    older = [v.key for v in archive.versions() if v.key in known
             and (v.package_time, v.key) < (f"{target.package_time:%Y-%m-%d,%H:%M}", target.key)]
    if not older:
        raise DfotaError(f"--bases {spec}: this workspace has no version older than "
                         f"{target.key}", archive.root)
    warnings = [] if len(older) >= wanted else [
        f"--bases {spec}: this workspace has only {len(older)} version(s) older than "
        f"{target.key}; making {len(older)} package(s)"]
    return list(reversed(older[-wanted:])), warnings


def build_for_bases(settings: DeltaSettings, log: RunLog, known: Collection[str],
                    verify: Callable[[Workspace, RunLog, PackageInputs, State], object],
                    state: State) -> list[BaseOutcome]:
    """One verified package per base, each in `<out>/deltas/<base>_to_<target>/`, and an index.

    `out/deltas/` holds this run's packages only. A base that fails does not stop the
    others; the index says which failed, and a CheckFailed at the end makes the run's exit
    code say so.
    """
    target_path = resolve_target(settings.workspace)
    with ZipSource(target_path) as target:
        target_version = zip_version(target)
    target_key = target_version.key
    archive = archive_of(settings.workspace, state)
    root = settings.workspace.deltas_dir
    bases, warnings = pick_bases(settings.bases, archive, target_version, known)
    for warning in warnings:
        log.say(f"warning: {warning}")
    shutil.rmtree(root, ignore_errors=True)  # packages of an earlier run or target
    outcomes: list[BaseOutcome] = []
    for base in bases:
        label = Path(base).stem if base.endswith(".zip") else base
        folder = root / f"{label}_to_{target_key}"
        workspace = dataclasses.replace(settings.workspace, out_dir=folder, target=target_path)
        one = dataclasses.replace(settings, base=base, bases="", workspace=workspace)
        log.say(f"delta: base {shown_path(base)}")
        try:
            result = build_delta(one, log, state=state)
            for warning in result.warnings:
                log.say(f"warning: {warning}")
            if result.package is not None:
                verify(workspace, log, result.inputs, state)
            size = result.summary.get("package_size", 0)  # none when nothing changed
            outcomes.append(BaseOutcome(base, folder, True, "verified" if result.package
                                        else "nothing changed",
                                        size if isinstance(size, int) else 0))
        except DfotaError as exc:
            log.say(f"error: {exc}")
            outcomes.append(BaseOutcome(base, folder, False, str(exc)))
    ws = settings.workspace
    index = {"target": target_key, "warnings": warnings, "packages": [
        {"base": public_name(Path(o.base), ws.root) if o.base.endswith(".zip") else o.base,
         "folder": public_name(o.folder, ws.root) if o.folder.exists() else None,
         "package": public_name(o.folder / "update.zip", ws.root)
         if (o.folder / "update.zip").is_file() else None,
         "ok": o.ok, "result": o.message, "package_size": o.package_size}
        for o in outcomes]}
    public = without_host_paths(index, {ws.out_dir: public_name(ws.out_dir, ws.root),
                                        ws.state_dir: public_name(ws.state_dir, ws.root)})
    atomic.write_text(root / "index.json", json.dumps(public, indent=1) + "\n")
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise CheckFailed(f"{len(failed)} of {len(outcomes)} bases failed: "
                          + ", ".join(o.base for o in failed), root / "index.json")
    return outcomes
