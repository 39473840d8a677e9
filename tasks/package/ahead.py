"""What `doit delta` asks for that can be made before the target is built: the work of the
hidden task `_delta_ahead`, which a command that runs `delta` (the default chain, `doit delta`,
`doit verify`) runs once the inputs manifest is written, in a task process of its own beside
`targetfiles` (DOIT_CONFIG's `num_process`). `doit targetfiles` alone never runs it.

Two things, each kept in the state (dfota.state.store) where delta already looks, so delta's code
does not change:
- the sha1 of every entry of a base not built here, in a record keyed by the zip's sha256
  (`MEMBER_SHA1S`);
- the kernel's patch, from the base's boot image to the SDK's (the target's), in the patch
  cache, diffed in a worker while the sha1s are taken.
What an earlier run kept (the record, a patch of the kernel in the cache) is not made again:
then the base is not even opened.
And delta's code is loaded (`load_delta_code`) when delta will make a new package: delta
then runs in this task process, idle while targetfiles runs, with nothing left to load.
The base is the one delta takes: `--base`, else the source the inputs manifest was made with.
Nothing here is trusted more than delta's own work: the sha1s are keyed by the zip's bytes,
and a patch from the cache is applied and checked again when delta takes it. A failure here
says nothing: delta meets the same input and reports it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from dfota.build.targetfiles import BOOT_IMAGE
from dfota.core import atomic
from dfota.core.errors import DfotaError
from dfota.core.tree import FILE
from dfota.settings import DeltaSettings, TargetfilesSettings, Workspace
from dfota.state.store import BlobCache, Records, State

MEMBER_SHA1S = "member-sha1s"  # the record of a zip's entries' sha1s, by the zip's sha256


@dataclass(frozen=True)
class AheadWork:
    base_zip: Path
    base_sha256: str | None  # keep the base's sha1s under this key; None: not needed
    boot_image: Path | None  # the SDK's: the target's kernel; None: no kernel's patch wanted
    boot_sha1: str
    records: Records
    patch_cache: BlobCache
    diff_timeout: float


def make(work: AheadWork) -> str:
    """Do `work`; a line on what was made (nothing, and why, when an input is wrong)."""
    from dfota.formats.zipio import ZipSource
    from dfota.package.blobs import Blob
    from dfota.package.patches import DiffOptions, PatchJob, PatchRun

    started, done = time.monotonic(), []
    if work.base_sha256 is None and work.boot_image is None:  # the base need not be opened
        return f"made ahead for delta in {time.monotonic() - started:.1f} s: nothing"
    try:
        with ZipSource(work.base_zip) as base, contextlib.ExitStack() as stack:
            boot, run = work.boot_image, None
            if boot is not None and BOOT_IMAGE in base.members and \
                    base.sha1(BOOT_IMAGE) != work.boot_sha1:  # diffed while the sha1s are taken
                run = stack.enter_context(PatchRun(
                    cache=work.patch_cache,
                    options=DiffOptions(workers=1, timeout=work.diff_timeout),
                    open_zips={base.path: base.zipfile}))
                run.add([PatchJob(BOOT_IMAGE,
                                  Blob.in_zip(base.path, BOOT_IMAGE, base.sha1(BOOT_IMAGE),
                                              base.members[BOOT_IMAGE].size),
                                  Blob.on_disk(boot, work.boot_sha1, boot.stat().st_size))])
            if work.base_sha256 is not None:
                for name, member in base.members.items():
                    if member.kind == FILE:
                        base.sha1(name)
                kept = base.known_sha1s()
                work.records.put(MEMBER_SHA1S, work.base_sha256, kept)
                done.append(f"the sha1s of the base's {len(kept)} files")
            if run is not None:
                outcome = run.outcomes()[BOOT_IMAGE]
                done.append("the kernel's patch" + (" (from the cache)" if outcome.cached else ""))
    except (DfotaError, OSError) as exc:
        return f"made ahead for delta: nothing ({exc})"
    return (f"made ahead for delta in {time.monotonic() - started:.1f} s: "
            + (", ".join(done) or "nothing"))


def plan(delta: DeltaSettings, targetfiles: TargetfilesSettings, state: State) -> AheadWork:
    """What the next delta asks for, from what the inputs manifest says (the base, unless
    `--base` names another: the source it was made with; the SDK's boot image)."""
    from dfota.build.archive import archive_of
    from dfota.build.inputs import recorded_source
    from dfota.build.targetfiles import zip_version
    from dfota.formats.zipio import ZipSource
    from dfota.package.mode import Part, parse_mode
    from dfota.package.patches import in_cache

    ws = delta.workspace
    archive = archive_of(ws, state)
    if delta.base:
        base = archive.resolve(delta.base, "base")
    else:
        found = recorded_source(targetfiles, state)
        if found is None:
            raise DfotaError("names no source that was found for it", ws.inputs_manifest)
        base = found[0]
    sha256 = archive.sha256_of(base)
    boot = atomic.read_json_object(ws.inputs_manifest).get("boot_image")
    path, sha1 = (boot.get("path"), boot.get("sha1")) if isinstance(boot, dict) else (None, None)
    if Part.KERNEL not in parse_mode(delta.mode) or not isinstance(path, str) or \
            not isinstance(sha1, str):
        path = sha1 = None
    hash_base: str | None = None  # the key to keep the base's sha1s under, if needed
    if state.records.holds(MEMBER_SHA1S, sha256):
        kept = state.records.get(MEMBER_SHA1S, sha256)  # by an earlier run
        base_boot = kept.get(BOOT_IMAGE) if isinstance(kept, dict) else None
        if sha1 is not None and isinstance(base_boot, str) and \
                (base_boot == sha1 or in_cache(state.patches, base_boot, sha1)):
            path = sha1 = None  # the same kernel, or its patch made by an earlier run
    else:  # a base built here needs no record: its manifest has its sha1s
        with ZipSource(base) as zf:
            key = zip_version(zf).key
        hash_base = None if archive.built_here(key, base) else sha256
    return AheadWork(base, hash_base, Path(path) if path else None, sha1 or "", state.records,
                     state.patches, delta.diff_timeout)


# what delta loads to make a package: its modules with jinja2 (the script's template), and
# detools, which the diff workers are forked with (~0.1 s in all)
DELTA_CODE = ("dfota.package.bases", "dfota.package.delta", "detools")


def load_delta_code(workspace: Workspace) -> bool:
    """Load delta's code now when delta will make a package for a target it has not made one
    for (the inputs manifest names a target the package summary does not): a command that
    runs delta runs it in this task process, idle while targetfiles runs. False: not loaded
    (delta has most likely nothing to do)."""
    target = atomic.read_json_object(workspace.inputs_manifest).get("target_version")
    if atomic.read_json_object(workspace.update_summary).get("target") == target:
        return False
    for module in DELTA_CODE:
        importlib.import_module(module)
    return True


def make_ahead(delta: DeltaSettings, targetfiles: TargetfilesSettings) -> str:
    """`_delta_ahead`'s work: plan it, make it, and note it in its target
    (`Workspace.delta_ahead`); a line on what was made."""
    ws = delta.workspace
    with ws.open_state() as state:
        try:
            work: AheadWork | None = plan(delta, targetfiles, state)
        except (DfotaError, OSError) as exc:
            work, said = None, f"made ahead for delta: nothing ({exc})"
        if work is not None:
            said = make(work)
    atomic.write_text(ws.delta_ahead, json.dumps({
        "base": str(work.base_zip) if work else None,
        "kernel": work.boot_sha1 if work and work.boot_image else None,
        "made": said}, indent=1) + "\n")
    return said
