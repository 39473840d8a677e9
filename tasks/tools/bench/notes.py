"""The notes under the benchmark's tables: how often each step ran, the chain as three
commands and as one, the tool against the shell procedure and the bsdiff loop, what
`targetfiles` writes to disk, where the time of goals 1, 3 and 4 goes and which step holds goal
5's memory (on disk and on the RAM disk), the big-file case, the cross-baseline package and
verify's power-loss replays."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dfota.tools.bench.codes import AFTER
from dfota.tools.bench.measure import Measure, last_line
from dfota.tools.bench.options import CHAIN_STEPS, ON_DISK
from dfota.tools.bench.spent import shell_line, tasks_line, usage_line

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
    if f.ram is not None:
        times += " (on disk, then on the RAM disk, in each round)"
    verify = ("doit verify and every later step ran as often, with each code (see Before and "
              "after)" if options.before else "doit verify and every later step ran once")
    return (f"{times}, each time in fresh folders (empty archive, state and patch cache before "
            f"targetfiles); wall s is their median, the memory their largest; {verify}.")


def _chain_line(f: Figures) -> str:
    tf, dl, vf, one = (f.steps[k].seconds for k in ("targetfiles", "delta", "verify", "chain"))
    return (f"{_tag(f)}the pair's first chain: {tf + dl + vf:.1f} s as three commands "
            f"(targetfiles {tf:.1f} + delta {dl:.1f} + verify {vf:.1f}), {one:.1f} s as one "
            f"(`_delta_ahead` beside targetfiles); {_clocks(f.summary)}.")


def _first(f: Figures, key: str) -> Measure:
    """This checkout's first run of a step (the one the notes break down)."""
    return f.measured[AFTER, key][0]


def _tag(f: Figures) -> str:
    return "" if f.place == ON_DISK else "on a RAM disk: "


def _against_the_alternatives(f: Figures) -> tuple[str, ...]:
    """The tool against the shell procedure and the bsdiff loop, and what each wrote to
    disk."""
    s, tag = f.steps, _tag(f)
    tool = s["targetfiles"].seconds + s["delta"].seconds
    theirs = s["shell"].seconds + s["bsdiff"].seconds
    found: tuple[str, ...] = (f"{tag}doit targetfiles + doit delta: {tool:.1f} s; shell "
                              f"procedure + bsdiff loop: {theirs:.1f} s ({tool / theirs:.2f}x).",)
    if f.place == ON_DISK and f.disk_rate > 0:
        written = s["targetfiles"].written_kb / 1024
        sync_seconds = written / f.disk_rate
        found += (f"doit targetfiles wrote {written:,.0f} MB to the disk (what it keeps is "
                  f"synced): at the disk's rate measured above, {sync_seconds:.1f} s, "
                  f"{sync_seconds / s['shell'].seconds:.2f}x the shell procedure's time; the "
                  f"shell procedure wrote {s['shell'].written_kb / 1024:,.0f} MB (left to the "
                  "page cache).",)
    return found


def _spent(f: Figures) -> tuple[str, ...]:
    """Where the time of goals 1, 3 and 4 goes and which step holds goal 5's memory, in one
    place, from each step's first run."""
    tag, logs = _tag(f), f.paths.first / "state" / "logs"
    shell, tf = _first(f, "shell"), _first(f, "targetfiles")
    again, one = _first(f, "again"), _first(f, "one-file")
    peak = max(CHAIN_STEPS, key=lambda k: f.steps[k].peak_kb)
    top = f.steps[peak]
    return (
        f"{tag}goal 1, where the time goes: the shell procedure {shell.seconds:.1f} s: "
        f"{shell_line(f.paths.logs / 'shell-0.log', shell)}; {usage_line(shell)}. doit "
        f"targetfiles {tf.seconds:.1f} s: {tasks_line(logs, tf)}; {usage_line(tf)}.",
        f"{tag}goal 3: the second chain {again.seconds:.1f} s: {tasks_line(logs, again)}; "
        f"{usage_line(again)}; tasks shown as run: "
        f"{', '.join(_tasks_run(f.paths.logs / 'again.log')) or 'none'}.",
        f"{tag}goal 4: the chain after a one-file change ({f.plan.changes.one_file}) "
        f"{one.seconds:.1f} s: {tasks_line(logs, one)}; {usage_line(one)}; "
        f"{_cache_line(f.paths.first / 'state')}.",
        f"{tag}goal 5: the largest is {top.step}: {top.tree_kb / 1024:,.0f} MB for its "
        f"tree, {top.process_kb / 1024:,.0f} MB its largest process.",
    )


def _big(f: Figures) -> tuple[str, ...]:
    """The big-file case: each step's time and memory, where verify's time goes, and its
    failure if it failed."""
    if f.big is None:
        return ()
    big, logs = f.big, f.paths.run / "big0" / "state" / "logs"
    verify = _first(f, "big-verify")
    steps = "; ".join(f"{m.step} {m.seconds:.1f} s, {m.peak_kb / 1024:,.0f} MB"
                      for m in (big.targetfiles, big.delta, big.verify))
    failed = (f" It failed (exit {verify.returncode}): "
              f"{last_line(f.paths.logs / 'big-verify.log')}" if verify.returncode else "")
    return (f"goal 5b: {steps}. doit verify: {tasks_line(logs, verify)}; "
            f"{usage_line(verify)}.{failed}",)


def _place_notes(f: Figures) -> tuple[str, ...]:
    """The notes of the pair's steps in one place."""
    found: tuple[str, ...] = (_chain_line(f),)
    if f.full:
        found += _against_the_alternatives(f) + _spent(f)
    return found


def notes(f: Figures) -> tuple[str, ...]:
    found: tuple[str, ...] = (_how_often(f), *_place_notes(f))
    if f.ram is not None:
        found += _place_notes(f.ram)
    found += _big(f)
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
