"""What the figures came from: the machine (CPU, cores, memory, the versions of Python and of
the diff engines), how much work two busy processes get done at once against one alone (a
shared machine gives less than its cores), and the rate at which its disk syncs writes."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dfota.tools.bench.plan import MB


def _first_line(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    return (done.stdout.strip().splitlines() or ["?"])[0]


def machine() -> tuple[tuple[str, str], ...]:
    """What the figures came from."""
    cpu = mem = "?"
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "?")
        found = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        if found:
            mem = f"{int(found[1]) / MB:.1f} GiB"
    except (OSError, ValueError):
        pass
    import bsdiff4
    import detools

    debian = _first_line(["dpkg-query", "-W", "-f", "${Version}\n", "bsdiff"])
    return (("CPU", cpu), ("cores (nproc)", str(len(os.sched_getaffinity(0)))),
            ("memory", mem), ("Python", platform.python_version()),
            ("system", platform.platform()), ("Debian bsdiff", debian),
            ("bsdiff4", bsdiff4.__version__), ("detools", detools.__version__))


_SPIN = "import sys\nx = 0\nfor i in range(int(sys.argv[1])):\n    x += i\n"


def _spin_seconds(processes: int, loops: int) -> float:
    """Wall time of `processes` Pythons each counting to `loops`, started together."""
    started = time.monotonic()
    spinning = [subprocess.Popen([sys.executable, "-c", _SPIN, str(loops)])
                for _ in range(processes)]
    for proc in spinning:
        proc.wait()
    return time.monotonic() - started


def parallel_throughput(loops: int = 5_000_000, repeat: int = 3) -> float:
    """How much more CPU work two busy processes get done at once than one alone (2.0: two
    whole cores): twice one's time alone over the pair's time (medians of `repeat`)."""
    alone = statistics.median(_spin_seconds(1, loops) for _ in range(repeat))
    pair = statistics.median(_spin_seconds(2, loops) for _ in range(repeat))
    return 2 * alone / pair


def disk_sync_rate(folder: Path, size: int = 256 * MB) -> float:
    """MB/s of writing `size` bytes to a new file in `folder` and syncing them to the disk:
    what each byte the archive keeps costs (a copy left to the page cache costs no disk)."""
    os.sync()  # nothing else's dirty pages in the way
    block = os.urandom(MB)
    path = folder / ".disk-rate"
    started = time.monotonic()
    try:
        with open(path, "wb") as out:
            for _ in range(size // MB):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        seconds = time.monotonic() - started
    finally:
        path.unlink(missing_ok=True)
    return size / MB / seconds
