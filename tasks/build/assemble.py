"""`doit targetfiles`: check the inputs, assemble the target targetfiles.zip, archive both versions.

Nothing is written until every input has been read and checked; the zip is staged, admitted by
the archive (a version is never replaced by other content), the source and target staged whole
in the archive, put in place together, and only then `out/targetfiles.zip` renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import shutil
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dfota import __version__
from dfota.build.archive import ZIP_NAME, archive_of
from dfota.build.inputs import (
    recorded_scan,
    recorded_source,
    resolve_source,
    start_image_tree,
)
from dfota.build.manifest import known_crc, scan_rootfs, sha1_of
from dfota.build.sdk_image import image_volumes
from dfota.build.target_archive import (
    SOURCE_SHA1S,
    choose_layout,
    learn_source_sha1s,
    open_layout,
    out_is_target,
    relink_if_replaced,
    source_sha1s,
    target_in_place,
    traffic_line,
    with_known_sha1s,
)
from dfota.build.targetfiles import (
    ABL,
    BOOT_IMAGE,
    SdkOutput,
    check_source,
    locate_sdk,
    plan_target,
    rootfs_version,
    unknown_owners,
    zip_version,
)
from dfota.core import atomic, owner
from dfota.core.errors import DfotaError, shown_path
from dfota.core.runlog import RunLog
from dfota.core.tree import FolderScan, check_outside_links, digest_tree
from dfota.core.volumes import Volumes
from dfota.formats.version import VERSION_FILE, ProjectVersion
from dfota.formats.zipio import ZipItem, ZipSource
from dfota.formats.zipwrite import Traffic, write_stored_zip
from dfota.settings import (
    TargetfilesSettings,
    public_name,
)
from dfota.state.store import DigestCache, State
from dfota.state.workspace import read_record

TOOL = f"quecopen-dfota {__version__}"
STAGING_PREFIX = "targetfiles."


def against_sdk_image(sdk: SdkOutput, scan: FolderScan, metadata_from_image: bool
                      ) -> tuple[FolderScan, list[str], Volumes | None]:
    """The SDK's own sysfs image is what the module will run: warn where the rootfs folder
    drifts from it and, when asked, take SYSTEM's modes and owners from the image; and the
    sizes of the module's volumes it gives (None: no image)."""
    if sdk.sysfs_ubi is None:
        if metadata_from_image:
            raise DfotaError("no sdxlemur-sysfs.ubi to take the metadata from",
                             sdk.folder / "target")
        return scan, [], None
    from dfota.build.image_drift import image_drift, read_sdk_image, take_image_metadata

    image = read_sdk_image(sdk.sysfs_ubi)
    volumes = image_volumes(sdk.sysfs_ubi, image.volumes)
    warnings = image_drift(scan.entries, image)
    if metadata_from_image:
        entries, missing = take_image_metadata(scan.entries, image)
        return dataclasses.replace(scan, entries=entries), [*warnings, *missing], volumes
    return scan, warnings, volumes


@dataclass(frozen=True, slots=True)
class TargetfilesResult:
    zip_path: Path
    target_key: str
    source_key: str
    sha256: str
    entries: int
    archived_target: bool
    archived_source: bool
    warnings: tuple[str, ...]
    volumes: Volumes | None = None  # the sizes the SDK's image gives; None: no image
    traffic: Traffic | None = None  # what writing the zip moved
    layout: str | None = None  # the version members were copied from


class _Warnings:
    """The build's warnings, said as they come; with `strict_folder`, any is an error."""

    def __init__(self, log: RunLog, strict_folder: Path | None) -> None:
        self.log, self.strict_folder = log, strict_folder
        self.lines: list[str] = []

    def add(self, lines: list[str]) -> None:
        self.lines += lines
        for line in lines:
            self.log.say(f"warning: {line}")
        if self.strict_folder is not None and self.lines:
            raise DfotaError(f"{len(self.lines)} warning(s) and --strict is set",
                             self.strict_folder)


