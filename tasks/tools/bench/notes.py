"""The notes under the benchmark's tables: how often each step ran, the chain as three
commands and as one, the tool against the shell procedure and the bsdiff loop, what
`targetfiles` syncs, what the second chain and the one-file change ran, the cross-baseline
package and verify's power-loss replays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dfota.tools.bench.plan import MB
from dfota.tools.bench.report import size_mb

if TYPE_CHECKING:
    from pathlib import Path

    from dfota.tools.bench.findings import Figures


def _clocks(summary: Mapping[str, Any]) -> str:
    timings = summary.get("timings", {})
    return (f"delta's own clock: diffing {timings.get('diff_seconds', '?')} s of "
            f"{timings.get('total_seconds', '?')} s; verify's own clock: "
            f"{summary.get('verify', {}).get('seconds', '?')} s")


def _replay_detail(summary: Mapping[str, Any]) -> str:
    """What verify said of its power-loss replays (which steps it replayed)."""
    return next((str(check.get("detail", "")) for check in summary.get("verify", {}).get(
        "checks", []) if str(check.get("name", "")).startswith("power loss")), "?")


def _tasks_run(log: Path) -> list[str]:
    """The doit tasks that ran (not up to date) according to doit's output."""
    return [line[3:].strip() for line in log.read_text(errors="replace").splitlines()
            if line.startswith(".  ")]


def _cache_line(state: Path) -> str:
    """The patch cache lines of the newest delta log (the kernel's, then the files')."""
    logs = sorted((state / "logs").glob("*-delta.log"))
    found = [line[line.index("patches: "):]
             for line in (logs[-1].read_text(errors="replace").splitlines() if logs else [])
             if "patches: " in line]
    return "; ".join(found) or "no patch line in the delta log"


def _how_often(f: Figures) -> str:
    options = f.options
    times = f"{options.repeat} time{'s' if options.repeat > 1 else ''} each, in turns"
    times = (f"the shell procedure, doit targetfiles, doit delta and the bsdiff loop ran {times}"
             if f.full else f"only the verify cases ran (--cases {options.cases}): doit "
             f"targetfiles and doit delta ran {times}")
    verify = ("doit verify and every later step ran as often, with each code (see Before and "
              "after)" if options.before else "doit verify ran once")
    return (f"{times}, each time in fresh folders (empty archive, state and patch cache before "
            f"targetfiles); wall s is their median, the memory their largest; {verify}.")


def _chain_line(f: Figures) -> str:
    tf, dl, vf, one = (f.steps[k].seconds for k in ("targetfiles", "delta", "verify", "chain"))
    return (f"the pair's first chain: {tf + dl + vf:.1f} s as three commands (targetfiles "
            f"{tf:.1f} + delta {dl:.1f} + verify {vf:.1f}), {one:.1f} s as one "
            f"(`_delta_ahead` beside targetfiles); {_clocks(f.summary)}.")


def _against_the_alternatives(f: Figures) -> tuple[str, ...]:
    """The notes of every case: the tool against the shell procedure and the bsdiff loop, the
    disk, the second chain and the one-file change."""
    s = f.steps
    tool = s["targetfiles"].seconds + s["delta"].seconds
    theirs = s["shell"].seconds + s["bsdiff"].seconds
    synced = (2 * (f.paths.first / "out" / "targetfiles.zip").stat().st_size
              + f.paths.source.stat().st_size)
    sync_seconds = synced / MB / f.disk_rate
    ran_again = _tasks_run(f.paths.logs / "again.log")
    return (
        f"doit targetfiles + doit delta: {tool:.1f} s; shell procedure + bsdiff loop: "
        f"{theirs:.1f} s ({tool / theirs:.2f}x).",
        f"doit targetfiles syncs {size_mb(synced)} to the disk (the zip, which is archived "
        "as it is, its copy in out/, the archived source): at the disk's rate measured "
        f"above, {sync_seconds:.1f} s, {sync_seconds / s['shell'].seconds:.2f}x the shell "
        "procedure's time by itself (the shell procedure syncs nothing).",
        f"second chain: tasks that ran: {', '.join(ran_again) or 'none'}.",
        f"one-file change ({f.plan.changes.one_file}): "
        f"{_cache_line(f.paths.first / 'state')}.",
    )


def notes(f: Figures) -> tuple[str, ...]:
    found: tuple[str, ...] = (_how_often(f), _chain_line(f))
    if f.full:
        found += _against_the_alternatives(f)
    cross = f.cross
    found += (
        "cross-baseline package (goal 6b): the sample's release firmware as source, the pair's"
        " next SDK as target, the sample's lists, in a workspace of its own; delta "
        f"{cross.delta.seconds:.1f} s, verify {cross.verify.seconds:.1f} s; "
        f"{_clocks(cross.summary)}.",
        f"verify's power-loss replays: the pair: {_replay_detail(f.summary)}; cross-baseline: "
        f"{_replay_detail(cross.summary)}.",
    )
    if f.full and f.tool_changed:
        found += ("the tool's code changed during the run (tasks/**/*.py or templates/): doit "
                  "took every output as out of date; goals 3 and 4 are not meaningful",)
    return found
