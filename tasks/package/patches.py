"""BSDIFF40 patches for the files of an update package, made in worker processes
(`dfota.package.diff_worker`) with the engine of `dfota.package.bsdiff`.

Which files are patched is decided by size and kind, so the same inputs give the same package:
- a target whose content is compressed (gzip, xz, bzip2, zstd, zip, lzma, lz4 magic at offset 0)
  is shipped whole without diffing: a patch of compressed data is about as large as the data;
- a target too small for any patch to stay within 95 % of it is shipped whole without diffing;
- a diff whose estimated memory (~17x the source: bsdiff4's need, kept for detools, which
  needs less, so the same files are diffed whatever the engine) exceeds the bound is not tried;
- a patch larger than 95 % of its target is dropped and the file shipped whole.
A diff that raises, kills its worker or runs past the time-out falls back to the whole file;
that is a safety net (`PatchOutcome.is_fallback`), never cached. Pairs up to 256 KB share a
worker, a batch of them at a time; a batch whose worker dies or runs out of time is tried again
one pair per worker, so only the pair at fault falls back.

Every patch is applied to its source and checked against the target's sha1 before it is used,
and again whenever it is taken from the cache (the state's blob cache, dfota.state.store). It holds
`<source sha1>-<target sha1>-<engine>.p` (a verified patch) or `.big` (the size of a patch that
was too large). A check passed is kept in the state's records (`patch-proven`, under the tool's
version and the applier's, `applier_tag`) by the patch's name, the sha256 of its bytes and the
target's size: a patch read from the cache whose bytes hash to a kept proof is not applied again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import time
import zipfile
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from dfota.core.errors import DfotaError, quoted, shown_path
from dfota.core.workers import starting, worker_context
from dfota.package import diff_worker
from dfota.package.blobs import READ_ERRORS, Blob, BlobReader, check_blob, describe_error
from dfota.package.bsdiff import (
    MAX_PATCH_PERCENT,
    MIN_PATCH_SIZE,
    Engine,
    applier_tag,
    apply_patch_bytes,
    compressed_kind,
    diff_memory,
    engine_tag,
    too_big_reason,
)
from dfota.package.diff_worker import DiffTask
from dfota.state.store import BlobCache, Records

_PRELOAD_MAX = 32 << 20  # bytes of one side read by the parent for a worker
PROVEN_RECORD = "patch-proven"  # its name among the state's records
_PROVEN_MAX = 4096  # the proofs kept, newest first


@dataclass(frozen=True)
class PatchJob:
    name: str  # the target path, e.g. "system/usr/bin/foo"
    source: Blob
    target: Blob


@dataclass(frozen=True)
class PatchOutcome:
    name: str
    patch: Path | None  # the patch file in the cache when the file is to be patched
    whole_reason: str  # "" when patched, else why the file is shipped whole
    patch_size: int  # 0 when no patch was made
    seconds: float  # time spent diffing this file in this run
    cached: bool  # the decision came from the cache, no diff ran

    @property
    def is_fallback(self) -> bool:
        """Shipped whole because a diff failed or timed out (worth a warning), not by rule."""
        return self.whole_reason.startswith(("diff failed", "diff timed out"))


@dataclass(frozen=True)
class DiffOptions:
    """How a run diffs: in up to `workers` processes (None: the number of cores), each diff
    within `timeout` seconds, their estimated memory together within `memory_limit` bytes.
    `engine` replaces bsdiff40 (for tests): a module-level function, cached under its own
    name."""

    workers: int | None = None
    timeout: float = 300.0
    memory_limit: int = 1 << 30
    engine: Engine | None = None


DEFAULT_DIFFS = DiffOptions()


def make_patches(jobs: Sequence[PatchJob], *, cache: BlobCache,
                 options: DiffOptions = DEFAULT_DIFFS,
                 progress: Callable[[str], None] | None = None,
                 open_zips: Mapping[Path, zipfile.ZipFile] | None = None
                 ) -> dict[str, PatchOutcome]:
    """Decide for each job whether its target ships as a patch or whole, and make the patches
    (`PatchRun` with all the jobs at once). Returns the outcomes by job name, in the order of
    `jobs`."""
    with PatchRun(cache=cache, options=options, progress=progress, open_zips=open_zips) as run:
        run.add(jobs)
        return run.outcomes()


class PatchRun:
    """Diffs made in worker processes while the caller goes on.

    `add` decides each job at once where it can (a rule, the cache) and starts diffing the
    rest; `outcomes` waits for every diff and returns the outcomes of all jobs added. Diffs
    run in up to `options.workers` processes, largest target first among those waiting, as
    long as their estimated memory fits `options.memory_limit` together; a diff that alone
    would need more is not tried. `options.timeout` (seconds) bounds each diff (a worker past
    it is killed when the run next looks, at the latest in `outcomes`). `open_zips`
    (`ZipSource.zipfile`) are the caller's open zips, read in this process (workers open
    their own).
    """

    def __init__(self, *, cache: BlobCache, options: DiffOptions = DEFAULT_DIFFS,
                 progress: Callable[[str], None] | None = None,
                 open_zips: Mapping[Path, zipfile.ZipFile] | None = None) -> None:
        timeout, memory_limit, engine = options.timeout, options.memory_limit, options.engine
        self.workers = options.workers if options.workers is not None else os.cpu_count() or 1
        if self.workers < 1 or timeout <= 0 or memory_limit <= 0:
            raise ValueError("workers, timeout and memory_limit must be positive")
        self.cache, self.timeout, self.memory_limit = cache, timeout, memory_limit
        self.engine = engine
        self._say = progress or (lambda _line: None)
        self._tag = engine_tag()
        if engine is not None:
            qualname = getattr(engine, "__qualname__", type(engine).__name__)
            self._tag += f"+{engine.__module__}.{qualname}"
        cache.prepare()
        self._reader = BlobReader(open_zips)
        self._run_dir: Path | None = None
        self._names: dict[str, str] = {}  # job name -> key, in the order added
        self._results: dict[str, tuple[Path | None, str, int, float, bool]] = {}  # by key
        self._queue: deque[tuple[int, _Work, bool]] = deque()
        self._running: dict[Any, _Running] = {}
        self._to_diff = self._diffed = 0
        self._proofs = _Proofs(cache.records)

    def __enter__(self) -> PatchRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every worker still running; forget the scratch folder."""
        for entry in self._running.values():
            entry.process.kill()
            entry.process.join()
        self._running.clear()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        self._reader.__exit__()

    def add(self, jobs: Sequence[PatchJob]) -> None:
        """Decide `jobs` by rule or from the cache, queue the rest and start what fits."""
        names = [job.name for job in jobs]
        if len(set(names)) != len(names) or self._names.keys() & set(names):
            raise ValueError("two patch jobs have the same name")
        groups: dict[str, list[PatchJob]] = {}
        for job in jobs:
            key = patch_key(job.source.sha1, job.target.sha1, self._tag)
            self._names[job.name] = key
            groups.setdefault(key, []).append(job)
        known = {key for key in self._results} | {w.key for _, w, _ in self._queue} | {
            w.key for r in self._running.values() for w, _ in r.batch}
        work: list[_Work] = []
        by_rule = from_cache = 0
        for key, group in groups.items():
            if key in known:  # the same pair came in an earlier `add`
                continue
            job = group[0]
            reason = _rule_reason(job, self.memory_limit, self._reader)
            hit = None if reason else _from_cache(self.cache, key, job, self._reader,
                                                  self._proofs)
            if reason:
                by_rule += len(group)
                self._results[key] = (None, reason, 0, 0.0, False)
            elif hit is not None:
                from_cache += len(group)
                self._results[key] = (*hit, 0.0, True)
            else:
                work.append(_Work(key, tuple(group), diff_memory(job.source.size,
                                                                 job.target.size)))
        if not jobs:
            return
        work.sort(key=lambda w: (-w.jobs[0].target.size, w.jobs[0].name))
        pool = min(self.workers, len(work))
        self._say(f"patches: {len(jobs)} files, {from_cache} from the cache, {by_rule} whole "
                  f"by rule, {sum(len(w.jobs) for w in work)} to diff"
                  + (f" with {pool} worker{'s' if pool > 1 else ''}" if work else ""))
        # waiting work stays largest first, whatever `add` it came in
        waiting = [*self._queue, *((i, w, False) for i, w in enumerate(work, self._to_diff))]
        waiting.sort(key=lambda queued: (-queued[1].jobs[0].target.size, queued[1].jobs[0].name))
        self._queue = deque(waiting)
        self._to_diff += len(work)
        self._start_ready()

    def outcomes(self) -> dict[str, PatchOutcome]:
        """Wait for every diff; the outcome of every job added, by name, in the order added."""
        while self._queue or self._running:
            self._start_ready()
            deadline = min(r.started for r in self._running.values()) + self.timeout
            self._collect_finished(set(wait(list(self._running),
                                            max(0.0, deadline - time.monotonic()))))
        self._proofs.save()
        outcomes = {}
        for name, key in self._names.items():
            patch, reason, size, seconds, cached = self._results[key]
            outcomes[name] = PatchOutcome(name, patch, reason, size, seconds, cached)
        return outcomes

    def _scratch(self) -> Path:
        if self._run_dir is None:
            self._run_dir = self.cache.scratch()
        return self._run_dir

    def _preload(self, blob: Blob) -> bytes | None:
        if blob.size > _PRELOAD_MAX:
            return None
        try:
            return self._reader.read(blob)
        except READ_ERRORS:
            return None  # the worker meets the same error and reports it

    def _next_batch(self) -> list[tuple[_Work, DiffTask]]:
        queue, run_dir = self._queue, self._scratch()
        batch: list[tuple[_Work, DiffTask]] = []
        size = 0
        while queue and (not batch or (
                _batchable(queue[0][1]) and not queue[0][2] and len(batch) < _BATCH_PAIRS
                and size + queue[0][1].jobs[0].target.size <= _BATCH_BYTES)):
            index, item, alone = queue.popleft()
            first = item.jobs[0]
            batch.append((item, DiffTask(first.source, first.target, run_dir / f"{index}.p",
                                      run_dir / f"{index}.json", item.memory, self.engine,
                                      self._preload(first.source),
                                      self._preload(first.target))))
            size += first.target.size
            if alone or not _batchable(item):
                break
        return batch

    def _start_ready(self) -> None:
        """Start workers while there are free ones and the memory allows."""
        if self._queue:
            import detools  # noqa: F401  (here: every forked worker has it loaded)
        while self._queue and len(self._running) < self.workers and (
                not self._running or sum(max(w.memory for w, _ in r.batch)
                                         for r in self._running.values())
                + self._queue[0][1].memory <= self.memory_limit):
            batch = self._next_batch()
            process = worker_context([diff_worker.__name__, "detools"]).Process(
                target=diff_worker.diff_tasks, args=([t for _, t in batch],), daemon=True,
                name=f"diff {batch[0][0].jobs[0].name}")
            with starting():  # a stop meanwhile waits: `close` must know every worker
                process.start()
                self._running[process.sentinel] = _Running(process, batch, time.monotonic())

    def _progress_line(self, work: _Work, patch: Path | None, reason: str, size: int) -> str:
        first = work.jobs[0]
        extra = f" (+{len(work.jobs) - 1} same)" if len(work.jobs) > 1 else ""
        result = _human(size) if patch is not None else f"whole: {reason}"
        return (f"diff {self._diffed}/{self._to_diff}: {shown_path(first.name)}{extra} "
                f"({_human(first.target.size)}) -> {result}")

    def _collect_finished(self, ready: set[Any]) -> None:
        """Take the results of the workers that ended; kill those past the time-out."""
        now = time.monotonic()
        for sentinel in list(self._running):
            entry = self._running[sentinel]
            if sentinel in ready:
                entry.process.join()
                lost = f"diff failed: {_exit_text(entry.process.exitcode)}"
            elif now - entry.started >= self.timeout:
                entry.process.kill()
                entry.process.join()
                lost = f"diff timed out after {self.timeout:g} s"
            else:
                continue
            del self._running[sentinel]
            for item, task in entry.batch:
                if not task.result.exists() and len(entry.batch) > 1:
                    # the pair that stopped the batch is found by trying each alone
                    self._queue.appendleft((int(task.result.stem), item, True))
                    continue
                patch, reason, size = (_collect(item, task, self.cache, self._scratch(),
                                                self._proofs)
                                       if task.result.exists() else (None, lost, 0))
                self._results[item.key] = (patch, reason, size, now - entry.started, False)
                self._diffed += 1
                self._say(self._progress_line(item, patch, reason, size))


