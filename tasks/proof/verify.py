"""`doit verify`: prove a package on the host before it ships.

The package is applied by the host updater (`dfota.device.updater`, the device's rules) to the very
source it was made for, and the result must equal what the target says, entry for entry; then
again after a power loss at every mutating step; a source changed by hand must stop in the
verify phase with 510 and nothing written; every patch must also give the target's bytes when
Debian's `bspatch` applies it. A package that fails is moved out of `out/` with the report.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import hashlib
import json
import multiprocessing
import os
import shutil
import subprocess
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dfota.build.archive import archive_of, recorded_sha256, sha256_file
from dfota.build.targetfiles import (
    BOOT_IMAGE,
    SYSTEM,
    boot_partition,
    partition_map,
    system_path,
    system_tree,
)
from dfota.core import atomic
from dfota.core.errors import CheckFailed, DfotaError, quoted, shown_path
from dfota.core.runlog import RunLog
from dfota.core.tree import FILE, SYMLINK, Entry, Tree
from dfota.core.volumes import DEFAULT_VOLUMES, Volumes
from dfota.device.fs import Device
from dfota.device.host import EntrySpec, entry_key
from dfota.device.interpreter import Package
from dfota.device.power_loss import for_each_power_loss
from dfota.device.storage import Partition, Stored
from dfota.device.units import MarkRecorder, Marks
from dfota.device.updater import (
    UpdateResult,
    load_package,
    precheck,
)
from dfota.device.updater import apply_package as host_apply
from dfota.formats.filelists import FileLists, lists_in
from dfota.formats.version import VERSION_FILE, parse_version
from dfota.formats.zipio import ZipSource
from dfota.package.plan import Part, expected_system, parse_mode
from dfota.package.writer import VERSION_ENTRY
from dfota.report.summary import write_report, write_summary
from dfota.settings import PackageInputs, VerifySettings, Workspace
from dfota.state.store import DigestCache, Records, State

MINOR_PREFIX = "MULTIFOTA/"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class VerifyReport:
    package: str
    checks: list[Check] = field(default_factory=list)
    steps: int = 0
    replays: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def add(self, name: str, problems: Iterable[str], passed: str = "") -> bool:
        problems = list(problems)
        self.checks.append(Check(name, not problems,
                                 "; ".join(problems[:5]) + (f" (+{len(problems) - 5} more)"
                                                            if len(problems) > 5 else "")
                                 if problems else passed))
        return not problems

    def to_json(self) -> dict[str, object]:
        return {"package": self.package, "ok": self.ok, "steps": self.steps,
                "power_loss_replays": self.replays, "seconds": round(self.seconds, 3),
                "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                           for c in self.checks]}


def minor_partitions(src: ZipSource, lists: FileLists) -> dict[str, str]:
    """MULTIFOTA image -> partition, as the package writer maps them."""
    mapping = dict(partition_map(src))
    mapping.update({image: part for image, part in lists.multifota if part})
    return {image: part for image, part in mapping.items()
            if MINOR_PREFIX + image in src.members}


def device_from_targetfiles(src: ZipSource, minor: Mapping[str, str],
                            volumes: Volumes = DEFAULT_VOLUMES, *,
                            stored: dict[str, Stored] | None = None) -> tuple[Device, Tree]:
    """A module running this targetfiles: /system from SYSTEM/, partitions from the images,
    the system volume and /cache of `volumes`' sizes; and its `system_tree`. Each file and
    image is read once, its sha1 taken from the bytes read.

    `stored`: given, the files' bytes are hashed as they are read but not kept: the device
    reads a file again when it first uses it (a few of thousands, for a package), from the
    zip, which must stay open meanwhile, and it must still have that sha1. `stored` is
    filled with every file's and image's `Stored`, by member."""
    contents: dict[str, bytes | Stored] = {}
    for name in src.names(SYSTEM + "/"):
        if src.members[name].kind != FILE:
            continue
        if stored is None:
            contents[name] = src.read_hashed(name)
        else:
            src.sha1(name)  # read, its CRC checked, hashed
            contents[name] = stored[name] = Stored(src.members[name].size,
                                                   functools.partial(_read_again, src, name))
    tree = system_tree(src)
    entries: dict[str, EntrySpec] = {}
    for path, entry in tree.items():
        content: bytes | str | Stored = (contents[system_path(path)] if entry.kind == FILE
                                         else entry.link if entry.kind == SYMLINK else b"")
        entries[path] = (entry.kind, entry.mode, entry.uid, entry.gid, content)
    images = {boot_partition(src): BOOT_IMAGE}
    images.update({part: MINOR_PREFIX + image for image, part in minor.items()
                   if MINOR_PREFIX + image in src.members})
    partitions: dict[str, Partition] = {}
    for part, name in images.items():
        data = src.read_hashed(name)
        if stored is not None:
            stored[name] = Stored(len(data), functools.partial(_read_again, src, name), data)
        # its sha1 known: the device and each copy of it do not hash the image again
        partitions[part] = Partition(data, None, {len(data): bytes.fromhex(src.sha1(name))})
    device = Device.from_system(entries, partitions, sha1s={
        p: e.sha1 for p, e in tree.items() if e.kind == FILE},
        system_capacity=volumes.system, cache_capacity=volumes.cache)
    return device, tree


def _read_again(src: ZipSource, name: str) -> bytes:
    """A member's bytes read again: still those hashed."""
    data = src.read(name)
    if hashlib.sha1(data).hexdigest() != src.sha1(name):
        raise DfotaError(f"entry {quoted(name)} changed while it was being verified", src.path)
    return data


