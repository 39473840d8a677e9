"""`doit delta`: the DFOTA update.zip from a base version to the newest target.

What `update_gen.sh a|l|m|o` does, checked on the host before anything is written: versions
differ, noota files unchanged, every patch applied once and compared with the target's sha1,
the script parsed with the device's grammar, the package small enough for the module. Its
summary is `dfota.package.summary`'s; one package per base (`--bases`) is
`dfota.package.bases`'.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfota.build.archive import Archive, archive_of
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
from dfota.core.errors import DfotaError, shown_path
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
from dfota.package.blobs import Blob
from dfota.package.mode import Part, parse_mode
from dfota.package.patches import DiffOptions, PatchJob, PatchOutcome, PatchRun
from dfota.package.plan import (
    Change,
    Kind,
    Span,
    expected_system,
    plan_changes,
    refuse_unwritable,
)
from dfota.package.space import cache_reason, refuse_beyond_system, ship_whole_beyond_cache
from dfota.package.summary import Contents, Figures, budget_warnings, package_summary
from dfota.package.writer import (
    BINARY_ENTRY,
    MAX_ENTRIES,
    PLACEHOLDER,
    SCRIPT_ENTRY,
    VERSION_ENTRY,
    PartitionWrite,
    TargetSystem,
    Writes,
    earlier_streams,
    empty_new_dirs,
    note_package,
    patch_entry,
    render_script,
    script_steps,
    whole_entry,
    without_zip64,
)
from dfota.report.summary import write_summary
from dfota.settings import DeltaSettings, PackageInputs, Workspace
from dfota.state.store import State

BOOT_PATCH_ENTRY = "patch/boot.img.p"
BOOT_WHOLE_ENTRY = "boot.img"
MINOR_PREFIX = "MULTIFOTA/"


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


@dataclass(frozen=True)
class TargetBuild:
    """What this workspace's `doit targetfiles` recorded of the target: the version it was
    built on (the default base), its build's warnings (carried into the summary and the
    report), and the SDK folder they name (the summary names it without the host's layout)."""

    source: str = ""
    warnings: Sequence[str] = ()
    sdk: Path | None = None


NOT_RECORDED = TargetBuild()


@dataclass(frozen=True)
class _Delta:
    """One package being made: its settings and inputs, the base and target zips (open), their
    versions, and whether each zip's recorded sha1s stand for its files."""

    settings: DeltaSettings
    log: RunLog
    parts: frozenset[Part]
    lists: FileLists
    base: ZipSource
    target: ZipSource
    versions: tuple[ProjectVersion, ProjectVersion]
    recorded_sha1s: tuple[bool, bool]
    inputs: PackageInputs
    build_warnings: tuple[str, ...]
    started: float
    state: State

    @property
    def span(self) -> Span:
        return Span(self.versions[0].key, self.versions[1].key, self.parts)


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


def build_delta(settings: DeltaSettings, log: RunLog, built: TargetBuild = NOT_RECORDED,
                state: State | None = None) -> DeltaResult:
    """`built`: what the target's build recorded (none: the base is `--base`); `state`: the
    workspace's (default: opened here)."""
    if state is None:
        with settings.workspace.open_state() as opened:
            return build_delta(settings, log, built, opened)
    started = time.monotonic()
    parts = parse_mode(settings.mode)
    lists = lists_in(settings.config_dir)
    archive = archive_of(settings.workspace, state)
    target_path = resolve_target(settings.workspace)
    with ZipSource(target_path) as target:
        target_version = zip_version(target)
        base_path = resolve_base(settings, archive, target_version.key, built.source)
        with ZipSource(base_path) as base:
            source_version = zip_version(base)
            # the sha1s recorded in zips built here spare hashing every member (verify, the
            # independent check, hashes them all); a base from elsewhere is hashed once and
            # its sha1s kept by the zip's sha256
            recorded = (archive.built_here(source_version.key, base_path),
                        archive.built_here(target_version.key, target_path))
            base_sha256 = archive.sha256_of(base_path)
            known = not recorded[0] and base.learn_sha1s(
                state.records.get(MEMBER_SHA1S, base_sha256))
            inputs = PackageInputs(base_path, target_path, settings.config_dir, built.sdk,
                                   base_sha256, archive.sha256_of(target_path))
            result = _build(_Delta(settings, log, parts, lists, base, target,
                                   (source_version, target_version), recorded, inputs,
                                   tuple(built.warnings), started, state), state)
            if not recorded[0] and not known:
                state.records.put(MEMBER_SHA1S, base_sha256, base.known_sha1s())
            return result


def _build(delta: _Delta, state: State) -> DeltaResult:
    base, target = delta.base, delta.target
    source_version, target_version = delta.versions
    downgrade = downgrade_warning(source_version, target_version)
    if source_version.key == target_version.key:
        raise DfotaError(f"base and target have the same version {target_version.key}: a module "
                         "could not tell them apart", target.path)
    if UPDATER not in target.members:
        raise DfotaError(f"has no {UPDATER} (the package's update-binary)", target.path)
    boot_changed = Part.KERNEL in delta.parts and \
        base.sha1(BOOT_IMAGE) != target.sha1(BOOT_IMAGE)
    progress = _DiffProgress(delta.log, boot_changed)
    diffing = DiffOptions(delta.settings.workers or None, delta.settings.diff_timeout)
    with PatchRun(cache=state.patches, options=diffing, progress=progress.line,
                  open_zips={base.path: base.zipfile, target.path: target.zipfile}) as diffs:
        if boot_changed:
            # the kernel's diff (the largest) needs neither tree: it runs while they are hashed
            diffs.add([PatchJob(BOOT_IMAGE,
                                Blob.in_zip(base.path, BOOT_IMAGE, base.sha1(BOOT_IMAGE),
                                            base.members[BOOT_IMAGE].size),
                                Blob.in_zip(target.path, BOOT_IMAGE, target.sha1(BOOT_IMAGE),
                                            target.members[BOOT_IMAGE].size))])
        return _build_on(delta, diffs, progress, [downgrade] if downgrade else [])


class _DiffProgress:
    """The diffs' lines go to the log; once the files to diff are known, a bar counts them.
    `boot_changed`: the kernel is diffed too (first)."""

    def __init__(self, log: RunLog, boot_changed: bool) -> None:
        self.log = log
        self.boot_changed = boot_changed
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


@dataclass(frozen=True)
class _Diffed:
    """The changes once diffed (a patch that failed or was too large: shipped whole), every
    diff's outcome, the seconds they took, and a warning per diff that fell back."""

    changes: list[Change]
    outcomes: dict[str, PatchOutcome]
    seconds: float
    warnings: list[str]


def _build_on(delta: _Delta, diffs: PatchRun, progress: _DiffProgress,
              warnings: list[str]) -> DeltaResult:
    """The package from the trees on: planned, diffed, scripted, written and summed up."""
    source_tree = system_tree(delta.base, recorded_sha1s=delta.recorded_sha1s[0])
    target_tree = system_tree(delta.target, recorded_sha1s=delta.recorded_sha1s[1])
    planned, list_warnings = _plan(delta, source_tree, target_tree)
    diffed = _diff(delta, planned, diffs, progress)
    warnings = warnings + list_warnings + diffed.warnings
    changes = diffed.changes

    items: list[ZipItem] = []
    boot = None
    if progress.boot_changed:
        boot, boot_item = _boot_write(delta, diffed.outcomes[BOOT_IMAGE])
        items.append(boot_item)
    minor: list[PartitionWrite] = []
    if Part.MINOR in delta.parts:
        mapping: dict[str, str | None] = dict(partition_map(delta.target))
        mapping.update({image: part for image, part in delta.lists.multifota if part})
        minor, minor_items = _minor_writes(delta.base, delta.target, mapping)
        items += minor_items

    if all(c.kind is Kind.UNCHANGED for c in changes) and boot is None and not minor:
        return _nothing_changed(delta, warnings)

    writes = Writes(changes, boot, minor)
    contents = Contents(writes, diffed.outcomes, _script(delta, source_tree, target_tree, writes))
    size = _write_package(delta, items + _entries(delta, contents, target_tree))
    settings = delta.settings
    summary = package_summary(settings, delta.inputs, delta.span, contents,
                              Figures(size, diffed.seconds, time.monotonic() - delta.started))
    warnings += budget_warnings(settings, size, changes)
    warnings += [f"/system/{shown_path(d)}: empty directory, carried by a placeholder file "
                 "(other tools "
                 "lose it; note 2.2.2.4)" for d in empty_new_dirs(changes, target_tree)]
    note_package(settings.workspace, delta.state, str(summary["package_sha256"]))
    summary["warnings"] = warnings
    summary["build_warnings"] = list(delta.build_warnings)
    summary["diff_timeouts"] = sum(1 for o in diffed.outcomes.values()
                                   if o.whole_reason.startswith("diff timed out"))
    write_summary(settings.workspace.update_summary, summary,
                  delta.inputs.places(settings.workspace))
    return DeltaResult(settings.workspace.pending_zip, summary, tuple(warnings), delta.inputs)


def _plan(delta: _Delta, source_tree: Tree, target_tree: Tree) -> tuple[list[Change], list[str]]:
    """Each entry's change, checked against the noota list and the module's room and names;
    the vendor lists' warnings."""
    lists, target, volumes = delta.lists, delta.target, delta.settings.volumes
    changed_noota = changed_noota_files(lists, _file_paths(source_tree), _file_paths(target_tree))
    if changed_noota:
        raise noota_changed_error(lists, changed_noota)
    warnings = check_file_lists(lists, [*target.members, *(n + "/" for n, m in
                                                           target.members.items()
                                                           if m.kind == "dir")])
    rel = SYSTEM + "/"
    changes = plan_changes(
        source_tree, target_tree, parts=delta.parts,
        fullota=[p.removeprefix(rel) for p in lists.fullota],
        noota=[p.removeprefix(rel) for p in lists.noota])
    changes = ship_whole_beyond_cache(changes, volumes)
    refuse_beyond_system(expected_system(source_tree, target_tree, delta.parts, lists), volumes)
    refuse_unwritable([*(c.path for c in changes if c.target is not None
                         and c.kind not in (Kind.UNCHANGED, Kind.METADATA)),
                       *(f"{d}/{PLACEHOLDER}" for d in empty_new_dirs(changes, target_tree))])
    return changes, warnings


def _diff(delta: _Delta, changes: list[Change], diffs: PatchRun,
          progress: _DiffProgress) -> _Diffed:
    """Every patched file diffed (the kernel's diff may run already); a file whose patch
    failed or was too large is shipped whole instead."""
    base, target = delta.base, delta.target
    jobs = [PatchJob(c.path,
                     Blob.in_zip(base.path, system_path(c.path), c.source.sha1, c.source.size),
                     Blob.in_zip(target.path, system_path(c.path), c.target.sha1, c.target.size))
            for c in changes if c.kind is Kind.PATCHED and c.source and c.target]
    diff_started = time.monotonic()
    bar = progress.start(len(jobs) + progress.boot_changed)
    diffs.add(jobs)
    outcomes = diffs.outcomes()
    bar.done = bar.total  # files served by the cache or decided by rule count as done
    bar.finish()
    diff_seconds = time.monotonic() - diff_started
    warnings = [f"{shown_path(system_path(o.name) if o.name != BOOT_IMAGE else BOOT_IMAGE)}: "
                "shipped whole "
                f"({o.whole_reason})" for o in outcomes.values() if o.is_fallback]
    changes = [Change(c.path, Kind.WHOLE, c.source, c.target, outcomes[c.path].whole_reason)
               if c.kind is Kind.PATCHED and outcomes[c.path].patch is None else c
               for c in changes]
    return _Diffed(changes, outcomes, diff_seconds, warnings)


def _boot_write(delta: _Delta, outcome: PatchOutcome) -> tuple[PartitionWrite, ZipItem]:
    """The boot partition's write, as a patch or the whole image, and its entry."""
    base, target = delta.base, delta.target
    # a partition is patched through a copy of it in /cache
    boot_patch = None if cache_reason(base.members[BOOT_IMAGE].size, delta.settings.volumes) \
        else outcome.patch
    patched = boot_patch is not None
    boot = PartitionWrite(boot_partition(target),
                          BOOT_PATCH_ENTRY if patched else BOOT_WHOLE_ENTRY, patched,
                          base.members[BOOT_IMAGE].size, base.sha1(BOOT_IMAGE),
                          target.members[BOOT_IMAGE].size, target.sha1(BOOT_IMAGE))
    return boot, (path_item(BOOT_PATCH_ENTRY, boot_patch, 0o644) if boot_patch is not None
                  else member_item(BOOT_WHOLE_ENTRY, target.path, BOOT_IMAGE, 0o644))


def _nothing_changed(delta: _Delta, warnings: list[str]) -> DeltaResult:
    """No package: the summary says so, and no package of another pair is left."""
    settings, (source_version, target_version) = delta.settings, delta.versions
    ws = settings.workspace
    for stale in (ws.update_zip, ws.pending_zip, ws.update_report):
        stale.unlink(missing_ok=True)  # a package of another pair would mislead
    summary = {"changed": False, "source": source_version.key,
               "target": target_version.key, "mode": sorted(p.value for p in delta.parts),
               "warnings": warnings, "build_warnings": list(delta.build_warnings)}
    write_summary(ws.update_summary, summary, delta.inputs.places(ws))
    delta.log.say(f"delta: nothing changed from {source_version.key} to {target_version.key} "
                  f"in {settings.mode}; no package written")
    return DeltaResult(None, summary, tuple(warnings), delta.inputs)


def _script(delta: _Delta, source_tree: Tree, target_tree: Tree, writes: Writes) -> bytes:
    """The updater-script, parsed back with the device's grammar."""
    version_sha1s = [source_tree[VERSION_FILE].sha1] if VERSION_FILE in source_tree else []
    version_change = next((c for c in writes.changes if c.path == VERSION_FILE), None)
    if version_change is not None and version_change.target is not None and \
            version_change.kind is not Kind.UNCHANGED:
        version_sha1s.append(version_change.target.sha1)
    script = script_steps(delta.span, writes,
                          TargetSystem(target_tree, delta.lists.chmod, system_mount(delta.target)),
                          version_sha1s)
    script_bytes = render_script(script)
    try:
        parse(script_bytes, DEVICE_FUNCTIONS)
    except EdifySyntaxError as exc:  # the writer's own fault, never the user's
        raise RuntimeError(f"the updater-script does not parse: {exc}") from exc
    return script_bytes


def _entries(delta: _Delta, contents: Contents, target_tree: Tree) -> list[ZipItem]:
    """The package's entries after the partitions': the script, the updater, the source's
    version, then each patch and whole file, then the empty folders' placeholders."""
    target, changes = delta.target, contents.writes.changes
    items = [
        bytes_item(SCRIPT_ENTRY, contents.script),
        member_item(BINARY_ENTRY, target.path, UPDATER, 0o755),
        bytes_item(VERSION_ENTRY, delta.versions[0].text.encode("utf-8")),
    ]
    for c in changes:
        # a patched file has its patch (one without is shipped whole), a whole one its target
        patch = contents.outcomes[c.path].patch if c.kind is Kind.PATCHED else None
        if patch is not None:
            items.append(path_item(patch_entry(c.path), patch, 0o644))
        elif c.shipped_whole and c.target is not None:
            items.append(member_item(whole_entry(c.path), target.path, system_path(c.path),
                                     c.target.mode))
    items += [bytes_item(whole_entry(f"{d}/{PLACEHOLDER}"), b"")
              for d in empty_new_dirs(changes, target_tree)]
    return items


def _write_package(delta: _Delta, items: list[ZipItem]) -> int:
    """The package written aside (`pending_zip`), the published one of the previous pair
    gone; its size."""
    target, ws = delta.target, delta.settings.workspace
    if len(items) > MAX_ENTRIES:
        raise DfotaError(f"the package would hold {len(items)} entries; the module's zip "
                         f"reader takes at most {MAX_ENTRIES}: split the update (--mode)",
                         target.path)
    # the module's reader takes no ZIP64; an entry the previous package holds is written
    # with its deflated bytes there, not deflated again
    with without_zip64(), earlier_streams(ws, delta.state) as reuse:
        write_zip(ws.pending_zip, items, compress=True, meter=delta.log,
                  open_zips={target.path: target.zipfile}, reuse=reuse)
    # the published package (of the previous pair) goes: only a proven one is ever there
    for stale in (ws.update_zip, ws.update_report):
        stale.unlink(missing_ok=True)
    return ws.pending_zip.stat().st_size


def describe(result: DeltaResult) -> str:
    s = result.summary
    if not s.get("changed"):
        return "delta: nothing to update"
    kinds, modes = s["counts"], s["mode"]
    assert isinstance(kinds, dict) and isinstance(modes, list)  # as `package_summary` makes them
    counts = ", ".join(f"{n} {k}" for k, n in kinds.items())
    return (f"delta: {result.package} ({s['package_size']} bytes, unverified: `doit verify` "
            f"proves and publishes it) {s['source']} -> {s['target']} [{','.join(modes)}]: "
            f"{counts or 'partitions only'}")