def _rule_reason(job: PatchJob, memory_limit: int, reader: BlobReader) -> str:
    target = job.target
    kind = compressed_kind(reader.head(target))
    if kind:
        return f"compressed content ({kind})"
    if target.size * MAX_PATCH_PERCENT < MIN_PATCH_SIZE * 100:
        return f"file too small to patch ({target.size} bytes)"
    need = diff_memory(job.source.size, target.size)
    if need > memory_limit:
        return (f"diff would need ~{math.ceil(need / (1 << 20))} MB of memory "
                f"(limit {memory_limit >> 20} MB)")
    return ""


def patch_key(source_sha1: str, target_sha1: str, tag: str) -> str:
    """The patch cache's name for the diff from one content to another by engine `tag`."""
    return f"{source_sha1}-{target_sha1}-{tag}"


def in_cache(cache: BlobCache, source_sha1: str, target_sha1: str) -> bool:
    """The cache holds an outcome of this diff (a patch, or its size that was too large);
    unchecked: who takes it checks it."""
    key = patch_key(source_sha1, target_sha1, engine_tag())
    return any(cache.path(key + end).is_file() for end in (".p", ".big"))


class _Proofs:
    """The patches checked (in this run or an earlier one): `<patch> <sha256 of its bytes>
    <target size>`, in one record under the applier's tag (and, as every record, the tool's
    version). Without `records`, none is kept."""

    def __init__(self, records: Records | None) -> None:
        self.records = records
        self._known: set[str] | None = None  # read when first asked
        self.new: list[str] = []

    def _earlier(self) -> list[str]:
        kept = self.records.get(PROVEN_RECORD, applier_tag()) if self.records is not None else None
        return [p for p in kept if isinstance(p, str)] if isinstance(kept, list) else []

    def holds(self, proof: str) -> bool:
        if self._known is None:
            self._known = set(self._earlier())
        return proof in self._known

    def add(self, proof: str) -> None:
        if self.records is not None and not self.holds(proof):
            self.new.append(proof)
            assert self._known is not None
            self._known.add(proof)

    def save(self) -> None:
        """Keep the proofs added, before those on disk now (another run may have written)."""
        if self.records is None or not self.new:
            return
        new, self.new = self.new[::-1], []
        newer = set(new)
        older = [p for p in self._earlier() if p not in newer]
        self.records.put(PROVEN_RECORD, applier_tag(), (new + older)[:_PROVEN_MAX], alone=True)


