"""The benchmark's table and BENCHMARKS.md: the machine, the data set, every step's figures,
the ratios against their goals, each step before and after (with `--before`), the notes, and
what keeps each step fast (`means`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dfota.tools.bench.compare import Comparison, format_comparisons, verdict
from dfota.tools.bench.means import MEANS
from dfota.tools.bench.measure import SAMPLE_SECONDS, Measure
from dfota.tools.bench.options import ON_DISK
from dfota.tools.bench.plan import KB, MB


@dataclass(frozen=True, slots=True)
class Goal:
    """One ratio (or figure) of the issue against its goal: passed when at most `limit`,
    unless the step it measures failed."""

    number: str
    what: str
    value: float
    limit: float
    unit: str  # "x" (a ratio) or "MB"
    where: str = ON_DISK  # where the steps' folders lay
    failed: bool = False

    @property
    def passed(self) -> bool:
        return self.value <= self.limit and not self.failed

    @property
    def result(self) -> str:
        return "PASS" if self.passed else "MISS (it failed)" if self.failed else "MISS"


@dataclass(frozen=True, slots=True)
class Table:
    scale: float
    machine: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]
    measures: tuple[Measure, ...]
    goals: tuple[Goal, ...]
    notes: tuple[str, ...] = ()
    cases: str = "all"  # what ran (`--cases`)
    comparisons: tuple[Comparison, ...] = ()  # with `--before`: each step before and after
    compared: tuple[str, str] = ("", "")  # the codes compared: (before, after)


def size_mb(size: int) -> str:
    if size < MB:
        return f"{size / KB:.1f} KB"
    return f"{size / MB:.1f} MB"


def size_text(size: int) -> str:
    """`size_mb`, in GiB from 1 GiB up."""
    return f"{size / (1024 * MB):.1f} GiB" if size >= 1024 * MB else size_mb(size)


def _figure(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f} {unit}"


def format_goals(goals: Sequence[Goal]) -> str:
    lines = ["| # | ratio | where | measured | goal | result |", "|---|---|---|---:|---:|---|"]
    lines += [f"| {g.number} | {g.what} | {g.where} | {_figure(g.value, g.unit)} | "
              f"<= {_figure(g.limit, g.unit)} | {g.result} |" for g in goals]
    return "\n".join(lines)


def format_measures(measures: Sequence[Measure]) -> str:
    lines = ["| step | wall s | runs (s) | CPU user s | CPU system s | written MB "
             "| tree peak MB | largest process MB |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {m.step} | {m.seconds:.1f} | {', '.join(f'{s:.1f}' for s in m.runs) or '1'} "
              f"| {m.user_s:.1f} | {m.system_s:.1f} | {m.written_kb / 1024:.0f} "
              f"| {m.tree_kb / 1024:.0f} | {m.process_kb / 1024:.0f} |" for m in measures]
    return "\n".join(lines)


def format_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in pairs)])


def format_table(table: Table) -> str:
    """What the benchmark prints: the steps, then the ratios against their goals (and each
    step before and after, when compared)."""
    text = f"{format_measures(table.measures)}\n\n{format_goals(table.goals)}\n"
    if table.comparisons:
        text += f"\n{format_comparisons(table.comparisons)}\n\n{verdict(table.comparisons)}\n"
    return text


def render_report(table: Table) -> str:
    """BENCHMARKS.md."""
    passed = sum(g.passed for g in table.goals)
    notes = "".join(f"- {n}\n" for n in table.notes)
    only = "" if table.cases == "all" else f" (`--cases {table.cases}` only)"
    return f"""# Benchmarks

Latest figures of the production-size benchmark (`python -m dfota.tools.bench`,
`tasks/tools/bench/`), scale {table.scale:g}{only}: {passed} of {len(table.goals)} goals met.
The machine is shared and noisy: read the ratios (each measured in the same run), not the
absolute times.{_compared_line(table)}

## How it is measured

- Each command runs as a subprocess of a small Python wrapper. **wall s**: the wrapper's
  monotonic clock around the command. **largest process MB**: the wrapper's
  `getrusage(RUSAGE_CHILDREN).ru_maxrss`, the peak resident set of the largest single process
  of the tree (exact). **tree peak MB**: the largest sum of PSS (`/proc/PID/smaps_rollup`;
  shared pages split between their users, so forked workers are not counted twice) over every
  descendant of the wrapper, RSS when there is only one, sampled every {SAMPLE_SECONDS:g} s
  (a shorter spike can be missed).
  Goals 5 and 5b take the larger of the two; goal 5 the largest over `doit targetfiles`,
  `delta` and `verify` alone, the chain as one command, the second chain and the one-file
  change. **CPU user s, system s**: the wrapper's
  `getrusage(RUSAGE_CHILDREN)`, the CPU time of every process of the tree (worker processes
  included), in user space and in the kernel (copying into the page cache, say). **written
  MB**: the same call's `ru_oublock`, what the tree wrote to files on a disk (a file on a
  tmpfs counts nothing, so it is 0 on the RAM disk).
