"""Running the benchmark (`run_benchmark(work_dir, options, say)`): the pair generated (or
reused) under `work_dir/data` and the sample under `work_dir/sample`, every measured command run
in `work_dir/run`, in fresh folders, with this checkout's code and, with `--before`, a git
revision's code in turns; the figures go to `findings` for the table.

The first steps (the shell procedure, `doit targetfiles`, `doit delta`, the chain as one
command, the bsdiff loop) run `repeat` times each, in turns, so a change of the machine's load
touches them alike; then the UBI read, `doit verify`, the second chain, the one-file change
and the cross-baseline package.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dfota.core import atomic
from dfota.settings import PROJECT_DIR
from dfota.tools.bench.alternatives import SHELL_PROCEDURE, BsdiffLoop, loop_size, prepare_loop
from dfota.tools.bench.codes import Code, compile_code, revision_checkout, this_checkout
from dfota.tools.bench.findings import Figures, table_of
from dfota.tools.bench.machine import disk_sync_rate, parallel_throughput
from dfota.tools.bench.measure import Measure, measure
from dfota.tools.bench.options import CONFIG_DIR, STEPS, BenchOptions, RunPaths, Say
from dfota.tools.bench.pair import bench_is_current, generate_bench
from dfota.tools.bench.plan import SEED, bench_plan
from dfota.tools.bench.report import Table, format_table, render_report
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


@dataclass(frozen=True, slots=True)
class Command:
    """One measured command: its step, its log's name, and what runs where."""

    key: str  # of STEPS
    label: str  # the log's name (the code's prefix comes before it)
    argv: Sequence[object]
    cwd: Path | None = None  # None: the code's own folder
    env: Mapping[str, str] = field(default_factory=dict)


def tool_digest() -> str:
    """What doit's up-to-date checks hash as the tool's code: editing it during a run makes
    the repeated chains rebuild everything."""
    digest = hashlib.sha1()
    for path in sorted([*(PROJECT_DIR / "tasks").rglob("*.py"),
                        *(p for p in (PROJECT_DIR / "templates").glob("*") if p.is_file())]):
        digest.update(path.relative_to(PROJECT_DIR).as_posix().encode() + b"\0"
                      + path.read_bytes())
    return digest.hexdigest()


def _workspace(where: Path) -> list[object]:
    """The options of a workspace of its own under `where`: out/, archive/, state/."""
    return ["--out", where / "out", "--archive", where / "archive", "--state", where / "state"]


class _Session:
    """One run's measuring: its folders, its codes (this checkout's first), every measure by
    code and step, and what the steps left to read."""

    def __init__(self, paths: RunPaths, options: BenchOptions, codes: Sequence[Code],
                 say: Say) -> None:
        self.paths, self.options, self.codes, self.say = paths, options, tuple(codes), say
        self.measured: dict[tuple[str, str], list[Measure]] = {}
        self.loop: BsdiffLoop | None = None

    @property
    def full(self) -> bool:
        return self.options.cases == "all"

    @property
    def this(self) -> Code:
        return self.codes[0]

    def turns(self, i: int) -> tuple[Code, ...]:
        """The codes in round `i`: which goes first alternates."""
        return self.codes if i % 2 == 0 else self.codes[::-1]

    def later_trials(self) -> range:
        """The trials of the steps after the first ones: all of them when two codes are
        compared (the noise is the spread of the repeats), else the first."""
        return range(self.options.repeat if len(self.codes) > 1 else 1)

    def take(self, code: Code, command: Command) -> Measure:
        name = STEPS[command.key]
        self.say(f"bench: {name}{code.tag} ...")
        m = measure(name, [str(a) for a in command.argv],
                    self.paths.logs / f"{code.prefix}{command.label}.log",
                    cwd=command.cwd or code.root, env={**code.env, **command.env})
        self.say(f"bench: {name}{code.tag}: {m.seconds:.1f} s, {m.peak_kb / 1024:.0f} MB")
        self.measured.setdefault((code.name, command.key), []).append(m)
        return m

    def doit(self, code: Code, where: Path, label: str) -> list[object]:
        """`doit` with its record in `where`, under cProfile when profiling."""
        base: list[object] = [sys.executable]
        if self.options.profile:
            base += ["-m", "cProfile", "-o", self.paths.logs / f"{code.prefix}{label}.prof"]
        return [*base, "-m", "doit", "--db-file", where / "doit.db"]

    def chain(self, code: Code, where: Path, label: str) -> list[object]:
        """The whole chain as one command in the workspace `where`."""
        return [*self.doit(code, where, label), "targetfiles", "--sdk", self.paths.sdk,
                "--source", self.paths.source, *_workspace(where), "delta", "--config",
                CONFIG_DIR, *_workspace(where), "verify", *_workspace(where)]

    def later(self, key: str, argv_of: Callable[[Code, Path, str], Sequence[object]],
              folder: str = "trial{}") -> None:
        """Step `key` in each later trial's workspace, with each code in turns."""
        for t in self.later_trials():
            label = key if t == 0 else f"{key}-{t}"
            for code in self.turns(t):
                where = code.folder(self.paths.run) / folder.format(t)
                self.take(code, Command(key, label, argv_of(code, where, label)))


