"""Work that `doit delta` will ask for, done by `doit targetfiles` in a worker process while
its own work leaves part of a core idle (while it waits on the kernel's copying and syncing).

Two things, each kept in the state (tasks.state) where delta already looks, so delta's code
does not change:
- the sha1 of every entry of a source not built here, in a record keyed by the zip's sha256
  (`MEMBER_SHA1S`);
- the kernel's patch, from the source's boot image to the SDK's, in the patch cache.
Nothing here is trusted more than delta's own work: the sha1s are keyed by the zip's bytes,
and a patch from the cache is applied and checked again when delta takes it. A failure here
says nothing: delta meets the same input and reports it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path

from tasks.errors import DfotaError
from tasks.state import BlobCache, Records
from tasks.targetfiles import BOOT_IMAGE
from tasks.tree import FILE
from tasks.workers import OneShot

MEMBER_SHA1S = "member-sha1s"  # the record of a zip's entries' sha1s, by the zip's sha256


@dataclass(frozen=True)
class AheadWork:
    source_zip: Path
    source_sha256: str | None  # keep the source's sha1s under this key; None: not needed
    boot_image: Path  # the SDK's: the target's kernel
    boot_sha1: str
    records: Records
    patch_cache: BlobCache
    diff_timeout: float


def _run(work: AheadWork) -> str:
    """Do `work`; a line on what was done."""
    from tasks.patches import Blob, PatchJob, PatchRun
    from tasks.zipio import ZipSource

    started, done = time.monotonic(), []
    with ZipSource(work.source_zip) as source:
        if work.source_sha256 is not None:
            for name, member in source.members.items():
                if member.kind == FILE:
                    source.sha1(name)
            kept = source.known_sha1s()
            work.records.put(MEMBER_SHA1S, work.source_sha256, kept)
            done.append(f"the sha1s of the source's {len(kept)} files")
        if BOOT_IMAGE in source.members and source.sha1(BOOT_IMAGE) != work.boot_sha1:
            job = PatchJob(BOOT_IMAGE,
                           Blob.in_zip(source.path, BOOT_IMAGE, source.sha1(BOOT_IMAGE),
                                       source.members[BOOT_IMAGE].size),
                           Blob.on_disk(work.boot_image, work.boot_sha1,
                                        work.boot_image.stat().st_size))
            with PatchRun(cache=work.patch_cache, workers=1, timeout=work.diff_timeout,
                          open_zips={source.path: source.zipfile}) as run:
                run.add([job])
                outcome = run.outcomes()[BOOT_IMAGE]
            done.append("the kernel's patch" + (" (from the cache)" if outcome.cached else ""))
    return (f"made ahead for delta in {time.monotonic() - started:.1f} s: "
            + (", ".join(done) or "nothing"))


def _worker(work: AheadWork, report: Connection) -> None:
    os.nice(10)  # the build's own work first: this takes what it leaves idle
    try:
        report.send(_run(work))
    except (DfotaError, OSError) as exc:
        report.send(f"made ahead for delta: nothing ({exc})")
    except KeyboardInterrupt:
        pass  # Ctrl-C reached the whole process group: the parent says what happened


def start(work: AheadWork) -> Callable[[], str]:
    """Start `work` in a worker process; the function returned waits for it and returns a
    line on what was done."""
    worker = OneShot(_worker, (work,), "ahead for delta")

    def wait() -> str:
        said, exit_code = worker.wait()
        return str(said or f"made ahead for delta: nothing (exit code {exit_code})")

    return wait
