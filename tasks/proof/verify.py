"""A package proved on the host before it ships, and the report of its checks.

The package is applied by the host updater (`dfota.device.updater`, the device's rules) to the very
source it was made for, and the result must equal what the target says, entry for entry; then
again after a power loss at every mutating step (`dfota.proof.replays`); a source changed by
hand must stop in the verify phase with 510 and nothing written; every patch must also give the
target's bytes when Debian's `bspatch` applies it (`dfota.proof.debian_checks`).
`dfota.proof.publish` publishes a package that passes and moves out one that fails.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dfota.build.targetfiles import BOOT_IMAGE, boot_partition, system_tree
from dfota.core.errors import DfotaError, shown_path
from dfota.core.runlog import RunLog
from dfota.core.tree import FILE, Tree
from dfota.core.volumes import DEFAULT_VOLUMES, Volumes
from dfota.device.contents import Stored, joined, start_holding
from dfota.device.fs import Device
from dfota.device.interpreter import Package
from dfota.device.units import MarkRecorder, Marks
from dfota.device.updater import UpdateResult, load_package, precheck
from dfota.device.updater import apply_package as host_apply
from dfota.formats.filelists import FileLists
from dfota.formats.version import VERSION_FILE
from dfota.formats.zipio import ZipSource
from dfota.package.mode import Part
from dfota.package.plan import expected_system
from dfota.package.writer import VERSION_ENTRY
from dfota.proof.debian_checks import BspatchProof, InfoZipTest
from dfota.proof.host_device import (
    MINOR_PREFIX,
    device_from_targetfiles,
    minor_partitions,
    state_differences,
)
from dfota.proof.replays import Replays, forks, replay_points, replay_power_losses
from dfota.state.store import Records

# the sha1s of a base's members that verify hashed from its bytes, by the zip's sha256
SOURCE_SHA1S = "verify-source-sha1s"


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


@dataclass(frozen=True)
class VerifyInputs:
    """A package and what it was made for: the source's and the target's targetfiles, the
    parts it covers, the vendor lists.

    `target_recorded`: the target is a zip this tool built and archived, byte for byte: the
    sha1s its manifest recorded stand for its files. A wrong record could only fail the
    checks, never pass them: the source's files are hashed from their bytes, and so is every
    file the package writes on the modeled module.

    `volumes`: the module's system volume and /cache the package was made for: a write the
    room does not allow fails on the host as on the module.

    `base_sha256`: the base zip's sha256 (by the digest cache's rules): the sha1s an earlier
    verify hashed from the bytes of that very zip serve again (`SOURCE_SHA1S`, in the
    `records` of `verify_package`); none of `delta`'s records is taken. Every file the
    package reads is still checked against its sha1 as it is read."""

    package: Path
    base_zip: Path
    target_zip: Path
    parts: frozenset[Part]
    lists: FileLists
    target_recorded: bool = False
    volumes: Volumes = DEFAULT_VOLUMES
    base_sha256: str = ""


@dataclass(frozen=True)
class _Run:
    """What every check of one `verify_package` shares."""

    inputs: VerifyInputs
    log: RunLog
    report: VerifyReport
    permission_replays: int | None
    records: Records | None


@dataclass(frozen=True)
class _Source:
    """The zips, the source module modeled from the base (`stored`: its bytes, by member), and
    what the package must make of it: /system as `expected`, the partitions' sha1s."""

    base: ZipSource
    target: ZipSource
    device: Device
    stored: dict[str, Stored]
    expected: Tree
    partitions: dict[str, str]


def _tamper_target(device: Device, pkg: ZipSource) -> str | None:
    """A patched file of the package, changed on the module by hand (restriction 1)."""
    version_patch = f"patch/system/{VERSION_FILE}.p"  # a changed version file gives 505 first
    patched = sorted(n for n in pkg.names("patch/system/") if n != version_patch)
    if not patched:
        return None
    path = "/system/" + patched[0][len("patch/system/"):-len(".p")]
    data = device.host_content(path)
    if data is None:
        return None
    device.put(path, FILE, 0o644, 0, 0, joined([data, b"\n# changed by hand\n"]))
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


def verify_package(inputs: VerifyInputs, log: RunLog, *, permission_replays: int | None = None,
                   records: Records | None = None) -> VerifyReport:
    """`permission_replays`: at most this many of the permission steps get a power loss
    (evenly spread, first and last included); every other step always does. None: all.

    `records`: where the patches Debian's bspatch proved are kept (`bspatch_check`)."""
    started = time.monotonic()
    start_holding()
    report = VerifyReport(str(inputs.package))
    with contextlib.ExitStack() as stack:
        # what runs in other processes starts as soon as it can and is waited for where its
        # check comes: `unzip -tq` now, Debian's bspatch once the pre-check passed
        unzip = stack.enter_context(InfoZipTest(inputs.package))
        keep = stack.enter_context(_lasting())
        source = _open_source(stack, inputs, records)
        keep()  # the zips' members, the trees, the source module

        report.add("unzip -tq", unzip.result(), "No errors")
        pre = precheck(inputs.package, source.device)
        report.add("project version and format (module pre-check)",
                   [f"{pre.code}: {shown_path(pre.message)}"] if pre is not None else [],
                   f"{VERSION_ENTRY} matches the source")
        if not report.ok:
            report.seconds = time.monotonic() - started
            return report
        _prove(_Run(inputs, log, report, permission_replays, records), stack, keep, source)
    report.seconds = time.monotonic() - started
    return report