def _proof(name: str, patch: bytes, target: Blob) -> str:
    return f"{name} {hashlib.sha256(patch).hexdigest()} {target.size}"


def _from_cache(cache: BlobCache, key: str, job: PatchJob, reader: BlobReader,
                proofs: _Proofs) -> tuple[Path | None, str, int] | None:
    """(patch, whole reason, patch size) from a checked cache entry; a bad entry is deleted."""
    patch = cache.read_bytes(f"{key}.p")
    if patch is not None:
        if too_big_reason(len(patch), job.target.size):
            fits = False
        else:  # the very bytes checked before, or checked now
            proof = _proof(f"{key}.p", patch, job.target)
            fits = proofs.holds(proof) or _cached_patch_fits(patch, job, reader)
            if fits:
                proofs.add(proof)
        if fits:
            return cache.path(f"{key}.p"), "", len(patch)
        cache.drop(f"{key}.p")
    big = cache.read_bytes(f"{key}.big")
    if big is not None:
        size = _parse_big(big.decode("ascii", "replace"))
        reason = too_big_reason(size, job.target.size) if size is not None else ""
        if reason:
            return None, reason, size or 0
        cache.drop(f"{key}.big")
    return None


def _cached_patch_fits(patch: bytes, job: PatchJob, reader: BlobReader) -> bool:
    try:
        source = reader.read(job.source)
    except READ_ERRORS:
        return False  # the worker will report it
    check_blob(source, job.source, "source", job.name)
    try:
        out = apply_patch_bytes(source, patch)
    except (ValueError, MemoryError, OSError, EOFError):
        return False
    return len(out) == job.target.size and hashlib.sha1(out).hexdigest() == job.target.sha1