def tree_differences(actual: Mapping[str, Entry], expected: Mapping[str, Entry]) -> list[str]:
    """One line per path whose type, content, link target, mode or owner differs.

    A symlink is compared by its target only: the updater cannot set a link's owner or mode.
    """
    lines = []
    for path in sorted(set(actual) | set(expected)):
        a, e = actual.get(path), expected.get(path)
        where = f"/system/{shown_path(path)}"
        if a is None:  # e is not None then: `path` comes from one of the two
            lines.append(f"{where}: missing (expected {e.kind})")  # type: ignore[union-attr]
        elif e is None:
            lines.append(f"{where}: should not be there ({a.kind})")
        elif a.kind != e.kind:
            lines.append(f"{where}: is a {a.kind}, expected a {e.kind}")
        elif a.kind == SYMLINK:
            if a.link != e.link:
                lines.append(f"{where}: points to {quoted(a.link)}, expected {quoted(e.link)}")
        elif a.kind == FILE and a.sha1 != e.sha1:
            lines.append(f"{where}: content differs")
        elif (a.mode, a.uid, a.gid) != (e.mode, e.uid, e.gid):
            lines.append(f"{where}: mode {a.mode:04o} owner {a.uid}:{a.gid}, expected "
                         f"{e.mode:04o} {e.uid}:{e.gid}")
    return lines


def _state_differences(device: Device, expected: Tree,
                       partitions: Mapping[str, str]) -> list[str]:
    if device.keys() == {path: entry_key(e) for path, e in expected.items()} and \
            partitions.items() <= device.partition_sha1s().items():
        return []  # what tree_differences compares is the same: no difference
    state = device.state()
    lines = tree_differences(state.system, expected)
    for name, sha1 in partitions.items():
        if state.partitions.get(name) != sha1:
            lines.append(f"partition {name}: content differs from the target's image")
    return lines


def replay_points(step_log: Sequence[str], permission_replays: int | None) -> list[int]:
    """The steps (1-based) after which the power is cut."""
    perms = [i for i, what in enumerate(step_log, 1) if what.startswith("chmod")]
    others = [i for i, what in enumerate(step_log, 1) if not what.startswith("chmod")]
    if permission_replays is not None and len(perms) > permission_replays:
        count = max(permission_replays, 2)
        stride = (len(perms) - 1) / (count - 1)
        perms = sorted({perms[round(i * stride)] for i in range(count)})
    return sorted(others + perms)


@dataclass(frozen=True)
class _Replays:
    pkg: Package
    device: Device
    expected: Tree
    partitions: Mapping[str, str]
    expected_keys: dict[str, tuple[object, ...]]
    # the marks of the whole run for re-runs to rejoin (None: each goes to its end), and
    # what a re-run that rejoins it ends as: that run's first difference, if any
    whole_run: Marks | None
    whole_run_differs: str | None


_REPLAY: _Replays | None = None
_POLL = 1.0  # seconds between looks at the workers' replays (progress lines)
# below this many power losses the replays run in this process (measured: on the benchmark
# pair, 471 steps took 0.85 s in two workers and 0.25 s here)
_STEPS_PER_FORK = 2000


