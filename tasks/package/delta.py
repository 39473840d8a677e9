"""`doit delta`: the DFOTA update.zip from a base version to the newest target.

What `update_gen.sh a|l|m|o` does, checked on the host before anything is written: versions
differ, noota files unchanged, every patch applied once and compared with the target's sha1,
the script parsed with the device's grammar, the package small enough for the module.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfota import __version__
from dfota.build.archive import Archive, archive_of, sha256_file
from dfota.build.targetfiles import (
    BOOT_IMAGE,
    SYSTEM,
    UPDATER,
    boot_partition,
    partition_map,
    system_mount,
    system_path,
    system_tree,
    zip_version,
)
from dfota.core import atomic
from dfota.core.errors import CheckFailed, DfotaError, shown_path
from dfota.core.runlog import Progress, RunLog
from dfota.core.tree import FILE, Tree
from dfota.formats.edify_parse import DEVICE_FUNCTIONS, EdifySyntaxError, parse
from dfota.formats.filelists import (
    FileLists,
    changed_noota_files,
    check_file_lists,
    lists_in,
    noota_changed_error,
)
from dfota.formats.version import VERSION_FILE, ProjectVersion
from dfota.formats.zipio import ZipItem, ZipSource, bytes_item, member_item, path_item, write_zip
from dfota.package.ahead import MEMBER_SHA1S
from dfota.package.patches import Blob, PatchJob, PatchOutcome, PatchRun
from dfota.package.plan import (
    Change,
    Kind,
    Part,
    expected_system,
    parse_mode,
    plan_changes,
    refuse_unwritable,
)
from dfota.package.space import cache_reason, refuse_beyond_system, ship_whole_beyond_cache
from dfota.package.writer import (
    BINARY_ENTRY,
    MAX_ENTRIES,
    PLACEHOLDER,
    SCRIPT_ENTRY,
    VERSION_ENTRY,
    PartitionWrite,
    empty_new_dirs,
    patch_entry,
    render_script,
    script_steps,
    whole_entry,
)
from dfota.report.summary import write_summary
from dfota.settings import (
    DeltaSettings,
    PackageInputs,
    Workspace,
    public_name,
    without_host_paths,
)
from dfota.state.store import State

BOOT_PATCH_ENTRY = "patch/boot.img.p"
BOOT_WHOLE_ENTRY = "boot.img"
MINOR_PREFIX = "MULTIFOTA/"
USRDATA_NEED = 60 * 1024 * 1024  # free usrdata the note asks for within a baseline (4.1)
USRDATA_NEED_CROSS = 110 * 1024 * 1024


def resolve_target(workspace: Workspace) -> Path:
    if not workspace.target_zip.is_file():
        raise DfotaError("no target targetfiles.zip: run `doit targetfiles` first",
                         workspace.target_zip)
    return workspace.target_zip


def resolve_base(settings: DeltaSettings, archive: Archive, target_key: str,
                 recorded_source: str) -> Path:
    """The base: the one asked for, else the source this workspace built the target on."""
    if settings.base:
        return archive.resolve(settings.base, "base")
    if not recorded_source:
        raise DfotaError(f"this workspace does not say which version {target_key} was built "
                         "on; pass --base VERSION", settings.workspace.record)
    version = archive.find(recorded_source)
    archive.check_intact(version)
    return version.zip_path


def downgrade_warning(base: ProjectVersion, target: ProjectVersion) -> str | None:
    """A package from a newer version to an older one, said plainly (made only when the base
    is named)."""
    if (base.package_time, base.key) <= (target.package_time, target.key):
        return None
    return (f"downgrade: the base {base.key} is newer than the target {target.key}; the "
            "package takes modules back to an older version")


@dataclass(frozen=True, slots=True)
class DeltaResult:
    package: Path | None  # None when nothing changed
    summary: Mapping[str, object]
    warnings: tuple[str, ...]
    inputs: PackageInputs  # what `doit verify` needs to prove the package


def _file_paths(tree: Tree) -> dict[str, str]:
    return {system_path(p): e.sha1 for p, e in tree.items() if e.kind == FILE}


def _minor_writes(base: ZipSource, target: ZipSource, mapping: Mapping[str, str | None],
                  ) -> tuple[list[PartitionWrite], list[ZipItem]]:
    writes, items = [], []
    for name in sorted(target.names(MINOR_PREFIX)):
        if target.members[name].kind != FILE:
            continue
        image = name[len(MINOR_PREFIX):]
        old = base.sha1(name) if name in base.members else ""
        new = target.sha1(name)
        if old == new:
            continue
        partition = mapping.get(image)
        if not partition:
            raise DfotaError(f"{name} changed but no partition is known for it: map it in "
                             "quectel_multifota_filelist.txt (`IMAGE PARTITION`) or "
                             "RADIO/filesmap; a guess could brick the module", target.path)
        entry = f"multifota/{image}"
        size = target.members[name].size
        writes.append(PartitionWrite(partition, entry, False,
                                     base.members[name].size if old else 0, old, size, new))
        items.append(member_item(entry, target.path, name, 0o644))
    return writes, items


def build_delta(settings: DeltaSettings, log: RunLog, recorded_source: str = "",  # noqa: PLR0913
                build_warnings: Sequence[str] = (), sdk: Path | None = None,
                state: State | None = None) -> DeltaResult:
    """`recorded_source`: the version this workspace built the target on (the default base);
    `build_warnings`: the target's build's, carried into the summary and the report; `sdk`:
    the SDK folder those warnings name (the summary names it without the host's layout);
    `state`: the workspace's (default: opened here)."""
    if state is None:
        with settings.workspace.open_state() as opened:
            return build_delta(settings, log, recorded_source, build_warnings, sdk, opened)
    started = time.monotonic()
    parts = parse_mode(settings.mode)
    lists = lists_in(settings.config_dir)
    archive = archive_of(settings.workspace, state)
    target_path = resolve_target(settings.workspace)
    with ZipSource(target_path) as target:
        target_version = zip_version(target)
        base_path = resolve_base(settings, archive, target_version.key, recorded_source)
        with ZipSource(base_path) as base:
            # the sha1s recorded in zips built here spare hashing every member (verify, the
            # independent check, hashes them all); a base from elsewhere is hashed once and
            # its sha1s kept by the zip's sha256
            recorded = (archive.built_here(zip_version(base).key, base_path),
                        archive.built_here(target_version.key, target_path))
            base_sha256 = archive.sha256_of(base_path)
            known = not recorded[0] and base.learn_sha1s(
                state.records.get(MEMBER_SHA1S, base_sha256))
            inputs = PackageInputs(base_path, target_path, settings.config_dir, sdk,
                                   base_sha256, archive.sha256_of(target_path))
            result = _build(settings, log, parts, lists, base, target, started, recorded,
                            tuple(build_warnings), inputs, state)
            if not recorded[0] and not known:
                state.records.put(MEMBER_SHA1S, base_sha256, base.known_sha1s())
            return result


def _build(settings: DeltaSettings, log: RunLog, parts: frozenset[Part], lists: FileLists,  # noqa: PLR0913
           base: ZipSource, target: ZipSource, started: float,
           recorded_sha1s: tuple[bool, bool], build_warnings: tuple[str, ...],
           inputs: PackageInputs, state: State) -> DeltaResult:
    source_version, target_version = zip_version(base), zip_version(target)
    downgrade = downgrade_warning(source_version, target_version)
    if source_version.key == target_version.key:
        raise DfotaError(f"base and target have the same version {target_version.key}: a module "
                         "could not tell them apart", target.path)
    if UPDATER not in target.members:
        raise DfotaError(f"has no {UPDATER} (the package's update-binary)", target.path)
    boot_changed = Part.KERNEL in parts and base.sha1(BOOT_IMAGE) != target.sha1(BOOT_IMAGE)
    progress = _DiffProgress(log)
    with PatchRun(cache=state.patches, workers=settings.workers or None,
                  timeout=settings.diff_timeout, progress=progress.line,
                  open_zips={base.path: base.zipfile, target.path: target.zipfile}) as diffs:
        if boot_changed:
            # the kernel's diff (the largest) needs neither tree: it runs while they are hashed
            diffs.add([PatchJob(BOOT_IMAGE,
                                Blob.in_zip(base.path, BOOT_IMAGE, base.sha1(BOOT_IMAGE),
                                            base.members[BOOT_IMAGE].size),
                                Blob.in_zip(target.path, BOOT_IMAGE, target.sha1(BOOT_IMAGE),
                                            target.members[BOOT_IMAGE].size))])
        return _build_on(settings, log, parts, lists, base, target, started, recorded_sha1s,
                         (source_version, target_version), boot_changed, diffs, progress,
                         [downgrade] if downgrade else [], build_warnings, inputs)


class _DiffProgress:
    """The diffs' lines go to the log; once the files to diff are known, a bar counts them."""

    def __init__(self, log: RunLog) -> None:
        self.log = log
        self.bar: Progress | None = None
        self.diffed = 0

    def line(self, text: str) -> None:
        self.log.detail(text)
        if text.startswith("diff "):
            self.diffed += 1
            if self.bar is not None:
                self.bar.advance()

    def start(self, total: int) -> Progress:
        self.bar = self.log.progress("diffing", total)
        self.bar.done = self.diffed  # the kernel's diff may be done already
        return self.bar


def _build_on(settings: DeltaSettings, log: RunLog, parts: frozenset[Part], lists: FileLists,  # noqa: C901, PLR0913, PLR0915
              base: ZipSource, target: ZipSource, started: float,
              recorded_sha1s: tuple[bool, bool],
              versions: tuple[ProjectVersion, ProjectVersion], boot_changed: bool,
              diffs: PatchRun, progress: _DiffProgress, first_warnings: list[str],
              build_warnings: tuple[str, ...], inputs: PackageInputs) -> DeltaResult:
    source_version, target_version = versions
    source_tree = system_tree(base, recorded_sha1s=recorded_sha1s[0])
    target_tree = system_tree(target, recorded_sha1s=recorded_sha1s[1])

    changed_noota = changed_noota_files(lists, _file_paths(source_tree), _file_paths(target_tree))
    if changed_noota:
        raise noota_changed_error(lists, changed_noota)
    warnings = first_warnings + check_file_lists(lists, [*target.members, *(n + "/" for n, m in
                                                           target.members.items()
                                                           if m.kind == "dir")])
    rel = SYSTEM + "/"
    changes = plan_changes(
        source_tree, target_tree, parts=parts,
        fullota=[p.removeprefix(rel) for p in lists.fullota],
        noota=[p.removeprefix(rel) for p in lists.noota])
    changes = ship_whole_beyond_cache(changes, settings.volumes)
    refuse_beyond_system(expected_system(source_tree, target_tree, parts, lists),
                         settings.volumes)
    refuse_unwritable([*(c.path for c in changes if c.target is not None
                         and c.kind not in (Kind.UNCHANGED, Kind.METADATA)),
                       *(f"{d}/{PLACEHOLDER}" for d in empty_new_dirs(changes, target_tree))])

    jobs = [PatchJob(c.path,
                     Blob.in_zip(base.path, system_path(c.path), c.source.sha1, c.source.size),
                     Blob.in_zip(target.path, system_path(c.path), c.target.sha1, c.target.size))
            for c in changes if c.kind is Kind.PATCHED and c.source and c.target]
    diff_started = time.monotonic()
    bar = progress.start(len(jobs) + boot_changed)
    diffs.add(jobs)
    outcomes = diffs.outcomes()
    bar.done = bar.total  # files served by the cache or decided by rule count as done
    bar.finish()
    diff_seconds = time.monotonic() - diff_started
    warnings += [f"{shown_path(system_path(o.name) if o.name != BOOT_IMAGE else BOOT_IMAGE)}: "
                 "shipped whole "
                 f"({o.whole_reason})" for o in outcomes.values() if o.is_fallback]
    changes = [Change(c.path, Kind.WHOLE, c.source, c.target, outcomes[c.path].whole_reason)
               if c.kind is Kind.PATCHED and outcomes[c.path].patch is None else c
               for c in changes]

    items: list[ZipItem] = []
    boot = None
    if boot_changed:
        outcome = outcomes[BOOT_IMAGE]
        # a partition is patched through a copy of it in /cache
        boot_patch = None if cache_reason(base.members[BOOT_IMAGE].size, settings.volumes) \
            else outcome.patch
        patched = boot_patch is not None
        boot = PartitionWrite(boot_partition(target),
                              BOOT_PATCH_ENTRY if patched else BOOT_WHOLE_ENTRY, patched,
                              base.members[BOOT_IMAGE].size, base.sha1(BOOT_IMAGE),
                              target.members[BOOT_IMAGE].size, target.sha1(BOOT_IMAGE))
        items.append(path_item(BOOT_PATCH_ENTRY, boot_patch, 0o644) if boot_patch is not None
                     else member_item(BOOT_WHOLE_ENTRY, target.path, BOOT_IMAGE, 0o644))
    minor: list[PartitionWrite] = []
    if Part.MINOR in parts:
        mapping: dict[str, str | None] = dict(partition_map(target))
        mapping.update({image: part for image, part in lists.multifota if part})
        minor, minor_items = _minor_writes(base, target, mapping)
        items += minor_items

    nothing = (all(c.kind is Kind.UNCHANGED for c in changes) and boot is None and not minor)
    if nothing:
        ws = settings.workspace
        for stale in (ws.update_zip, ws.pending_zip, ws.update_report):
            stale.unlink(missing_ok=True)  # a package of another pair would mislead
        summary = {"changed": False, "source": source_version.key,
                   "target": target_version.key, "mode": sorted(p.value for p in parts),
                   "warnings": warnings, "build_warnings": list(build_warnings)}
        write_summary(ws.update_summary, summary, inputs.places(ws))
        log.say(f"delta: nothing changed from {source_version.key} to {target_version.key} in "
            f"{settings.mode}; no package written")
        return DeltaResult(None, summary, tuple(warnings), inputs)

    version_sha1s = [source_tree[VERSION_FILE].sha1] if VERSION_FILE in source_tree else []
    version_change = next((c for c in changes if c.path == VERSION_FILE), None)
    if version_change is not None and version_change.target is not None and \
            version_change.kind is not Kind.UNCHANGED:
        version_sha1s.append(version_change.target.sha1)
    script = script_steps(source_key=source_version.key, target_key=target_version.key,
                          parts=parts, changes=changes, target=target_tree,
                          version_sha1s=version_sha1s, boot=boot, minor=minor,
                          chmod=lists.chmod, system_mount=system_mount(target))
    script_bytes = render_script(script)
    try:
        parse(script_bytes, DEVICE_FUNCTIONS)
    except EdifySyntaxError as exc:  # the writer's own fault, never the user's
        raise RuntimeError(f"the updater-script does not parse: {exc}") from exc

    items += [
        bytes_item(SCRIPT_ENTRY, script_bytes),
        member_item(BINARY_ENTRY, target.path, UPDATER, 0o755),
        bytes_item(VERSION_ENTRY, source_version.text.encode("utf-8")),
    ]
    for c in changes:
        # a patched file has its patch (one without is shipped whole), a whole one its target
        patch = outcomes[c.path].patch if c.kind is Kind.PATCHED else None
        if patch is not None:
            items.append(path_item(patch_entry(c.path), patch, 0o644))
        elif c.shipped_whole and c.target is not None:
            items.append(member_item(whole_entry(c.path), target.path, system_path(c.path),
                                     c.target.mode))
    items += [bytes_item(whole_entry(f"{d}/{PLACEHOLDER}"), b"")
              for d in empty_new_dirs(changes, target_tree)]
    if len(items) > MAX_ENTRIES:
        raise DfotaError(f"the package would hold {len(items)} entries; the module's zip "
                         f"reader takes at most {MAX_ENTRIES}: split the update (--mode)",
                         target.path)
    write_zip(settings.workspace.pending_zip, items, compress=True, meter=log,
              open_zips={target.path: target.zipfile})
    # the published package (of the previous pair) goes: only a proven one is ever there
    for stale in (settings.workspace.update_zip, settings.workspace.update_report):
        stale.unlink(missing_ok=True)
    size = settings.workspace.pending_zip.stat().st_size

    summary = _summary(settings, inputs, source_version.key, target_version.key, parts, changes,
                       outcomes, boot, minor, size, script_bytes, diff_seconds,
                       time.monotonic() - started)
    warnings += _budget_warnings(settings, size, changes)
    warnings += [f"/system/{shown_path(d)}: empty directory, carried by a placeholder file "
                 "(other tools "
                 "lose it; note 2.2.2.4)" for d in empty_new_dirs(changes, target_tree)]
    summary["warnings"] = warnings
    summary["build_warnings"] = list(build_warnings)
    summary["diff_timeouts"] = sum(1 for o in outcomes.values()
                                   if o.whole_reason.startswith("diff timed out"))
    write_summary(settings.workspace.update_summary, summary,
                  inputs.places(settings.workspace))
    return DeltaResult(settings.workspace.pending_zip, summary, tuple(warnings), inputs)


def _budget_warnings(settings: DeltaSettings, size: int, changes: Sequence[Change]) -> list[str]:
    mb = 1024 * 1024
    warnings = []
    if size > settings.size_budget:
        warnings.append(f"{shown_path(settings.workspace.update_zip)}: {size / mb:.1f} MB, "
                        "over the "
                        f"{settings.size_budget / mb:.0f} MB budget (note 2.4)")
    largest = max((c.target.size for c in changes if c.target is not None
                   and c.target.kind == FILE and c.kind is not Kind.UNCHANGED), default=0)
    need = size + largest
    if need > USRDATA_NEED:
        warnings.append(f"{shown_path(settings.workspace.update_zip)}: the module needs about "
                        f"{need / mb:.1f} MB free "
                        f"in usrdata (package + largest file); the note asks for more than "
                        f"{USRDATA_NEED / mb:.0f} MB within a baseline and "
                        f"{USRDATA_NEED_CROSS / mb:.0f} MB across baselines (4.1)")
    return warnings


def _summary(settings: DeltaSettings, inputs: PackageInputs, source_key: str, target_key: str,  # noqa: PLR0913
             parts: frozenset[Part],
             changes: Sequence[Change], outcomes: Mapping[str, PatchOutcome],
             boot: PartitionWrite | None,
             minor: Sequence[PartitionWrite], size: int, script: bytes, diff_seconds: float,
             seconds: float) -> dict[str, object]:
    counts = Counter(c.kind.value for c in changes if c.kind is not Kind.UNCHANGED)
    patch_bytes = sum(outcomes[c.path].patch_size for c in changes if c.kind is Kind.PATCHED)
    whole_bytes = sum(c.target.size for c in changes if c.shipped_whole and c.target)
    whole_reasons = Counter(c.reason or "new file" for c in changes if c.shipped_whole)
    entries: list[dict[str, str | int]] = [
        {"path": c.path, "kind": c.kind.value, "reason": c.reason,
         "bytes": _payload_bytes(c, outcomes)}
        for c in changes if c.kind is not Kind.UNCHANGED]
    by_folder: dict[str, dict[str, int]] = {}
    by_kind: Counter[str] = Counter()
    for e in entries:
        folder = by_folder.setdefault(str(e["path"]).split("/", 1)[0], {"bytes": 0, "entries": 0})
        folder["bytes"] += int(e["bytes"])
        folder["entries"] += 1
        by_kind[str(e["kind"])] += int(e["bytes"])
    if boot is not None:
        boot_bytes = (outcomes[BOOT_IMAGE].patch_size if boot.entry_is_patch
                      else boot.target_size)
        by_kind["kernel"] += boot_bytes
    by_kind["minor partitions"] += sum(m.target_size for m in minor)
    top = sorted(entries, key=lambda e: (-int(e["bytes"]), str(e["path"])))[:10]
    return {
        "tool": f"quecopen-dfota {__version__}",
        "changed": True,
        # where the package is until `doit verify` publishes it
        "package": public_name(settings.workspace.pending_zip, settings.workspace.root),
        "published": False,
        "package_size": size,
        "source": source_key,
        "target": target_key,
        "size_budget": settings.size_budget,
        "base_zip": public_name(inputs.base_zip, settings.workspace.root),
        "base_sha256": inputs.base_sha256,
        "target_zip": public_name(inputs.target_zip, settings.workspace.root),
        "target_sha256": inputs.target_sha256,
        "package_sha256": sha256_file(settings.workspace.pending_zip),
        "config": public_name(settings.config_dir, settings.workspace.root)
        if settings.config_dir else None,
        "mode": sorted(p.value for p in parts),
        "volumes": settings.volumes.to_json(),
        "counts": dict(sorted(counts.items())),
        "unchanged": sum(1 for c in changes if c.kind is Kind.UNCHANGED),
        "bytes": {"patches": patch_bytes, "whole_files": whole_bytes,
                  "script": len(script)},
        "whole_reasons": dict(sorted(whole_reasons.items())),
        "boot": None if boot is None else {
            "partition": boot.partition, "as": "patch" if boot.entry_is_patch else "image",
            "size": (outcomes[BOOT_IMAGE].patch_size if boot.entry_is_patch
                     else boot.target_size)},
        "minor": [{"partition": m.partition, "image": m.entry, "size": m.target_size}
                  for m in minor],
        "timings": {"diff_seconds": round(diff_seconds, 3), "total_seconds": round(seconds, 3)},
        "by_folder": dict(sorted(by_folder.items())),
        "by_kind": {k: v for k, v in sorted(by_kind.items()) if v},
        "top": top,
        "changes": entries,
    }


def _payload_bytes(change: Change, outcomes: Mapping[str, PatchOutcome]) -> int:
    """What an entry costs in the package (uncompressed): its patch, or the whole file."""
    if change.kind is Kind.PATCHED:
        return outcomes[change.path].patch_size
    if change.shipped_whole and change.target is not None:
        return change.target.size
    return 0


def describe(result: DeltaResult) -> str:
    s = result.summary
    if not s.get("changed"):
        return "delta: nothing to update"
    kinds, modes = s["counts"], s["mode"]
    assert isinstance(kinds, dict) and isinstance(modes, list)  # as `_summary` makes them
    counts = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return (f"delta: {result.package} ({s['package_size']} bytes, unverified: `doit verify` "
            f"proves and publishes it) {s['source']} -> {s['target']} [{','.join(modes)}]: "
            f"{counts or 'partitions only'}")



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