def _open_source(stack: contextlib.ExitStack, inputs: VerifyInputs,
                 records: Records | None) -> _Source:
    """The base and target zips, open until the end of `stack`; the source module modeled
    from the base, and what the package must make of it."""
    base = stack.enter_context(ZipSource(inputs.base_zip))
    target = stack.enter_context(ZipSource(inputs.target_zip))
    minor = minor_partitions(target, inputs.lists)
    stored: dict[str, Stored] = {}
    kept = records if inputs.base_sha256 else None
    learned = kept is not None and base.learn_sha1s(kept.get(SOURCE_SHA1S, inputs.base_sha256))
    device, source_tree = device_from_targetfiles(base, minor, inputs.volumes, stored=stored)
    if kept is not None and not learned:  # hashed from the bytes just now
        kept.put(SOURCE_SHA1S, inputs.base_sha256, base.known_sha1s())
    expected = expected_system(source_tree,
                               system_tree(target, recorded_sha1s=inputs.target_recorded),
                               inputs.parts, inputs.lists)
    kernel_side = target if Part.KERNEL in inputs.parts else base
    partitions = {boot_partition(target): kernel_side.sha1(BOOT_IMAGE)}
    minor_side = target if Part.MINOR in inputs.parts else base
    for image, part in minor.items():
        if MINOR_PREFIX + image in minor_side.members:
            partitions[part] = minor_side.sha1(MINOR_PREFIX + image)
    return _Source(base, target, device, stored, expected, partitions)


def _prove(run: _Run, stack: contextlib.ExitStack, keep: Callable[[], None],
           source: _Source) -> None:
    """The checks after the pre-check: the package applied whole, then with a power loss at
    each step, then to a source changed by hand; Debian's bspatch on its patches."""
    report = run.report
    try:
        entries: ZipSource | DfotaError = stack.enter_context(ZipSource(run.inputs.package))
    except DfotaError as exc:  # raised where the entries are first needed
        entries = exc
    bspatch = stack.enter_context(BspatchProof(entries, (source.base, source.target),
                                               run.records, source.stored)) \
        if isinstance(entries, ZipSource) else None
    pkg = load_package(run.inputs.package)
    stack.callback(pkg.close)
    source.device.digest()  # once: each copy keeps it
    clean, marks = source.device.copy(), Marks()
    keep()  # the package, the copy the whole run changes
    result = host_apply(pkg, clean, units=MarkRecorder(marks))
    report.steps = result.steps
    run.log.say(f"verify: applied on the host in {result.steps} steps, result {result.code}")
    applied = report.add("apply to the source", _whole_run_problems(result),
                         f"result 0, {result.steps} steps, progress up to 100 %")
    if applied:
        differs = state_differences(clean, source.expected, source.partitions)
        report.add("result equals the target", differs,
                   f"{len(source.expected)} entries and {len(source.partitions)} partitions")
        _power_losses(run, Replays(pkg, source.device, source.expected, source.partitions),
                      result.step_log, (marks, differs[0] if differs else None), bspatch)

    if not isinstance(entries, ZipSource):
        raise entries
    _changed_by_hand(report, pkg, source.device, entries)

    assert bspatch is not None
    problems, count, earlier = bspatch.result()
    report.add("Debian bspatch gives the target's bytes", problems, f"{count} patches" + (
        f" ({earlier} of them proven by an earlier run, the same bytes)" if earlier else ""))


def _whole_run_problems(result: UpdateResult) -> list[str]:
    """What is wrong with the package's run on the source: its result, or its progress."""
    problems = [] if result.code == 0 else [f"result {result.code}: "
                                            f"{shown_path(result.message)}"]
    progress = list(result.progress)
    if not problems and (progress != sorted(progress) or not progress
                         or round(progress[-1], 2) != 100):
        problems.append(f"progress does not rise to 100 % ({progress[-3:]})")
    return problems


def _power_losses(run: _Run, replays: Replays, step_log: Sequence[str],
                  whole_run: tuple[Marks, str | None], bspatch: BspatchProof | None) -> None:
    """A power loss after each step of `step_log` (the permission steps within the budget),
    then a re-run that must reach the target."""
    report = run.report
    step_list = replay_points(step_log, run.permission_replays)
    if bspatch is not None and forks(len(step_list)):
        bspatch.settle()  # no thread or bspatch running while the workers fork
    bar = run.log.progress("verify: power loss at each step", len(step_list))
    problems = replay_power_losses(replays, step_list, bar.advance, whole_run=whole_run)
    report.replays = len(step_list)
    bar.finish()
    perms = sum(1 for what in step_log if what.startswith("chmod"))
    kept = sum(1 for step in step_list if step_log[step - 1].startswith("chmod"))
    report.add("power loss at every step, then a re-run", problems,
               f"{report.replays} replays reach the target" + (
                   "" if kept == perms else
                   f" (every step but permissions: {kept} of {perms} replayed)"))


def _changed_by_hand(report: VerifyReport, pkg: Package, device: Device,
                     entries: ZipSource) -> None:
    """The package on a source whose patched file was changed by hand: it must stop with 510
    before it writes anything. `device` is the source's: this is its last use."""
    changed = _tamper_target(device, entries)  # changed in place
    if changed is None:
        return
    before = device.state()
    bad = host_apply(pkg, device)
    problems = []
    if bad.code != 510:
        problems.append(f"result {bad.code}, expected 510 ({bad.message})")
    if device.state() != before:
        problems.append("something was written before the check failed")
    report.add("a source changed by hand stops with 510, nothing written", problems,
               f"{changed} changed: 510, nothing written")