def _replay(steps: Sequence[int], advance: Callable[[int], None] | None = None) -> list[str]:
    """Cut the power after each step, re-run the package, compare (in a worker process).
    `advance(1)` after each (in this process only)."""
    assert _REPLAY is not None
    job = _REPLAY
    problems = []

    def check(step: int, again: UpdateResult, after: Device) -> None:
        if advance is not None:
            advance(1)
        if again.code != 0:
            problems.append(f"power loss after step {step}: re-run gave {again.code} "
                            f"({again.message})")
        elif again.rejoined is not None:
            if job.whole_run_differs is not None:
                problems.append(f"power loss after step {step}: {job.whole_run_differs}")
        elif after.keys() != job.expected_keys or not \
                job.partitions.items() <= after.partition_sha1s().items():
            # the quick comparison found a difference: the full one says which
            diff = _state_differences(after, job.expected, job.partitions) or ["differs"]
            problems.append(f"power loss after step {step}: {diff[0]}")

    for_each_power_loss(job.pkg, job.device, sorted(steps), check, follow=job.whole_run)
    return problems


def _forks(steps: int, workers: int | None = None) -> bool:
    """Whether `replay_power_losses` spreads `steps` replays over forked workers."""
    return (workers or os.cpu_count() or 1) > 1 and steps >= max(_STEPS_PER_FORK, 2)


def replay_power_losses(pkg: Package, device: Device, expected: Tree,  # noqa: PLR0913
                        partitions: Mapping[str, str], steps: Sequence[int],
                        advance: Callable[[int], None], workers: int | None = None, *,
                        whole_run: tuple[Marks, str | None] | None = None
                        ) -> list[str]:
    """Every replay is independent: spread them over the cores (forked workers share the
    loaded package and device), in chunks, and report problems in step order.

    `whole_run`: the marks of a run of the package on `device` that succeeded, and its
    first difference from `expected` (None: none). A re-run stops where its device is as
    that run left it after the same top-level statement, and ends as that run does. Without
    it, every re-run goes to its end and is compared."""
    global _REPLAY
    workers = workers or os.cpu_count() or 1
    # one chunk per core, each from the whole range (each runs the package once, to its
    # end); a package of few steps in this process: its re-runs cost less than a fork
    count = workers if _forks(len(steps), workers) else 1
    chunks = [list(steps[i::count]) for i in range(count) if steps[i::count]]
    marks, differs = whole_run or (None, None)
    _REPLAY = _Replays(pkg, device, expected, partitions,
                       {path: entry_key(e) for path, e in expected.items()}, marks, differs)
    try:
        if len(chunks) < 2:
            results = [_replay(chunk, advance) for chunk in chunks]
        else:
            with multiprocessing.get_context("fork").Pool(min(workers, len(chunks))) as pool:
                results = []
                found = pool.imap(_replay, chunks)
                for chunk in chunks:
                    while True:
                        try:
                            results.append(found.next(timeout=_POLL))
                            break
                        except multiprocessing.TimeoutError:
                            advance(0)  # the bar may say how long it has run
                    advance(len(chunk))
    finally:
        _REPLAY = None
    return [line for found in results for line in found]


def info_zip_test(package: Path) -> list[str]:
    with _InfoZipTest(package) as test:
        return test.result()


