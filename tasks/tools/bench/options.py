"""What one benchmark run measures: its options, its folders, and its steps by key and by the
name the table gives them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfota.settings import PROJECT_DIR, SAMPLE_DIR
from dfota.tools.sample.generate import ROOTFS_DIR

Say = Callable[[str], None]

CONFIG_DIR = SAMPLE_DIR / "config"
REPORT = PROJECT_DIR / "BENCHMARKS.md"
CASES = ("all", "verify")  # every step, or only `doit verify` against `doit delta` (goals 6, 6b)
CROSS_STEPS = 4000  # the cross-baseline package: 4,000 steps or more at scale 1
DEFAULT_RAM_DISK = Path("/dev/shm")  # where the RAM-disk run goes unless told (a tmpfs)
ON_DISK, ON_RAM_DISK = "on disk", "RAM disk"  # where a step ran, as the table names it

# every step by key, in the order of the table
STEPS = {
    "ubi": "read sdxlemur-sysfs.ubi (every file's data)",
    "shell": "shell procedure (note 2.2.2)",
    "targetfiles": "doit targetfiles",
    "delta": "doit delta (fresh state but for targetfiles')",
    "verify": "doit verify",
    "chain": "doit targetfiles delta verify, one command",
    "bsdiff": "Debian bsdiff loop",
    "again": "second chain, nothing changed",
    "one-file": "chain after a one-file change",
    "cross-targetfiles": "doit targetfiles, cross-baseline",
    "cross-delta": "doit delta, cross-baseline (fresh state but for targetfiles')",
    "cross-verify": "doit verify, cross-baseline",
    "big-targetfiles": "doit targetfiles, the target adds a big file of zeros",
    "big-delta": "doit delta, the big file shipped whole",
    "big-verify": "doit verify, the big file shipped whole",
}


def step_name(key: str, place: str = ON_DISK) -> str:
    """A step's name in the table: with its place when not on disk."""
    return STEPS[key] if place == ON_DISK else f"{STEPS[key]}, on a {place}"


# the steps that run no code of the tool: measured once per round, never compared
NOT_THE_TOOLS = ("shell", "bsdiff")
# the steps of the chain whose memory goal 5 takes
CHAIN_STEPS = ("targetfiles", "delta", "verify", "chain", "again", "one-file")
# the steps run again with every folder on a RAM disk: the pair's chain and its alternatives
# (the UBI read, the cross-baseline package and the big file only on disk)
RAM_DISK_STEPS = ("shell", "targetfiles", "delta", "verify", "chain", "bsdiff", "again",
                  "one-file")


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """How a run goes. `profile` runs the doit commands under cProfile (`run/logs/<step>.prof`;
    the times are then inflated and no report is written). The first steps run `repeat` times
    each, in fresh folders, and count by their median. `cases`: "all", or "verify": only `doit
    targetfiles`, `doit delta` and `doit verify` of the pair and of the cross-baseline package
    (goals 6 and 6b). `before`: a git revision whose code runs the same steps too, in turns
    with this checkout's, every step `repeat` times with each code. `ram_disk`: a tmpfs
    folder where the pair's steps run again with every folder on it (None: not at all; only
    with cases "all")."""

    scale: float = 1.0
    report: Path | None = None  # write BENCHMARKS.md here
    profile: bool = False
    repeat: int = 3
    cases: str = "all"
    before: str = ""
    ram_disk: Path | None = DEFAULT_RAM_DISK

    @property
    def on_ram_disk(self) -> bool:
        return self.ram_disk is not None and self.cases == "all"

    def check(self) -> None:
        if self.repeat < 1:
            raise ValueError("repeat must be at least 1")
        if self.cases not in CASES:
            raise ValueError(f"cases must be one of: {', '.join(CASES)}")
        if self.before and self.repeat < 2:
            raise ValueError("--before needs --repeat 2 or more: the noise is the spread of "
                             "the repeats")


@dataclass(frozen=True, slots=True)
class RunPaths:
    """The run's folders and inputs."""

    work: Path  # the benchmark's folder: data/ (the pair), sample/, run/
    cross_source: Path  # the sample's release targetfiles.zip

    @property
    def data(self) -> Path:
        return self.work / "data"

    @property
    def run(self) -> Path:
        return self.work / "run"

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def sdk(self) -> Path:
        """The run's copy of the pair's next SDK (the one-file change edits it)."""
        return self.run / "sdk"

    @property
    def pair_sdk(self) -> Path:
        """The pair's next SDK as generated (the cross-baseline package's target)."""
        return self.data / "ql-ol-extsdk"

    @property
    def source(self) -> Path:
        """The pair's base targetfiles.zip."""
        return self.data / "firmware" / "upgrade" / "targetfiles.zip"

    @property
    def rootfs(self) -> Path:
        return self.sdk / ROOTFS_DIR

    @property
    def image(self) -> Path:
        return self.sdk / "target" / "sdxlemur-sysfs.ubi"

    @property
    def first(self) -> Path:
        """The first trial's workspace with this checkout's code."""
        return self.run / "trial0"