def _parse_big(text: str) -> int | None:
    word, _, number = text.strip().partition(" ")
    if word != "patch-size" or not number.isdigit():
        return None
    return int(number)


@dataclass(frozen=True)
class _Work:
    key: str
    jobs: tuple[PatchJob, ...]  # same source and target; the first is read
    memory: int


@dataclass
class _Running:
    process: BaseProcess
    batch: list[tuple[_Work, DiffTask]]
    started: float


# pairs this small go to one worker together (a process per diff would cost more than the
# diff); a batch whose worker dies or runs out of time is tried again one pair per worker
_BATCH_PAIR_MAX = 256 << 10
_BATCH_BYTES = 4 << 20
_BATCH_PAIRS = 64


def _batchable(item: _Work) -> bool:
    first = item.jobs[0]
    return max(first.source.size, first.target.size) <= _BATCH_PAIR_MAX


def _collect(item: _Work, task: DiffTask, cache: BlobCache, run_dir: Path,
             proofs: _Proofs) -> tuple[Path | None, str, int]:
    """Read the result a worker left for one pair; move a good patch (checked by the worker,
    a proof of its bytes kept) into the cache."""
    job = item.jobs[0]
    try:
        result = json.loads(task.result.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"diff failed: its result is unreadable ({describe_error(exc)})", 0
    status = result.get("status")
    if status == "input":
        blob = job.source if result["role"] == "source" else job.target
        raise DfotaError(f"{result['role']} of {quoted(job.name)} does not match its recorded size "
                         f"and sha1 ({blob.size} bytes, {blob.sha1})",
                         blob.zip_path or blob.path)
    if status == "mismatch":
        raise RuntimeError(f"internal error: the patch made for {quoted(job.name)} "
                           f"{result['message']}")
    if status != "ok":
        return None, f"diff failed: {result.get('message', 'unknown error')}", 0
    size = int(result["patch_size"])
    reason = too_big_reason(size, job.target.size)
    if reason:
        marker = run_dir / f"{item.key}.big"
        marker.write_text(f"patch-size {size}\n", "ascii")
        cache.put(f"{item.key}.big", marker)
        return None, reason, size
    patch_sha256 = result.get("patch_sha256")
    if isinstance(patch_sha256, str):
        proofs.add(f"{item.key}.p {patch_sha256} {job.target.size}")
    return cache.put(f"{item.key}.p", task.patch_tmp), "", size


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"worker killed by signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with code {code} without a result"


def _human(size: int) -> str:
    for unit, shift in (("GB", 30), ("MB", 20), ("KB", 10)):
        if size >= 1 << shift:
            return f"{size / (1 << shift):.1f} {unit}"
    return f"{size} B"