- The RAM-disk run: the pair's steps (the shell procedure, `doit targetfiles`, `doit delta`,
  the chain as one command, the bsdiff loop, `doit verify`, the second chain and the one-file
  change) run again with every folder on a tmpfs (`--ram-disk`, `/dev/shm` unless told; a
  folder of the run's own there, removed afterwards): the pair's base zip copied there, the
  SDK's copy, the workspaces with their archives, the shell procedure's and the bsdiff loop's
  folders and the temporary folder (`TMPDIR`). Each round of the first steps runs on disk and
  then on the RAM disk. Creating files costs little there: the shell procedure's best case.
  The UBI read, the cross-baseline package and the big-file case run on disk only (neither
  their CPU nor their memory depends on where the files lie). Its rows end in "on a RAM disk"
  and its goals say "RAM disk"; its logs are kept in `run/logs/ram-disk/`.
- The big-file case (goal 5b): the pair's base and its next SDK with one more file, 2 GiB of
  zeros at scale 1 (a sparse file: nothing written or held to make it), which the package
  ships whole, deflated; `doit targetfiles`, `doit delta` (for a system volume with room for
  the file) and `doit verify` in a workspace of their own, whose zips are removed afterwards
  (each holds the file stored). A failure of `doit verify` there is reported as a miss, not
  the run's end.
- What the time is spent on (the notes under the goals): for a `doit` command, the tasks of
  the tool that ran, each from its log's creation to its last line, with the phases it
  reported (`zipping ...: N done in X s`), and doit's start and up-to-date checks before the
  first; for the shell procedure, each command, traced with a time before each (`set -x`);
  for both, the CPU time and what was written to disk. They are from each step's first run.
- The shell procedure is the note's section 2.2.2, command for command (`unzip -qK`, `cp`,
  `mv firmware dev ../`, `rm -rf *`, `cp -prafR`, `zip -qry0`).
- The bsdiff loop is Debian's `bsdiff old new patch`, one after the other, over every regular
  file that changed in `SYSTEM/` and over `boot.img`. Both trees are extracted with `unzip`
  before the timed part (extraction is not timed). Its size is its patches plus the new files
  and the changed `MULTIFOTA` images, uncompressed; `update.zip` is deflated.
- `doit delta` and `doit verify` are timed alone (`doit -s`); the first chain (goals 3 and
  4 divide by it) is the sum of the three steps. The first chain is also run as one command,
  `doit targetfiles delta verify`, in fresh folders as often as the first steps. The repeated
  chains are one `doit targetfiles delta verify` each.
- The cross-baseline package (goal 6b) is made from the sample's release firmware
  (`sample_sdk/firmware/upgrade/targetfiles.zip`, generated beside the pair) to the pair's
  next SDK with the sample's lists (`sample_sdk/config`), in a workspace of its own: nearly
  the whole rootfs is new to it, thousands of files, symlinks and permission steps for
  `doit verify` to replay. Its `doit targetfiles` and `doit delta` run like the pair's, in
  fresh folders, `doit delta` and `doit verify` timed alone.
- The kernel's patch and the base's sha1s that `delta` asks for are made by the task
  `_delta_ahead` (`tasks/package/ahead.py`), which a command that runs `delta` runs in a task
  process beside targetfiles: `doit targetfiles` alone does not run it and `doit -s delta`
  skips it, so that work is in delta's time, and the one-command chain shows what running it
  beside targetfiles saves. The notes compare targetfiles and delta together with the shell
  procedure and the bsdiff loop.
- Commands run with Python writing bytecode as usual (`PYTHONDONTWRITEBYTECODE`, which this
  machine sets, is removed from their environment).
- The first steps but verify run several times, in turns, in fresh folders; the median counts
  (see the runs column and the notes).
- The machine itself: how much work two busy Python processes get done at once against one
  alone (2.00x: two whole cores; a shared machine gives less), before the steps and after
  them, and the rate at which 256 MB written to the run's disk are synced. The archive's
  versions are synced to the disk; the shell procedure leaves its zip to the page cache.
- Before each command, untimed, every dirty page on the machine is written out (`sync`): no
  command pays for the writeback of what an earlier one left to the page cache (the shell
  procedure's tree and zip went on being written while the `doit targetfiles` after it synced
  its own).
- The one-file change edits one rootfs file (24-byte patches) and bumps `Package Time`
  (a changed version must be a new version); the target is still built on the same base, so
  every other patch can come from the cache.

## Machine

{format_pairs(table.machine)}

## Data set

{format_pairs(table.data)}

## Steps

{format_measures(table.measures)}

## Goals

{format_goals(table.goals)}
{_before_and_after(table)}
## Notes

{notes}
{MEANS}"""


def _compared_line(table: Table) -> str:
    if not table.comparisons:
        return ""
    before, after = table.compared
    return f"\n\nBefore ({before}) and after ({after}): {verdict(table.comparisons)}"


def _before_and_after(table: Table) -> str:
    """The section that compares each step before and after, when the run compared them."""
    if not table.comparisons:
        return ""
    before, after = table.compared
    return f"""
## Before and after

The same steps with the code before ({before}) and after ({after}), in the same run on the
same data: the revision's code checked out in a temporary `git worktree`, its commands run
there with the same virtual environment. Each step ran {_repeats(table)} times with each code,
in turns (which code goes first alternates), the first steps in fresh folders; the median
counts. The noise is the spread of a step's repeats, (slowest - fastest) / median, the larger
of the two codes'; a step is slower beyond the noise when after / before - 1 is larger than
it. The CPU column compares the CPU time of the whole process tree (user and system), which a
busy machine disturbs less than the wall time.

{format_comparisons(table.comparisons)}

{verdict(table.comparisons)}
"""


def _repeats(table: Table) -> int:
    return max(len(c.after.runs) for c in table.comparisons)
