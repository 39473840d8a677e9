"""The worker process of a diff: it reads each pair it is given, diffs it, applies the patch
and checks it against the target's sha1, and leaves the patch and a JSON result in files for
the run (`dfota.package.patches`) to collect. Its address space is capped at the estimate.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfota.core.workers import quiet_on_ctrl_c
from dfota.package.blobs import READ_ERRORS, Blob, BlobReader, describe_error
from dfota.package.bsdiff import Engine, apply_patch_bytes, bsdiff40, too_big_reason

_RLIMIT_SLACK = 128 << 20


@dataclass(frozen=True)
class DiffTask:
    """What one worker process gets: where to read, where to write."""

    source: Blob
    target: Blob
    patch_tmp: Path
    result: Path
    memory: int
    engine: Engine | None
    # small pairs are read by the parent, which keeps both zips open: a worker that had to
    # open two large zips itself would spend more time on that than on the diff
    source_data: bytes | None = None
    target_data: bytes | None = None


@quiet_on_ctrl_c
def diff_tasks(tasks: Sequence[DiffTask]) -> None:
    """Diff each pair in turn, check the patch, leave it in `patch_tmp` and a JSON result in
    `result`."""
    _limit_memory(max(task.memory for task in tasks))
    for task in tasks:
        result: dict[str, Any]
        try:
            result = _diff_and_check(task)
        except Exception as exc:  # MemoryError included: report it, the parent decides
            result = {"status": "failed", "message": describe_error(exc)}
        tmp = task.result.with_suffix(".tmp")
        tmp.write_text(json.dumps(result), "utf-8")
        os.replace(tmp, task.result)


def _diff_and_check(task: DiffTask) -> dict[str, Any]:
    data: dict[str, bytes] = {}
    with BlobReader() as reader:
        for role, blob, given in (("source", task.source, task.source_data),
                                  ("target", task.target, task.target_data)):
            try:
                data[role] = given if given is not None else reader.read(blob)
            except READ_ERRORS as exc:
                return {"status": "failed", "message": f"cannot read the {role} {blob.where} "
                                                      f"({describe_error(exc)})"}
            blob_sha1 = hashlib.sha1(data[role]).hexdigest()
            if len(data[role]) != blob.size or blob_sha1 != blob.sha1:
                return {"status": "input", "role": role}
    source, target = data["source"], data["target"]
    patch = (task.engine or bsdiff40)(source, target)
    try:
        out = apply_patch_bytes(source, patch)
        good = len(out) == len(target) and hashlib.sha1(out).hexdigest() == task.target.sha1
        problem = "" if good else "gives other bytes than the target"
    except ValueError as exc:
        problem = f"does not apply ({exc})"
    if problem:
        return {"status": "mismatch", "message": problem}
    if too_big_reason(len(patch), len(target)):
        return {"status": "ok", "patch_size": len(patch)}
    task.patch_tmp.write_bytes(patch)
    # the bytes checked: the parent keeps their proof
    return {"status": "ok", "patch_size": len(patch),
            "patch_sha256": hashlib.sha256(patch).hexdigest()}


def _limit_memory(need: int) -> None:
    """Cap the address space at what the process uses now plus the estimate and some slack."""
    try:
        import resource

        with open("/proc/self/statm", "rb") as f:
            now = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = now + need + _RLIMIT_SLACK
        for limit in (soft, hard):
            if limit != resource.RLIM_INFINITY:
                cap = min(cap, limit)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    except (ImportError, OSError, ValueError):
        pass  # no /proc or no RLIMIT_AS: the estimate alone bounds the memory
