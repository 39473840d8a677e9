"""From what a run measured to its table: each step combined over its runs, the ratios against
their goals, the data set, the notes, the machine, and each step before and after."""

from __future__ import annotations

import json
import os
import stat
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dfota.tools.bench.alternatives import LoopSize
from dfota.tools.bench.bigfile import BIG_PATH, big_size, system_size_mb
from dfota.tools.bench.codes import AFTER, BEFORE
from dfota.tools.bench.compare import Comparison
from dfota.tools.bench.machine import machine
from dfota.tools.bench.measure import Measure, combine
from dfota.tools.bench.notes import notes
from dfota.tools.bench.options import (
    CHAIN_STEPS,
    NOT_THE_TOOLS,
    ON_DISK,
    ON_RAM_DISK,
    STEPS,
    BenchOptions,
    RunPaths,
)
from dfota.tools.bench.plan import BenchPlan, bench_plan, cross_baseline_new
from dfota.tools.bench.report import Goal, Table, size_mb, size_text


@dataclass(frozen=True, slots=True)
class PackageRun:
    """One package made and proven, each command timed alone, and its `update.json`."""

    targetfiles: Measure
    delta: Measure
    verify: Measure
    summary: Mapping[str, Any]


def verify_goals(delta: Measure, verify: Measure, cross: PackageRun) -> tuple[Goal, Goal]:
    """Goals 6 and 6b: `doit verify` against `doit delta`, each timed alone, on the pair and
    on the cross-baseline package."""
    steps = cross.summary.get("verify", {}).get("steps", 0)
    return (Goal("6", "doit verify / doit delta", verify.seconds / delta.seconds, 1.0, "x"),
            Goal("6b", f"doit verify / doit delta, cross-baseline package ({steps:,} steps)",
                 cross.verify.seconds / cross.delta.seconds, 2.0, "x"))


@dataclass(frozen=True)
class Figures:
    """What one run measured: every run of every step by code (`AFTER`, `BEFORE`) and key,
    and what the steps left in the run's folders."""

    options: BenchOptions
    paths: RunPaths
    measured: Mapping[tuple[str, str], Sequence[Measure]]
    revisions: tuple[str, ...]  # of the codes: this checkout's, then the revision's
    loop: LoopSize | None  # the bsdiff loop's output (every case)
    cores: tuple[float, float]  # two busy processes' work at once, before and after the steps
    disk_rate: float  # MB/s written and synced (every case)
    tool_changed: bool  # the tool's code changed during the run
    place: str = ON_DISK  # where the steps' folders lay (ON_DISK or ON_RAM_DISK)
    ram: Figures | None = None  # the pair's steps again, every folder on a RAM disk

    @property
    def full(self) -> bool:
        return self.options.cases == "all"

    @cached_property
    def plan(self) -> BenchPlan:
        return bench_plan(self.options.scale)

    @cached_property
    def steps(self) -> dict[str, Measure]:
        """This checkout's steps, each combined over its runs, in the order of the table."""
        return {key: combine(self.measured[AFTER, key]) for key in STEPS
                if (AFTER, key) in self.measured}

    @cached_property
    def summary(self) -> Mapping[str, Any]:
        """The pair's `update.json`."""
        return dict(json.loads((self.paths.first / "out" / "update.json").read_text()))

    @cached_property
    def cross(self) -> PackageRun:
        where = self.paths.run / "cross" / "trial0"
        summary = json.loads((where / "out" / "update.json").read_text())
        return PackageRun(self.steps["cross-targetfiles"], self.steps["cross-delta"],
                          self.steps["cross-verify"], summary)

    @cached_property
    def big(self) -> PackageRun | None:
        """The big-file case (on disk), with its package's `update.json` (published, or left
        unverified when verify failed)."""
        if "big-verify" not in self.steps:
            return None
        out = self.paths.run / "big0" / "out"
        found = next((p for p in (out / "update.json", out / ".unverified" / "update.json")
                      if p.is_file()), None)
        summary = json.loads(found.read_text()) if found is not None else {}
        return PackageRun(self.steps["big-targetfiles"], self.steps["big-delta"],
                          self.steps["big-verify"], summary)

    def comparisons(self) -> tuple[Comparison, ...]:
        return tuple(Comparison(combine(self.measured[BEFORE, key]), self.steps[key])
                     for key in self.steps if (BEFORE, key) in self.measured
                     and key not in NOT_THE_TOOLS)


