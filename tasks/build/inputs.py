"""The inputs manifest, `<state>/targetfiles-inputs.json`: everything the target is made
from, by content (the hidden task `_targetfiles_inputs`, run by every `doit` that runs
targetfiles), with the rootfs scan and the source it was made from kept for `doit targetfiles`.
Light on purpose: a `doit` with nothing to do imports this, not the target's assembly
(dfota.build.assemble).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping
from pathlib import Path

from dfota.build.archive import Archive, archive_of
from dfota.build.manifest import scan_rootfs, sha1_of, write_if_changed
from dfota.build.sdk_image import ImageTreeReader
from dfota.build.targetfiles import SdkOutput, locate_sdk, rootfs_version
from dfota.core import atomic
from dfota.core.errors import DfotaError
from dfota.core.runlog import SILENT, Meter
from dfota.core.tree import Entry, FolderScan, digest_tree
from dfota.settings import SAMPLE_BASE, TargetfilesSettings
from dfota.state.store import State

SOURCE_RECORD = "targetfiles-source"  # the source found for an inputs manifest, by its digest
SCAN_RECORD = "rootfs-scan"  # the rootfs walk an inputs manifest was made from, by its digest


def resolve_source(settings: TargetfilesSettings, archive: Archive, target_key: str | None,
                   known: Collection[str]) -> Path:
    """The source targetfiles.zip: the one asked for, else the newest version this workspace
    built or imported (`known`) other than the target.

    With none, only the sample SDK falls back to the sample's base; a user's SDK never does
    (its versions must not be built on the sample's).
    """
    if settings.source:
        return archive.resolve(settings.source, "source")
    candidates = [v for v in archive.versions() if v.key != target_key and v.key in known]
    if candidates:
        archive.check_intact(candidates[-1])
        return candidates[-1].zip_path
    if settings.sdk_is_sample:
        return SAMPLE_BASE
    raise DfotaError("this workspace has no version to build on: run `doit import_base "
                     "--firmware DIR` once, or give `--source` a targetfiles.zip or an "
                     "archived version", settings.workspace.archive_dir)


def start_image_tree(settings: TargetfilesSettings, sdk: SdkOutput,
                     state: State) -> ImageTreeReader | None:
    """The reader of the SDK image's tree, for the drift warnings: from the record, or read
    in a worker from now on (seconds of decompressing, beside the hashing and zipping)."""
    if sdk.sysfs_ubi is None or settings.metadata_from_image:
        return None
    return ImageTreeReader(sdk.sysfs_ubi, state.records,
                           sha1_of(state.digests, sdk.sysfs_ubi))


def _inputs_key(manifest: Mapping[str, object]) -> str:
    return hashlib.sha1(json.dumps(manifest, sort_keys=True).encode("utf-8")).hexdigest()


def _notes_sha1(scan: FolderScan) -> str:
    """What the scan says beside its tree (what cannot be packed, hard links with a name
    outside the rootfs): the manifest names all the kept scan holds, and what targetfiles
    warns of or refuses is among its inputs."""
    notes = [list(scan.warnings), [[list(names), count] for names, count in scan.outside_links]]
    return hashlib.sha1(json.dumps(notes).encode("utf-8")).hexdigest()


def inputs_manifest(settings: TargetfilesSettings, known: Collection[str], state: State,
                    meter: Meter = SILENT) -> tuple[dict[str, object], FolderScan]:
    """Everything the target is made from, by content: what `doit targetfiles` depends on;
    and the rootfs scan it was made from. `known`: the versions this workspace built or
    imported (the default source is one of them). The source found is kept in `state` for
    this manifest (`recorded_source`): it is resolved once per run."""
    sdk = locate_sdk(settings.sdk)
    cache = state.digests
    archive = archive_of(settings.workspace, state)
    # the image's tree for targetfiles' drift check, read beside the rest of this (when the
    # record does not hold it): targetfiles then waits less for it, or not at all
    start_image_tree(settings, sdk, state)
    # a source the user named is hashed beside the rootfs walk (reading and hashing let the
    # interpreter go); the default one is known once the target's version is
    named = archive.resolve(settings.source, "source") if settings.source else None
    if named is None:
        scan, named_sha256 = scan_rootfs(sdk.rootfs, cache, meter), None
    else:
        hashing = atomic.Background(lambda: archive.sha256_of(named), "hash the source")
        try:
            scan = scan_rootfs(sdk.rootfs, cache, meter)
        finally:
            hashing.join()
        named_sha256 = hashing.wait()
    target = rootfs_version(sdk.rootfs, scan)
    source = named or resolve_source(settings, archive, target.key, known)
    manifest = {
        "boot_image": {"path": str(sdk.boot_image), "sha1": sha1_of(cache, sdk.boot_image)},
        "abl": {"path": str(sdk.abl), "sha1": sha1_of(cache, sdk.abl)},
        "rootfs": {"path": str(sdk.rootfs), "tree_sha1": digest_tree(scan.entries),
                   "entries": len(scan.entries), "notes_sha1": _notes_sha1(scan)},
        # by content only: the sample's base and its archived copy are the same source (its
        # sha256 as the archive records it: archiving it then needs no other hashing)
        "source_sha256": named_sha256 or archive.sha256_of(source),
        "target_version": target.key,
        "sysfs_ubi_sha1": sha1_of(cache, sdk.sysfs_ubi) if sdk.sysfs_ubi else None,
        "metadata_from_image": settings.metadata_from_image,
    }
    key = _inputs_key(manifest)
    if state.records.get(SOURCE_RECORD, key) != str(source):  # a run with nothing to do writes none
        state.records.put(SOURCE_RECORD, key, str(source), alone=True)
    return manifest, scan


def _scan_json(scan: FolderScan) -> dict[str, object]:
    return {"entries": [[e.path, e.kind, e.mode, e.uid, e.gid, e.size, e.sha1, e.link]
                        for e in scan.entries.values()],
            "empty_dirs": list(scan.empty_dirs), "warnings": list(scan.warnings),
            "outside_links": [[list(names), count] for names, count in scan.outside_links]}


def _scan_from_json(value: object) -> FolderScan | None:
    """The scan `_scan_json` wrote; None for anything else."""
    if not isinstance(value, dict):
        return None
    try:
        entries = {row[0]: Entry(*row) for row in value["entries"]}
        return FolderScan(entries, tuple(value["empty_dirs"]), tuple(value["warnings"]),
                          tuple((tuple(names), count) for names, count in value["outside_links"]))
    except (KeyError, TypeError, ValueError):
        return None


def write_inputs_manifest(settings: TargetfilesSettings, known: Collection[str], state: State,
                          meter: Meter = SILENT) -> None:
    """Write the inputs manifest and keep the rootfs scan it was made from for it, which
    `build_targetfiles` then takes instead of walking the rootfs again (each unless it is
    kept as it is already: a run with nothing to do writes nothing)."""
    manifest, scan = inputs_manifest(settings, known, state, meter)
    key = _inputs_key(manifest)
    if not state.records.holds(SCAN_RECORD, key):  # the key names all the scan holds
        state.records.put(SCAN_RECORD, key, _scan_json(scan), alone=True)
    write_if_changed(settings.workspace.inputs_manifest, manifest)


def _recorded(settings: TargetfilesSettings, state: State, name: str
              ) -> tuple[dict[str, object], object]:
    """The inputs manifest as it is now, and what `write_inputs_manifest` kept for it under
    `name` (None: nothing)."""
    manifest = atomic.read_json_object(settings.workspace.inputs_manifest)
    return manifest, state.records.get(name, _inputs_key(manifest)) if manifest else None


def recorded_source(settings: TargetfilesSettings, state: State) -> tuple[Path, str] | None:
    """The source `write_inputs_manifest` found for the inputs manifest as it is now, and
    its sha256 then; None when it kept none for it."""
    manifest, found = _recorded(settings, state, SOURCE_RECORD)
    sha256 = manifest.get("source_sha256")
    if not isinstance(found, str) or not isinstance(sha256, str):
        return None
    return Path(found), sha256


def recorded_scan(settings: TargetfilesSettings, state: State) -> FolderScan | None:
    """The rootfs scan `write_inputs_manifest` made the inputs manifest as it is now from;
    None when it kept none for it."""
    return _scan_from_json(_recorded(settings, state, SCAN_RECORD)[1])