class _InfoZipTest:
    """`unzip -tq` of a package, started at once and run while the caller goes on; `result`
    waits for it (and raises what starting it raised)."""

    def __init__(self, package: Path) -> None:
        self.failed: OSError | None = None
        self.process: subprocess.Popen[str] | None = None
        try:
            self.process = subprocess.Popen(["unzip", "-tq", str(package)], text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            self.failed = exc

    def result(self) -> list[str]:
        if self.process is None:
            assert self.failed is not None
            raise self.failed
        stdout, stderr = self.process.communicate()
        if self.process.returncode == 0 and "No errors" in stdout:
            return []
        return [f"unzip -tq: {(stdout + stderr).strip().splitlines()[-1:]}"]

    def __enter__(self) -> _InfoZipTest:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()  # not waited for: the run stopped before its check
            self.process.communicate()


# the patches proven in earlier runs, newest first, at most this many
_BSPATCH_RECORD_MAX = 4096
BSPATCH_RECORD = "bspatch-proven"  # its name among the state's records (dfota.state.store)


def _bspatch_tool() -> str:
    """What a proof by bspatch holds for: the sha1 of the `bspatch` program."""
    found = shutil.which("bspatch")
    if found is None:
        raise DfotaError("not found: install Debian's bsdiff package (`bspatch`)", "bspatch")
    return hashlib.sha1(Path(found).read_bytes()).hexdigest()


def bspatch_check(package: Path, base: ZipSource, target: ZipSource,
                  records: Records | None = None) -> tuple[list[str], int, int]:
    """Each patch applied by Debian's bspatch to the source must give the target's bytes
    (a bspatch per core at a time). `records` keep the patches proven, by the sha1s of
    source, patch and target bytes, under the sha1 of the bspatch program: a patch proven
    in an earlier run is not applied again. Problems, patches, patches proven earlier."""
    tool = _bspatch_tool()
    with ZipSource(package) as pkg, BspatchProof(pkg, base, target, records, tool=tool) as proof:
        return proof.result()


class BspatchProof:
    """`bspatch_check` begun: each patch to prove is handed at once to a thread that runs
    bspatch on it, while the caller goes on; `result` waits for them and gives what
    `bspatch_check` gives. An error in handing them over is raised by `result` (so where
    a check that ran last raised it). `stored`: the source's bytes, by member, where they
    are known (`device_from_targetfiles`)."""

    def __init__(self, pkg: ZipSource, base: ZipSource, target: ZipSource,  # noqa: PLR0913
                 records: Records | None = None, stored: Mapping[str, Stored] | None = None,
                 *, tool: str | None = None) -> None:
        self.records = records
        self.tool = ""
        self.proven_before: list[str] = []
        self.keys: dict[str, str] = {}  # by patch
        self.jobs: list[tuple[str, Future[str | None]]] = []  # the patches bspatch applies
        self.failed: Exception | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="bspatch.")
        self._pool = ThreadPoolExecutor(os.cpu_count() or 1)
        try:
            self._hand_over(pkg, base, target, stored or {}, tool)
        except Exception as exc:  # raised by `result`
            self.failed = exc

    def _hand_over(self, pkg: ZipSource, base: ZipSource, target: ZipSource,
                   stored: Mapping[str, Stored], tool: str | None) -> None:
        self.tool = tool or _bspatch_tool()
        earlier = self.records.get(BSPATCH_RECORD, self.tool) if self.records is not None \
            else None
        self.proven_before = [key for key in earlier if isinstance(key, str)] \
            if isinstance(earlier, list) else []
        proven = set(self.proven_before)
        for index, name in enumerate(sorted(pkg.names("patch/"))):
            member = (BOOT_IMAGE if name == "patch/boot.img.p"
                      else system_path(name[len("patch/system/"):-len(".p")]))
            patch = pkg.read(name)
            # every part of the key from the bytes (not from a record): the proof is of them
            wanted = target.sha1(member)
            key = self.keys[name] = (f"{base.sha1(member)}-{hashlib.sha1(patch).hexdigest()}-"
                                     f"{wanted}")
            if key in proven:
                continue
            old = stored[member].get() if member in stored else base.read(member)
            self.jobs.append((name, self._pool.submit(
                _bspatch, name, Path(self._folder.name, str(index)), old, patch, wanted)))

    def settle(self) -> None:
        """Wait until no bspatch runs (before a fork, say)."""
        self._pool.shutdown(wait=True)

    def result(self) -> tuple[list[str], int, int]:
        """Problems, patches, patches proven earlier; the records updated."""
        self.settle()
        if self.failed is not None:
            raise self.failed
        problems, failed_names = [], set()
        for name, job in self.jobs:
            failed = job.result()
            if failed is not None:
                problems.append(failed)
                failed_names.add(name)
        if self.records is not None:
            newest = [self.keys[name] for name in sorted(self.keys) if name not in failed_names]
            shown = set(newest)
            older = [key for key in self.proven_before if key not in shown]
            self.records.put(BSPATCH_RECORD, self.tool, (newest + older)[:_BSPATCH_RECORD_MAX],
                             alone=True)
        return problems, len(self.keys), len(self.keys) - len(self.jobs)

    def __enter__(self) -> BspatchProof:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._folder.cleanup()


