"""Running the benchmark (`run_benchmark(work_dir, options, say)`): the pair generated (or
reused) under `work_dir/data` and the sample under `work_dir/sample`, every measured command run
in `work_dir/run`, in fresh folders, with this checkout's code and, with `--before`, a git
revision's code in turns, and the pair's steps run again with every folder on a RAM disk (a
folder of its own on the tmpfs `--ram-disk` names, removed afterwards, its logs kept in
`work_dir/run/logs/ram-disk`); the figures go to `findings` for the table.

The first steps (the shell procedure, `doit targetfiles`, `doit delta`, the chain as one
command, the bsdiff loop) run `repeat` times each, in turns, on disk then on the RAM disk in
each round, so a change of the machine's load touches them alike; then in each place `doit
verify`, the second chain and the one-file change (the UBI read on disk only); then, on disk,
the big-file case and the cross-baseline package.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from dfota.core import atomic
from dfota.settings import PROJECT_DIR
from dfota.tools.bench.alternatives import SHELL_PROCEDURE, loop_size, prepare_loop
from dfota.tools.bench.bigfile import big_sdk, big_size, drop_big_zips, system_size_mb
from dfota.tools.bench.codes import Code, compile_code, revision_checkout, this_checkout
from dfota.tools.bench.findings import Figures, table_of
from dfota.tools.bench.machine import disk_sync_rate, parallel_throughput
from dfota.tools.bench.options import (
    CONFIG_DIR,
    ON_DISK,
    ON_RAM_DISK,
    BenchOptions,
    RunPaths,
    Say,
)
from dfota.tools.bench.pair import bench_is_current, generate_bench
from dfota.tools.bench.places import (
    check_ram_disk,
    keep_logs,
    ram_disk_folder,
    ram_disk_paths,
    room_needed,
    temporary_folder,
)
from dfota.tools.bench.plan import SEED, bench_plan
from dfota.tools.bench.report import Table, format_table, render_report
from dfota.tools.bench.session import Command, Session, tool_digest, workspace
from dfota.tools.bench.spent import TRACE_TIMES
from dfota.tools.sample.content import edit
from dfota.tools.sample.generate import generate_sample, sample_is_current
from dfota.tools.sample.versions import NEXT

BUMPED_TIME = "2022-07-16,10:00"

# the UBI wrapper reading the SDK's sysfs image whole: the tree, then every file's data
READ_UBI = """
import importlib
import sys
from pathlib import Path
read_ubifs = importlib.import_module(sys.argv[1]).read_ubifs
tree = read_ubifs(Path(sys.argv[2]), "rootfs")
total = sum(len(c) for p, e in tree.entries.items() if e.kind == "file" for c in tree.chunks(p))
print(f"{len(tree.entries)} entries, {total} bytes of file data")
"""


def _pair_round(s: Session, code: Code, i: int) -> None:
    """Round `i` of the pair's first steps with one code, in fresh folders."""
    trial, one = code.folder(s.paths.run) / f"trial{i}", code.folder(s.paths.run) / f"chain{i}"
    trial.mkdir(parents=True)
    s.take(code, Command("targetfiles", f"targetfiles-{i}", [
        *s.doit(code, trial, f"targetfiles-{i}"), "targetfiles", "--sdk", s.paths.sdk,
        "--source", s.paths.source, *workspace(trial)]))
    s.take(code, Command("delta", f"delta-{i}", [
        *s.doit(code, trial, f"delta-{i}"), "-s", "delta", "--config", CONFIG_DIR,
        *workspace(trial)]))
    # the same three steps as one command: _delta_ahead beside targetfiles
    one.mkdir()
    s.take(code, Command("chain", f"chain-{i}", s.chain(code, one, f"chain-{i}")))
    if s.prune:  # no later step uses them
        shutil.rmtree(one)
        if i not in s.later_trials():
            shutil.rmtree(trial)


def _first_round(s: Session, i: int) -> None:
    """Round `i` of the first steps: the shell procedure, each code's, the bsdiff loop."""
    shell = s.paths.run / "shell"
    if s.full:
        shell.mkdir()
        s.take(s.this, Command("shell", f"shell-{i}", ["bash", "-c",
                                                       TRACE_TIMES + SHELL_PROCEDURE], shell,
                               {"SOURCE": str(s.paths.source), "SDK": str(s.paths.sdk)}))
        shutil.rmtree(shell)
    for code in s.turns(i):
        _pair_round(s, code, i)
    if not s.full:
        return
    if s.loop is None:  # the loop's inputs, extracted once and not timed
        s.loop = prepare_loop(s.paths.run / "loop", s.paths.source,
                              s.paths.first / "out" / "targetfiles.zip")
    s.take(s.this, Command("bsdiff", f"bsdiff-{i}", ["bash", s.loop.script], PROJECT_DIR))


