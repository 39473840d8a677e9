"""What a measured command spent its time on, for the notes under the goals: its CPU time and
what it wrote to disk, and, for a `doit` command, each task of the tool that ran (from the
workspace's logs: each task's log is named by the time it started and last written when its
last line came) with the phases it reported ("zipping targetfiles.zip: 5519 done in 2.1 s");
for the shell procedure, each of its commands (traced with `set -x`, a time before each)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from dfota.tools.bench.measure import Measure

_STAMP = "%Y%m%dT%H%M%S.%fZ"  # as dfota.core.runlog names a task's log
_PHASE = re.compile(r"^(?P<label>[^:\n]+): \d+ done in (?P<seconds>[0-9.]+) s$", re.MULTILINE)
_TRACED = re.compile(r"^\++ (?P<time>[0-9]+\.[0-9]+) (?P<command>.*)$", re.MULTILINE)
# put before the shell procedure: every command it runs is traced with the time it started
TRACE_TIMES = "PS4='+ $EPOCHREALTIME '\nset -x\n"
_SHOWN = 0.05  # seconds: a task or a command shorter than this is counted with the rest


@dataclass(frozen=True, slots=True)
class TaskTime:
    """One task of the tool as its log tells it: when it started and wrote its last line
    (seconds since the epoch), and the phases it reported with their times."""

    task: str
    start: float
    end: float
    phases: tuple[tuple[str, float], ...] = ()

    @property
    def seconds(self) -> float:
        return self.end - self.start


def task_times(log_dir: Path, m: Measure) -> list[TaskTime]:
    """The tasks whose logs in `log_dir` started while `m` ran, in the order they started."""
    found = []
    for log in sorted(log_dir.glob("*.log")) if log_dir.is_dir() else ():
        stamp, sep, task = log.stem.partition("Z-")
        if not sep:
            continue
        try:
            start = datetime.strptime(stamp + "Z", _STAMP).replace(
                tzinfo=timezone.utc).timestamp()
        except ValueError:
            continue
        if not m.started <= start <= m.started + m.seconds:
            continue
        phases = tuple((p["label"], float(p["seconds"]))
                       for p in _PHASE.finditer(log.read_text(errors="replace")))
        found.append(TaskTime(task, start, max(start, log.stat().st_mtime), phases))
    return found


def usage_line(m: Measure) -> str:
    """Its CPU time against its wall time, and what it wrote to disk."""
    cpu = m.user_s + m.system_s
    busy = f" ({cpu / m.seconds:.1f} cores busy)" if m.seconds > 0 else ""
    return (f"CPU {m.user_s:.1f} s user + {m.system_s:.1f} s system{busy}, "
            f"{m.written_kb / 1024:,.0f} MB written to disk")


def tasks_line(log_dir: Path, m: Measure) -> str:
    """A `doit` command's time by the tasks of the tool that ran in it."""
    tasks = task_times(log_dir, m)
    if not tasks:
        return f"no task of the tool ran: {m.seconds:.1f} s of doit's start and checks"
    parts = [f"doit's start and checks {tasks[0].start - m.started:.1f} s"]
    for t in tasks:
        inner = ", ".join(f"{label} {seconds:.1f} s" for label, seconds in t.phases
                          if seconds >= _SHOWN)
        parts.append(f"{t.task} {t.seconds:.1f} s" + (f" ({inner})" if inner else ""))
    parts.append(f"after the last task's last line "
                 f"{max(0.0, m.started + m.seconds - max(t.end for t in tasks)):.1f} s")
    return ", ".join(parts)


def _command_name(command: str) -> str:
    """A traced command by its name and its options: `cp -prafR`, `rm -rf`, `cd`."""
    words = command.split()
    if len(words) > 1 and words[1].startswith("-"):
        return " ".join(words[:2])
    return words[0] if words else "?"


def shell_steps(log: Path, m: Measure) -> list[tuple[str, float]]:
    """The shell procedure's commands with their times, from its trace in `log` (each runs
    until the next starts; the last until the procedure ended)."""
    marks = [(float(t["time"]), _command_name(t["command"]))
             for t in _TRACED.finditer(log.read_text(errors="replace"))]
    if not marks:
        return []
    ends = [t for t, _name in marks[1:]] + [m.started + m.seconds]
    return [(name, end - start) for (start, name), end in zip(marks, ends, strict=True)]


def shell_line(log: Path, m: Measure) -> str:
    """The shell procedure's time by command; those under 0.05 s together."""
    steps = shell_steps(log, m)
    if not steps:
        return "no trace of its commands in its log"
    shown = [f"{name} {seconds:.1f} s" for name, seconds in steps if seconds >= _SHOWN]
    rest = sum(seconds for _name, seconds in steps if seconds < _SHOWN)
    return ", ".join([*shown, f"the rest {rest:.1f} s"])