# goal 1: `doit targetfiles` against the shell procedure, by place (a RAM disk makes creating
# files cheap, the shell procedure's best case)
TARGETFILES_LIMIT = {ON_DISK: 0.5, ON_RAM_DISK: 1.0}
MEMORY_LIMIT_MB = 400  # goals 5 and 5b


def place_goals(f: Figures) -> dict[str, Goal]:
    """The goals of the pair's steps in one place (on disk or on the RAM disk), by number."""
    s, where = f.steps, f.place
    first_chain = s["targetfiles"].seconds + s["delta"].seconds + s["verify"].seconds
    peak = max(s[k].peak_kb for k in CHAIN_STEPS)
    return {
        "1": Goal("1", "doit targetfiles / shell procedure",
                  s["targetfiles"].seconds / s["shell"].seconds, TARGETFILES_LIMIT[where], "x",
                  where),
        "2": Goal("2", "doit delta / Debian bsdiff loop (wall)",
                  s["delta"].seconds / s["bsdiff"].seconds, 0.5, "x", where),
        "3": Goal("3", "second chain, nothing changed / first chain",
                  s["again"].seconds / first_chain, 0.03, "x", where),
        "4": Goal("4", "chain after a one-file change / first chain",
                  s["one-file"].seconds / first_chain, 0.25, "x", where),
        "5": Goal("5", "peak memory of the chain, largest process tree (MB)", peak / 1024,
                  MEMORY_LIMIT_MB, "MB", where),
        "6": Goal("6", "doit verify / doit delta", s["verify"].seconds / s["delta"].seconds,
                  1.0, "x", where),
    }


def big_goal(big: PackageRun, size: int) -> Goal:
    """Goal 5b: the memory of `doit verify` on the package that ships the big file whole
    (missed, whatever its figure, when verify failed)."""
    return Goal("5b", f"peak memory of doit verify, a {size_text(size)} file of zeros shipped "
                      "whole (MB)", big.verify.peak_kb / 1024, MEMORY_LIMIT_MB, "MB",
                ON_DISK, failed=big.verify.returncode != 0)


def _goals(f: Figures) -> tuple[Goal, ...]:
    s = f.steps
    pair, cross = verify_goals(s["delta"], s["verify"], f.cross)
    if not f.full or f.loop is None:
        return (pair, cross)
    places = [place_goals(g) for g in (f, f.ram) if g is not None]  # each goal: disk, RAM
    shipped = f.loop.patch_bytes + f.loop.whole_bytes
    found = [place[n] for n in ("1", "2") for place in places]
    found.append(Goal("2b", "update.zip / loop's patches + whole files (bytes)",
                      f.summary["package_size"] / shipped, 1.0, "x"))
    found += [place[n] for n in ("3", "4", "5") for place in places]
    if f.big is not None:
        found.append(big_goal(f.big, big_size(f.options.scale)))
    found += [place["6"] for place in places]
    return (
        *found,
        cross,
        Goal("U1", f"read the {size_mb(f.paths.image.stat().st_size)} sysfs image (s)",
             s["ubi"].seconds, 5.0, "s"),
        Goal("U2", "peak memory reading it (MB)", s["ubi"].peak_kb / 1024, 300, "MB"),
    )


def folder_counts(root: Path) -> tuple[int, int, int, int, int]:
    """(entries, files, symlinks, folders, bytes of the files) under `root`."""
    files = links = dirs = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISLNK(st.st_mode):
                links += 1
            elif stat.S_ISDIR(st.st_mode):
                dirs += 1
            else:
                files += 1
                size += st.st_size
    return files + links + dirs, files, links, dirs, size


def _entries(zip_path: Path) -> int:
    with zipfile.ZipFile(zip_path) as zf:
        return len(zf.infolist())


def _plan_line(summary: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(summary.get("counts", {}).items()))


def _package_line(summary: Mapping[str, Any]) -> str:
    return (f"{size_mb(summary['package_size'])} (patches "
            f"{size_mb(summary['bytes']['patches'])}, whole files "
            f"{size_mb(summary['bytes']['whole_files'])}, uncompressed)")


def _verify_line(summary: Mapping[str, Any]) -> str:
    verify = summary.get("verify", {})
    steps, replays = verify.get("steps"), verify.get("power_loss_replays")
    return (f"{steps:,} steps, " if isinstance(steps, int) else "? steps, ") + (
        f"{replays:,} power-loss replays" if isinstance(replays, int) else "? replays")