def _one_file_change(paths: RunPaths, one_file: str) -> None:
    """Edit one rootfs file of the run's SDK and bump Package Time (a new version)."""
    one = paths.rootfs / one_file
    one.write_bytes(edit(one.read_bytes(), f"{SEED}:one-file", 3))
    version = paths.rootfs / "etc" / "quectel-project-version"
    version.write_text(version.read_text().replace(NEXT.package_time, BUMPED_TIME))


def _cross_round(s: Session, code: Code, i: int) -> None:
    """Round `i` of the cross-baseline package with one code: the sample's release firmware
    to the pair's SDK as generated, with the sample's lists, in fresh folders."""
    where = code.folder(s.paths.run) / "cross" / f"trial{i}"
    where.mkdir(parents=True)
    lists = ["--config", CONFIG_DIR, *workspace(where)]
    s.take(code, Command("cross-targetfiles", f"cross-targetfiles-{i}", [
        *s.doit(code, where, f"cross-targetfiles-{i}"), "targetfiles", "--sdk",
        s.paths.pair_sdk, "--source", s.paths.cross_source, *lists]))
    s.take(code, Command("cross-delta", f"cross-delta-{i}", [
        *s.doit(code, where, f"cross-delta-{i}"), "-s", "delta", *lists]))


def _verify(s: Session) -> Callable[[Code, Path, str], Sequence[object]]:
    return lambda code, where, label: [*s.doit(code, where, label), "-s", "verify",
                                       *workspace(where)]


def _measure_later(s: Session, one_file: str) -> None:
    """After the first rounds: the UBI read (on disk), `doit verify`, the second chain with
    nothing changed, then the chain after a one-file change."""
    if s.full and s.place == ON_DISK:
        s.later("ubi", lambda code, _where, _label: [sys.executable, "-c", READ_UBI,
                                                     code.ubi_module, s.paths.image])
    s.later("verify", _verify(s))
    if s.full:
        s.later("again", s.chain)
        _one_file_change(s.paths, one_file)
        s.later("one-file", s.chain)


def _big_round(s: Session, code: Code, t: int, sdk: Path, size: int) -> None:
    """Trial `t` of the big-file case with one code, in a fresh workspace whose zips go
    afterwards; verify's failure is a figure, not the run's end."""
    where = code.folder(s.paths.run) / f"big{t}"
    where.mkdir(parents=True)
    labels = {key: key if t == 0 else f"{key}-{t}"
              for key in ("big-targetfiles", "big-delta", "big-verify")}
    s.take(code, Command("big-targetfiles", labels["big-targetfiles"], [
        *s.doit(code, where, labels["big-targetfiles"]), "targetfiles", "--sdk", sdk,
        "--source", s.paths.source, *workspace(where)]))
    s.take(code, Command("big-delta", labels["big-delta"], [
        *s.doit(code, where, labels["big-delta"]), "-s", "delta", "--config", CONFIG_DIR,
        "--system-size-mb", system_size_mb(size), *workspace(where)]))
    s.take(code, Command("big-verify", labels["big-verify"], [
        *s.doit(code, where, labels["big-verify"]), "-s", "verify", *workspace(where)]),
        check=False)
    drop_big_zips(where)


def _measure_big(s: Session) -> None:
    """The big-file case: the pair's next SDK with a file of zeros (2 GiB at scale 1)."""
    size = big_size(s.options.scale)
    sdk = big_sdk(s.paths.pair_sdk, s.paths.run / "big-sdk", size)
    try:
        for t in s.later_trials():
            for code in s.turns(t):
                _big_round(s, code, t, sdk, size)
    finally:
        shutil.rmtree(sdk, ignore_errors=True)


def _measure_cross(s: Session) -> None:
    for i in range(s.options.repeat):
        for code in s.turns(i):
            _cross_round(s, code, i)
    s.later("cross-verify", _verify(s), "cross/trial{}")


def _session(paths: RunPaths, options: BenchOptions, codes: Sequence[Code], say: Say,
             place: str) -> Session:
    """A place's session, its run folder fresh with the pair's SDK copied in (the one-file
    change edits that copy)."""
    shutil.rmtree(paths.run, ignore_errors=True)
    paths.logs.mkdir(parents=True)
    s = Session(paths, options, codes, say, place)
    if place != ON_DISK:
        s.env = temporary_folder(paths)
    return s