def _pair_round(s: _Session, code: Code, i: int) -> None:
    """Round `i` of the pair's first steps with one code, in fresh folders."""
    trial, one = code.folder(s.paths.run) / f"trial{i}", code.folder(s.paths.run) / f"chain{i}"
    trial.mkdir(parents=True)
    s.take(code, Command("targetfiles", f"targetfiles-{i}", [
        *s.doit(code, trial, f"targetfiles-{i}"), "targetfiles", "--sdk", s.paths.sdk,
        "--source", s.paths.source, *_workspace(trial)]))
    s.take(code, Command("delta", f"delta-{i}", [
        *s.doit(code, trial, f"delta-{i}"), "-s", "delta", "--config", CONFIG_DIR,
        *_workspace(trial)]))
    # the same three steps as one command: _delta_ahead beside targetfiles
    one.mkdir()
    s.take(code, Command("chain", f"chain-{i}", s.chain(code, one, f"chain-{i}")))


def _first_round(s: _Session, i: int) -> None:
    """Round `i` of the first steps: the shell procedure, each code's, the bsdiff loop."""
    shell = s.paths.run / "shell"
    if s.full:
        shell.mkdir()
        s.take(s.this, Command("shell", f"shell-{i}", ["bash", "-c", SHELL_PROCEDURE], shell,
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


def _cross_round(s: _Session, code: Code, i: int) -> None:
    """Round `i` of the cross-baseline package with one code: the sample's release firmware
    to the pair's SDK as generated, with the sample's lists, in fresh folders."""
    where = code.folder(s.paths.run) / "cross" / f"trial{i}"
    where.mkdir(parents=True)
    lists = ["--config", CONFIG_DIR, *_workspace(where)]
    s.take(code, Command("cross-targetfiles", f"cross-targetfiles-{i}", [
        *s.doit(code, where, f"cross-targetfiles-{i}"), "targetfiles", "--sdk",
        s.paths.pair_sdk, "--source", s.paths.cross_source, *lists]))
    s.take(code, Command("cross-delta", f"cross-delta-{i}", [
        *s.doit(code, where, f"cross-delta-{i}"), "-s", "delta", *lists]))


def _verify(s: _Session) -> Callable[[Code, Path, str], Sequence[object]]:
    return lambda code, where, label: [*s.doit(code, where, label), "-s", "verify",
                                       *_workspace(where)]


def _measure_pair(s: _Session) -> None:
    for i in range(s.options.repeat):
        _first_round(s, i)
    if s.full:
        s.later("ubi", lambda code, _where, _label: [sys.executable, "-c", READ_UBI,
                                                     code.ubi_module, s.paths.image])
    s.later("verify", _verify(s))


def _measure_changes(s: _Session, one_file: str) -> None:
    """The second chain with nothing changed, then the chain after a one-file change."""
    s.later("again", s.chain)
    _one_file_change(s.paths, one_file)
    s.later("one-file", s.chain)


def _measure_cross(s: _Session) -> None:
    for i in range(s.options.repeat):
        for code in s.turns(i):
            _cross_round(s, code, i)
    s.later("cross-verify", _verify(s), "cross/trial{}")


def _measure(paths: RunPaths, options: BenchOptions, codes: Sequence[Code],
             say: Say) -> Figures:
    tool = tool_digest()
    shutil.rmtree(paths.run, ignore_errors=True)
    paths.logs.mkdir(parents=True)
    shutil.copytree(paths.pair_sdk, paths.sdk, symlinks=True)
    s = _Session(paths, options, codes, say)
    say("bench: the machine's cores and disk ..." if s.full else "bench: the machine's cores ...")
    cores = parallel_throughput()  # again at the end: a shared machine's second core varies
    disk_rate = disk_sync_rate(paths.run) if s.full else 0.0
    _measure_pair(s)
    loop = loop_size(s.loop) if s.loop is not None else None
    if s.full:
        _measure_changes(s, bench_plan(options.scale).changes.one_file)
    # the pair's SDK as generated (the one-file change above edits only the run's copy)
    _measure_cross(s)
    return Figures(options, paths, s.measured, tuple(c.revision for c in s.codes), loop,
                   (cores, parallel_throughput()), disk_rate, tool_digest() != tool)


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
    work_dir = Path(work_dir).resolve()
    with _codes(options.before, work_dir, say) as codes:  # a wrong revision stops it first
        _pair(work_dir, options.scale, say)
        cross_source = _sample_release(work_dir, say)
        figures = _measure(RunPaths(work_dir, cross_source), options, codes, say)
    table = table_of(figures)
    say(format_table(table))
    for note in table.notes:
        say(f"- {note}")
    if options.report is not None and not options.profile:
        atomic.write_text(options.report, render_report(table))
        say(f"bench: written {options.report}")
    return table