def _pair_rows(f: Figures) -> list[tuple[str, str]]:
    plan, changes = f.plan, f.plan.changes
    entries, files, links, dirs, size = folder_counts(f.paths.rootfs)
    return [
        ("rootfs (next SDK)", f"{entries:,} entries ({files:,} files, {links:,} symlinks, "
                              f"{dirs:,} folders), {size_mb(size)}"),
        ("modem firmware", size_mb(sum(plan.modem_segments)
                                    + sum(s for _p, s in plan.modem_extra))),
        ("boot image", size_mb(plan.boot_size)),
        ("base targetfiles.zip", f"{_entries(f.paths.source):,} entries, "
                                 f"{size_mb(f.paths.source.stat().st_size)}"),
        ("changes", f"{len(changes.modified)} files modified, {len(changes.added)} paths added, "
                    f"{len(changes.removed)} removed, {len(changes.mode_changed)} modes, "
                    f"{len(changes.retargeted)} symlinks retargeted, "
                    f"{len(changes.replaced)} replaced by another type; kernel and abl"),
        ("delta plan", _plan_line(f.summary)),
        ("update.zip", _package_line(f.summary)),
    ]


def _data_rows(f: Figures) -> tuple[tuple[str, str], ...]:
    rows = _pair_rows(f)
    if f.loop is not None:
        rows.append(("bsdiff loop", f"{f.loop.diffs} diffs: patches "
                                    f"{size_mb(f.loop.patch_bytes)}; whole files "
                                    f"{size_mb(f.loop.whole_bytes)} ({f.loop.whole}); "
                                    f"zipped {size_mb(f.loop.zipped)}"))
    new, cross = cross_baseline_new(f.plan), f.cross.summary
    rows += [
        ("verify", _verify_line(f.summary)),
        ("cross-baseline source", f"the sample's release targetfiles.zip, "
                                  f"{_entries(f.paths.cross_source):,} entries, "
                                  f"{size_mb(f.paths.cross_source.stat().st_size)}"),
        ("cross-baseline new entries", f"{new.files:,} files, {new.symlinks:,} symlinks, "
                                       f"{new.folders:,} folders"),
        ("cross-baseline delta plan", _plan_line(cross)),
        ("cross-baseline update.zip", _package_line(cross)),
        ("cross-baseline verify", _verify_line(cross)),
    ]
    if f.big is not None:
        rows += _big_rows(f.big, big_size(f.options.scale))
    return tuple(rows)


def _big_rows(big: PackageRun, size: int) -> list[tuple[str, str]]:
    summary = big.summary
    packed = summary.get("package_size")
    package = (f"{size_mb(packed)}: the pair's changes and the big file, deflated"
               if isinstance(packed, int) else "? (no update.json)")
    return [("big-file case", f"the pair's base; its next SDK with `{BIG_PATH}`, "
                              f"{size_text(size)} of zeros (a sparse file); the package made "
                              f"for a {system_size_mb(size):,} MB system volume"),
            ("big-file update.zip", package),
            ("big-file verify", _verify_line(summary) if summary.get("verify") else
             f"failed (exit {big.verify.returncode})" if big.verify.returncode else "?")]


def _machine_rows(f: Figures) -> tuple[tuple[str, str], ...]:
    rows: tuple[tuple[str, str], ...] = (
        *machine(), ("two busy processes at once", f"{f.cores[0]:.2f}x the work of one alone "
                                                   f"before the steps, {f.cores[1]:.2f}x after"))
    if f.full:
        rows += (("disk, written and synced", f"{f.disk_rate:.0f} MB/s"),)
    if f.ram is not None and f.options.ram_disk is not None:
        fs = os.statvfs(f.options.ram_disk)
        rows += (("RAM disk", f"a tmpfs at {f.options.ram_disk}, "
                              f"{fs.f_blocks * fs.f_frsize / 1024**3:.1f} GiB"),)
    return rows


def _beside(f: Figures) -> tuple[Measure, ...]:
    """Every step on disk, each followed by the same step on the RAM disk."""
    ram = f.ram.steps if f.ram is not None else {}
    return tuple(m for key, step in f.steps.items() for m in (step, ram.get(key)) if m)


def table_of(f: Figures) -> Table:
    """The run's table: this checkout's figures, and each step before and after when two
    codes ran."""
    comparisons = f.comparisons() + (f.ram.comparisons() if f.ram is not None else ())
    compared = (f.revisions[1], f.revisions[0]) if comparisons else ("", "")
    return Table(f.options.scale, _machine_rows(f), _data_rows(f), _beside(f), _goals(f),
                 notes(f), f.options.cases, comparisons, compared)
