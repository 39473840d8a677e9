"""Measuring one command: its wall time, its CPU time, the largest single process of its tree
(exact) and the memory of the whole tree (sampled), under a small wrapper process.

Each command runs as a subprocess of the wrapper: the wrapper's monotonic clock times it, its
`getrusage(RUSAGE_CHILDREN)` gives the CPU time of every process of the tree, the largest
resident set of any of them (every waited-for descendant counts) and the bytes they wrote to
files on a disk (`ru_oublock`: a file on a tmpfs counts nothing); a thread of the benchmark
samples the sum of PSS over the wrapper's descendants every `SAMPLE_SECONDS`.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfota.core.errors import DfotaError
from dfota.settings import PROJECT_DIR

# Runs the command and reports its wall time and the largest resident set of any process of
# its tree (every descendant that was waited for counts in RUSAGE_CHILDREN).
_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "started = time.time()\n"
    "start = time.monotonic()\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "seconds = time.monotonic() - start\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'seconds': seconds, 'maxrss_kb': usage.ru_maxrss, 'returncode': code,\n"
    "               'user': usage.ru_utime, 'system': usage.ru_stime,\n"
    "               'written_kb': usage.ru_oublock // 2, 'started': started}, f)\n"
)
SAMPLE_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Measure:
    """One measured command."""

    step: str
    seconds: float
    tree_kb: int  # the largest memory of the command's process tree (sampled, see tree_kb)
    process_kb: int  # the largest single process of the tree (ru_maxrss, exact)
    returncode: int = 0
    runs: tuple[float, ...] = ()  # every wall time when the step was repeated
    user_s: float = 0.0  # CPU time of the whole tree, in user space and in the kernel
    system_s: float = 0.0
    written_kb: int = 0  # written to files on a disk by the whole tree (none on a tmpfs)
    started: float = 0.0  # when it started, in seconds since the epoch (the logs' clock)

    @property
    def peak_kb(self) -> int:
        return max(self.tree_kb, self.process_kb)


def combine(measures: Sequence[Measure]) -> Measure:
    """One step measured several times: the median wall and CPU times, the largest memory."""
    if not measures:
        raise ValueError("nothing to combine")
    return Measure(measures[0].step, statistics.median(m.seconds for m in measures),
                   max(m.tree_kb for m in measures), max(m.process_kb for m in measures),
                   max(m.returncode for m in measures), tuple(m.seconds for m in measures),
                   statistics.median(m.user_s for m in measures),
                   statistics.median(m.system_s for m in measures),
                   round(statistics.median(m.written_kb for m in measures)),
                   measures[0].started)


def process_tree(root: int) -> list[int]:
    """Every live descendant of `root` (not `root` itself), from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
            ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def rss_kb(pid: int) -> int:
    """A process's resident set size in KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


def pss_kb(pid: int) -> int:
    """A process's proportional set size (shared pages split between their users), in KiB;
    its resident set size where smaps_rollup cannot be read; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss_kb(pid)


def tree_kb(root: int) -> int:
    """The memory of `root`'s descendants: the sum of their PSS, or the RSS of the only one
    (reading PSS walks the page tables: too slow to sample a large process often)."""
    pids = process_tree(root)
    if len(pids) == 1:
        return rss_kb(pids[0])
    return sum(pss_kb(pid) for pid in pids)


class _TreeSampler:
    """Samples the memory of a process tree in a thread until stopped."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_kb(self.root))
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# the commands run as in a user's shell: Python writes the bytecode of the modules it compiles
# (a machine that sets PYTHONDONTWRITEBYTECODE would compile the tool's modules in every run)
_USERS_ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(step: str, argv: Sequence[str], log: Path, *, cwd: Path = PROJECT_DIR,
            env: Mapping[str, str] | None = None) -> Measure:
    """Run `argv` under the wrapper, its output into `log`; raise when it fails."""
    m = measure_any(step, argv, log, cwd=cwd, env=env)
    if m.returncode != 0:
        raise DfotaError(f"{step} failed (exit {m.returncode}): {last_line(log)}", log)
    return m


def measure_any(step: str, argv: Sequence[str], log: Path, *, cwd: Path = PROJECT_DIR,
                env: Mapping[str, str] | None = None) -> Measure:
    """`measure`, but a command that fails is measured too: its exit code is in the
    measure."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    os.sync()  # untimed: what an earlier command left to the page cache is not this one's
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(result), *map(str, argv)],
                                cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**_USERS_ENVIRONMENT, **(env or {})})
        sampler = _TreeSampler(proc.pid)
        proc.wait()
        tree_peak = sampler.stop()
    try:
        data = json.loads(result.read_text())
    except (OSError, ValueError) as exc:
        raise DfotaError(f"{step}: the measuring wrapper left no result", log) from exc
    return Measure(step, float(data["seconds"]), tree_peak, int(data["maxrss_kb"]),
                   int(data["returncode"]), user_s=float(data["user"]),
                   system_s=float(data["system"]), written_kb=int(data["written_kb"]),
                   started=float(data["started"]))


def last_line(log: Path) -> str:
    """The last line a command wrote to its log."""
    return (log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"])[0]