def build_targetfiles(settings: TargetfilesSettings, log: RunLog, known: Collection[str],
                      state: State | None = None, *, inputs_recorded: bool = False
                      ) -> TargetfilesResult:
    """`known`: the versions this workspace built or imported; `state`: the workspace's
    (default: opened here); `inputs_recorded`: `write_inputs_manifest` ran just before, in
    this command: the rootfs scan and the source it kept are taken (each file is checked
    against its hash again while it is zipped, so a change since is still refused). A rootfs
    file hard-linked from outside the rootfs is refused, or packed with a warning with
    `allow_outside_links`."""
    if state is None:
        with settings.workspace.open_state() as opened:
            return build_targetfiles(settings, log, known, opened,
                                     inputs_recorded=inputs_recorded)
    # imported here: the inputs manifest, which every run of doit makes, needs none of them
    from dfota.build.image_drift import sdk_image_drift
    from dfota.formats.bootimg import read_boot_image
    from dfota.formats.elf import read_abl_elf

    sdk = locate_sdk(settings.sdk)
    # read beside all that follows (the inputs step, when it ran, started it: this waits)
    image = start_image_tree(settings, sdk, state)
    read_boot_image(sdk.boot_image)
    read_abl_elf(sdk.abl)
    scan = recorded_scan(settings, state) if inputs_recorded else None
    if scan is None:
        scan = scan_rootfs(sdk.rootfs, state.digests, log)
        source = None
    else:
        source = recorded_source(settings, state)
    target_version = rootfs_version(sdk.rootfs, scan)
    linked = check_outside_links(scan, sdk.rootfs, settings.allow_outside_links)
    warnings = _Warnings(log, sdk.folder if settings.strict else None)
    warnings.add(linked)
    image_warnings: Callable[[], list[str]]
    image_sizes: Callable[[], Volumes | None]
    if image is not None:
        # the image only gives warnings and sizes
        reader, entries = image, scan.entries

        def image_warnings() -> list[str]:
            return sdk_image_drift(entries, reader)
        image_sizes = reader.volumes
    else:
        scan, found, volumes = against_sdk_image(sdk, scan, settings.metadata_from_image)
        image_warnings = found.copy

        def image_sizes() -> Volumes | None:
            return volumes
    # the rootfs against the SDK's image, compared beside the assembly (once the image's
    # reader is done, in a fresh workspace)
    drift = atomic.Background(image_warnings, "compare with the SDK image")
    try:
        result = _assemble(_Run(settings, log, sdk, state, known, warnings), scan,
                           target_version, drift.wait, source)
    finally:
        drift.join()
    return dataclasses.replace(result, volumes=image_sizes())


@dataclass(frozen=True, slots=True)
class _Run:
    """One `build_targetfiles`: its settings and log, the SDK output and the workspace's
    state, the versions this workspace built or imported, the warnings said so far."""

    settings: TargetfilesSettings
    log: RunLog
    sdk: SdkOutput
    state: State
    known: Collection[str]
    warnings: _Warnings