def _bspatch(name: str, stem: Path, old: bytes, patch: bytes, wanted: str) -> str | None:
    """Debian's bspatch on one patch (on a thread): None when it gives the bytes whose sha1
    is `wanted`, else what is wrong."""
    old_file, patch_file = stem.with_suffix(".old"), stem.with_suffix(".patch")
    old_file.write_bytes(old)
    patch_file.write_bytes(patch)
    new_file = stem.with_suffix(".new")
    done = subprocess.run(["bspatch", str(old_file), str(new_file), str(patch_file)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"{shown_path(name)}: bspatch failed: {done.stderr.strip()}"
    if hashlib.sha1(new_file.read_bytes()).hexdigest() != wanted:
        return f"{shown_path(name)}: bspatch gives other bytes than the target's"
    return None


def _tamper_target(device: Device, pkg: ZipSource) -> str | None:
    """A patched file of the package, changed on the module by hand (restriction 1)."""
    version_patch = f"patch/system/{VERSION_FILE}.p"  # a changed version file gives 505 first
    patched = sorted(n for n in pkg.names("patch/system/") if n != version_patch)
    if not patched:
        return None
    path = "/system/" + patched[0][len("patch/system/"):-len(".p")]
    data = device.host_read(path)
    if data is None:
        return None
    device.put(path, FILE, 0o644, 0, 0, data + b"\n# changed by hand\n")
    return path


@contextlib.contextmanager
def _lasting() -> Iterator[Callable[[], None]]:
    """`keep()`: all that is alive now lasts until the end of the block. The cyclic
    collector would walk the modeled module's tens of thousands of objects again at each
    pass over its older generations; frozen (`gc.freeze`), they are left aside until then."""
    try:
        yield gc.freeze
    finally:
        gc.unfreeze()


def verify_package(package: Path, base_zip: Path, target_zip: Path, parts: frozenset[Part],  # noqa: C901, PLR0913, PLR0915
                   lists: FileLists, log: RunLog, *, permission_replays: int | None = None,
                   target_recorded: bool = False, records: Records | None = None,
                   volumes: Volumes = DEFAULT_VOLUMES) -> VerifyReport:
    """`permission_replays`: at most this many of the permission steps get a power loss
    (evenly spread, first and last included); every other step always does. None: all.

    `target_recorded`: the target is a zip this tool built and archived, byte for byte: the
    sha1s its manifest recorded stand for its files. A wrong record could only fail the
    checks, never pass them: the source's files are hashed from their bytes, and so is every
    file the package writes on the modeled module.

    `records`: where the patches Debian's bspatch proved are kept (`bspatch_check`).

    `volumes`: the module's system volume and /cache the package was made for: a write the
    room does not allow fails on the host as on the module."""
    started = time.monotonic()
    report = VerifyReport(str(package))
    with contextlib.ExitStack() as stack:
        # what runs in other processes starts as soon as it can and is waited for where its
        # check comes: `unzip -tq` now, Debian's bspatch once the pre-check passed
        unzip = stack.enter_context(_InfoZipTest(package))
        keep = stack.enter_context(_lasting())
        base = stack.enter_context(ZipSource(base_zip))
        target = stack.enter_context(ZipSource(target_zip))
        minor = minor_partitions(target, lists)
        stored: dict[str, Stored] = {}
        device, source_tree = device_from_targetfiles(base, minor, volumes, stored=stored)
        expected = expected_system(source_tree,
                                   system_tree(target, recorded_sha1s=target_recorded),
                                   parts, lists)
        kernel_side = target if Part.KERNEL in parts else base
        partitions = {boot_partition(target): kernel_side.sha1(BOOT_IMAGE)}
        minor_side = target if Part.MINOR in parts else base
        for image, part in minor.items():
            if MINOR_PREFIX + image in minor_side.members:
                partitions[part] = minor_side.sha1(MINOR_PREFIX + image)
        keep()  # the zips' members, the trees, the source module

        report.add("unzip -tq", unzip.result(), "No errors")
        pre = precheck(package, device)
        report.add("project version and format (module pre-check)",
                   [f"{pre.code}: {shown_path(pre.message)}"] if pre is not None else [],
                   f"{VERSION_ENTRY} matches the source")
        if not report.ok:
            report.seconds = time.monotonic() - started
            return report

        try:
            entries: ZipSource | DfotaError = stack.enter_context(ZipSource(package))
        except DfotaError as exc:  # raised where the entries are first needed
            entries = exc
        bspatch = stack.enter_context(BspatchProof(entries, base, target, records, stored)) \
            if isinstance(entries, ZipSource) else None
        pkg = load_package(package)
        device.digest()  # once: each copy keeps it
        clean, marks = device.copy(), Marks()
        keep()  # the package, the copy the whole run changes
        result = host_apply(pkg, clean, units=MarkRecorder(marks))
        report.steps = result.steps
        log.say(f"verify: applied on the host in {result.steps} steps, result {result.code}")
        problems = [] if result.code == 0 else [f"result {result.code}: "
                                                f"{shown_path(result.message)}"]
        progress = list(result.progress)
        if not problems and (progress != sorted(progress) or not progress
                             or round(progress[-1], 2) != 100):
            problems.append(f"progress does not rise to 100 % ({progress[-3:]})")
        applied = report.add("apply to the source", problems,
                             f"result 0, {result.steps} steps, progress up to 100 %")
        if applied:
            differs = _state_differences(clean, expected, partitions)
            report.add("result equals the target", differs,
                       f"{len(expected)} entries and {len(partitions)} partitions")
            step_list = replay_points(result.step_log, permission_replays)
            if bspatch is not None and _forks(len(step_list)):
                bspatch.settle()  # no thread or bspatch running while the workers fork
            bar = log.progress("verify: power loss at each step", len(step_list))
            problems = replay_power_losses(pkg, device, expected, partitions, step_list,
                                           bar.advance,
                                           whole_run=(marks, differs[0] if differs else None))
            report.replays = len(step_list)
            bar.finish()
            perms = sum(1 for what in result.step_log if what.startswith("chmod"))
            kept = sum(1 for step in step_list if result.step_log[step - 1].startswith("chmod"))
            report.add("power loss at every step, then a re-run", problems,
                       f"{report.replays} replays reach the target" + (
                           "" if kept == perms else
                           f" (every step but permissions: {kept} of {perms} replayed)"))

        if not isinstance(entries, ZipSource):
            raise entries
        changed = _tamper_target(device, entries)  # the source's last use: changed in place
        if changed is not None:
            before = device.state()
            bad = host_apply(pkg, device)
            problems = []
            if bad.code != 510:
                problems.append(f"result {bad.code}, expected 510 ({bad.message})")
            if device.state() != before:
                problems.append("something was written before the check failed")
            report.add("a source changed by hand stops with 510, nothing written", problems,
                       f"{changed} changed: 510, nothing written")

        assert bspatch is not None
        problems, count, earlier = bspatch.result()
        report.add("Debian bspatch gives the target's bytes", problems, f"{count} patches" + (
            f" ({earlier} of them proven by an earlier run, the same bytes)" if earlier else ""))
    report.seconds = time.monotonic() - started
    return report


def _read_summary(workspace: Workspace) -> dict[str, object]:
    try:
        summary = json.loads(workspace.update_summary.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise DfotaError("no readable package summary: run `doit delta` first",
                         workspace.update_summary) from exc
    if not isinstance(summary, dict):
        raise DfotaError("not a package summary: not a JSON object", workspace.update_summary)
    return summary


def verify_needed(workspace: Workspace, digests: DigestCache | None = None) -> bool:
    """False when the last `doit delta` found nothing to update (and wrote no package), or when
    its package was already proven and published (`published_is_proven`)."""
    summary = _read_summary(workspace)
    if not summary.get("changed", True):
        return False
    done = summary.get("verify")
    return not (isinstance(done, dict) and done.get("ok") and not workspace.pending_zip.exists()
                and published_is_proven(workspace, summary, digests))


def published_is_proven(workspace: Workspace, summary: Mapping[str, object] | None = None,
                        digests: DigestCache | None = None) -> bool:
    """`out/update.zip`, when there is one, has the sha256 of the package that was proven
    (by `digests` while the file is as it was when hashed; None: hashed now)."""
    if not workspace.update_zip.is_file():
        return True
    if summary is None:
        try:
            summary = _read_summary(workspace)
        except DfotaError:
            return False
    # by the stat-keyed cache: any write to the file changes its stat, so it is hashed again
    return recorded_sha256(digests, workspace.update_zip) == summary.get("package_sha256")


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
    summary = _read_summary(workspace)
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
    report = verify_package(package, inputs.base_zip, inputs.target_zip,
                            parts, lists, log, permission_replays=settings.permission_replays,
                            target_recorded=archive.built_here(str(summary["target"]),
                                                               inputs.target_zip),
                            records=state.records,
                            volumes=Volumes.from_json(summary.get("volumes")))
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
    report = verify_package(package, base_zip, target_zip, parts, lists, log,
                            permission_replays=settings.permission_replays,
                            target_recorded=archive.built_here(target, target_zip),
                            records=state.records,
                            volumes=Volumes.from_json(summary.get("volumes")))
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