def _measure(paths: RunPaths, options: BenchOptions, codes: Sequence[Code], say: Say,
             ram: RunPaths | None) -> Figures:
    tool = tool_digest()
    sessions = [_session(paths, options, codes, say, ON_DISK)]
    if ram is not None:
        sessions.append(_session(ram, options, codes, say, ON_RAM_DISK))
    for s in sessions:
        shutil.copytree(paths.pair_sdk, s.paths.sdk, symlinks=True)
    disk = sessions[0]
    say("bench: the machine's cores and disk ..." if disk.full else
        "bench: the machine's cores ...")
    cores = parallel_throughput()  # again at the end: a shared machine's second core varies
    disk_rate = disk_sync_rate(paths.run) if disk.full else 0.0
    for i in range(options.repeat):
        for s in sessions:
            _first_round(s, i)
    loops = [loop_size(s.loop) if s.loop is not None else None for s in sessions]
    for s in sessions:
        _measure_later(s, bench_plan(options.scale).changes.one_file)
    if disk.full:
        _measure_big(disk)
    # the pair's SDK as generated (the one-file change above edits only the run's copy)
    _measure_cross(disk)
    revisions, both = tuple(c.revision for c in codes), (cores, parallel_throughput())
    changed = tool_digest() != tool
    figures = [Figures(options, s.paths, s.measured, revisions, loop, both, disk_rate, changed,
                       s.place) for s, loop in zip(sessions, loops, strict=True)]
    return replace(figures[0], ram=figures[1]) if ram is not None else figures[0]


@contextlib.contextmanager
def _ram_disk(options: BenchOptions, paths: RunPaths, codes: int,
              say: Say) -> Iterator[RunPaths | None]:
    """The RAM disk's paths for as long as the run lasts (then its folder goes), or None."""
    if not options.on_ram_disk or options.ram_disk is None:
        yield None
        return
    workspaces = codes * options.repeat if codes > 1 else 1  # kept for the later steps
    with ram_disk_folder(options.ram_disk, room_needed(paths.source, workspaces)) as folder:
        say(f"bench: the RAM disk's run in {folder} (removed afterwards)")
        yield ram_disk_paths(folder, paths)


def _pair(work_dir: Path, scale: float, say: Say) -> None:
    """The pair under `work_dir/data`, generated unless a current one is there."""
    data = work_dir / "data"
    if bench_is_current(data, scale):
        say(f"bench: reusing the pair in {data}")
        return
    say(f"bench: generating the pair (scale {scale:g}) in {data}")
    started = time.monotonic()
    generate_bench(data, scale)
    say(f"bench: generated in {time.monotonic() - started:.0f} s")


def _sample_release(work_dir: Path, say: Say) -> Path:
    """The sample's release firmware (the cross-baseline source), generated under
    `work_dir/sample` unless a current one is there."""
    sample = work_dir / "sample"
    if sample_is_current(sample):
        say(f"bench: reusing the sample in {sample}")
    else:
        say(f"bench: generating the sample in {sample}")
        generate_sample(sample)
    return sample / "firmware" / "upgrade" / "targetfiles.zip"


@contextlib.contextmanager
def _codes(before: str, work_dir: Path, say: Say) -> Iterator[tuple[Code, ...]]:
    """This checkout's code, and the revision's that `before` names (checked out for as
    long as the run lasts)."""
    if not before:
        yield (this_checkout(),)
        return
    this = this_checkout(compared=True)
    where = work_dir / "before-code"
    say(f"bench: checking out {before} in {where}")
    with revision_checkout(before, where) as revision:
        for code in (this, revision):
            compile_code(code)
        yield (this, revision)


def run_benchmark(work_dir: Path, options: BenchOptions, say: Say = print) -> Table:
    """Run the benchmark under `work_dir` as `options` say, print the table through `say`
    and return it; write it to `options.report` (e.g. BENCHMARKS.md) when given, unless
    profiling."""
    options.check()
    if options.on_ram_disk and options.ram_disk is not None:
        check_ram_disk(options.ram_disk, 0)  # a wrong folder stops it first; its room later
    work_dir = Path(work_dir).resolve()
    with _codes(options.before, work_dir, say) as codes:  # a wrong revision stops it first
        _pair(work_dir, options.scale, say)
        paths = RunPaths(work_dir, _sample_release(work_dir, say))
        with _ram_disk(options, paths, len(codes), say) as ram:
            figures = _measure(paths, options, codes, say, ram)
            table = table_of(figures)  # reads what the runs left, the RAM disk's too
            if ram is not None:
                say(f"bench: the RAM disk's logs kept in {keep_logs(ram, paths)}")
    say(format_table(table))
    for note in table.notes:
        say(f"- {note}")
    if options.report is not None and not options.profile:
        atomic.write_text(options.report, render_report(table))
        say(f"bench: written {options.report}")
    return table