def _assemble(run: _Run, scan: FolderScan, target_version: ProjectVersion,
              image_warnings: Callable[[], list[str]],
              source: tuple[Path, str] | None) -> TargetfilesResult:
    """build_targetfiles once the rootfs is scanned; `image_warnings` (the rootfs against
    the SDK's image) is waited for once the zip is written, before anything is archived.
    `source`: the source the inputs manifest was made with, and its sha256 then (None:
    found here)."""
    settings, log, sdk, state, warnings = run.settings, run.log, run.sdk, run.state, run.warnings
    archive = archive_of(settings.workspace, state)
    cache = state.digests
    archive.clean_staging()
    if source is not None and source[0].is_file() and archive.sha256_of(source[0]) == source[1]:
        source_path = source[0]
    else:
        source_path = resolve_source(settings, archive, target_version.key, run.known)

    source_sha256 = archive.sha256_of(source_path)
    with ZipSource(source_path) as src, contextlib.ExitStack() as stack:
        source_version = zip_version(src)
        if source_version.key == target_version.key:
            raise DfotaError(f"has the source's version {source_version.key}; bump 'Package "
                             "Time' or 'Project Rev' for the new build",
                             sdk.rootfs / VERSION_FILE)
        archived_source = archive.get(source_version.key)
        same = archived_source is not None and archived_source.sha256 == source_sha256
        learn_source_sha1s(src, state.records, source_sha256,
                           archived_source if same else None)
        warnings.add([*check_source(src), *scan.warnings, *unknown_owners(sdk.rootfs, scan),
                      *(f"{shown_path(sdk.rootfs / d)}: "
                        "empty directory (the module's update drops empty "
                        "directories unless the package carries them; note 2.2.2.4)"
                        for d in scan.empty_dirs if d not in settings.empty_by_nature)])
        plan = plan_target(sdk, src, scan)
        items = with_known_sha1s(_images_hashed(plan.items, sdk, cache), src)
        choice, layout_warnings = choose_layout(
            archive, (read_record(settings.workspace.record).target_key, source_version.key))
        warnings.add(layout_warnings)
        remove_staging_leftovers(settings.workspace.state_dir)
        # out/targetfiles.zip is claimed (a temporary name beside it) before anything is
        # archived and renamed into place last: an out/ that cannot be written archives
        # nothing. Both versions are staged whole before either is put in place: a failure
        # (a full disk, a conflict with another run) archives nothing.
        batch = stack.enter_context(archive.batch())
        out = stack.enter_context(atomic.atomic_path(settings.workspace.target_zip,
                                                     archive.file_mode))
        created = datetime.now(timezone.utc).isoformat(timespec="seconds")
        source_new = archived_source is None
        # a source new to the archive is staged while the zip is written (the kernel's copy
        # and the disk's sync: waits, not CPU)
        def stage_source() -> None:
            if source_new:
                batch.stage(source_version.key, source_path, {
                    "origin": "source",
                    "imported_from": public_name(source_path, settings.workspace.root),
                    "version": source_version.to_json(), "created": created,
                    "tool": TOOL, "source": None}, sha256=source_sha256)

        source_staged = atomic.Background(stage_source, "stage the source")
        stack.callback(source_staged.join)
        staging = batch.staging(target_version.key)
        with archive.writing():
            written = write_stored_zip(staging / ZIP_NAME, items,
                                       layout=open_layout(choice, src, stack),
                                       known_crc=known_crc(cache),
                                       sources={source_path: src}, meter=log)
        synced = atomic.background_sync(staging / ZIP_NAME)
        source_staged.wait()
        archive.admit(source_version.key, source_sha256)
        target_new = archive.admit(target_version.key, written.sha256)
        warnings.add(image_warnings())  # with --strict, a warning stops the archiving
        synced()
        if target_new:
            batch.stage_written(target_version.key, staging, {
                "origin": "targetfiles", "version": target_version.to_json(),
                "source": source_version.key, "created": created, "tool": TOOL,
                "system_metadata": ("sdxlemur-sysfs.ubi" if settings.metadata_from_image
                                    else "ql-ol-rootfs"),
                "inputs": {
                    "sdk": public_name(sdk.folder, settings.workspace.root),
                    "sysfs_ubi_sha1": sha1_of(cache, sdk.sysfs_ubi) if sdk.sysfs_ubi else None,
                    "boot_image_sha1": sha1_of(cache, sdk.boot_image),
                    "abl_sha1": sha1_of(cache, sdk.abl),
                    "rootfs_tree_sha1": digest_tree(scan.entries),
                    "source_sha256": source_sha256,
                }}, written.sha256, members=written.sha1s)
        out_is_target(archive, out, target_version.key,
                      staging / ZIP_NAME if target_new else None, written.sha256)
        placed = target_in_place(batch, batch.commit(), target_version.key)
        relink_if_replaced(placed, out, archive)
        state.records.put(SOURCE_SHA1S, source_sha256, source_sha1s(src, items, written),
                          if_changed=True)
    # renaming a hard link over another link of the same file does nothing: out/ was that
    # zip already (a rerun), and the temporary name is still there
    out.unlink(missing_ok=True)
    # out/ and the archived zip are one file, or a copy: known as they are now, after the
    # renames and the mode that moved their change time
    for path in (placed.zip_path, settings.workspace.target_zip):
        archive.note_copy(path, written.sha256)
    log.detail(traffic_line(written.traffic))
    return TargetfilesResult(settings.workspace.target_zip, target_version.key, source_version.key,
                             written.sha256, len(plan.items), target_new, source_new,
                             tuple(warnings.lines), traffic=written.traffic,
                             layout=choice.version.key if choice else None)


def _images_hashed(items: Iterable[ZipItem], sdk: SdkOutput, cache: DigestCache
                   ) -> list[ZipItem]:
    """The SDK's kernel and abl items with their sha1s (from the digest cache), read from
    where their links lead: copied from the layout when it holds them already."""
    paths = {BOOT_IMAGE: sdk.boot_image, ABL: sdk.abl}
    return [dataclasses.replace(i, source_path=paths[i.name].resolve(),
                                sha1=sha1_of(cache, paths[i.name]))
            if i.name in paths and i.source_path is not None else i for i in items]


def remove_staging_leftovers(state_dir: Path) -> None:
    """Staging folders that a killed run left in the state folder (each holds a whole zip);
    never one of a run still going (dfota.core.owner). The folder is made if need be."""
    state_dir.mkdir(parents=True, exist_ok=True)
    for leftover in state_dir.glob(STAGING_PREFIX + "*"):
        if leftover.is_dir() and not leftover.is_symlink() and owner.is_leftover(leftover.name):
            shutil.rmtree(leftover, ignore_errors=True)


def describe(result: TargetfilesResult) -> str:
    archived = "archived" if result.archived_target else "already archived, same content"
    line = (f"targetfiles: {result.zip_path} ({result.entries} entries), version "
            f"{result.target_key} built on {result.source_key}; {archived}")
    traffic = result.traffic
    if traffic is not None:
        line += (f"\ntargetfiles: {len(traffic.written)} entries written "
                 f"({traffic.bytes_written / 1e6:.1f} MB), {traffic.copied} copied "
                 f"({traffic.bytes_copied / 1e6:.1f} MB) from "
                 f"{result.layout or 'no earlier version'} by the kernel")
    return line


def result_json(result: TargetfilesResult) -> str:
    return json.dumps({"zip": str(result.zip_path), "target": result.target_key,
                       "source": result.source_key, "sha256": result.sha256})
