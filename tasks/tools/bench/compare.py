"""Before and after: each step measured with a git revision's code and with this checkout's,
in turns in the same run, their ratio against the noise of the repeats."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dfota.tools.bench.measure import Measure


def spread(m: Measure) -> float:
    """The noise of a step's repeats: (slowest - fastest) / median; 0 for a single run."""
    runs = m.runs or (m.seconds,)
    return (max(runs) - min(runs)) / m.seconds if m.seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Comparison:
    """One step with both codes, each combined over its runs (the median counts)."""

    before: Measure
    after: Measure

    @property
    def step(self) -> str:
        return self.after.step

    @property
    def ratio(self) -> float:
        """after / before, wall time."""
        return self.after.seconds / self.before.seconds if self.before.seconds > 0 else 1.0

    @property
    def cpu_ratio(self) -> float:
        """after / before, CPU time (user and system) of the whole process tree."""
        before = self.before.user_s + self.before.system_s
        after = self.after.user_s + self.after.system_s
        return after / before if before > 0 else 1.0

    @property
    def noise(self) -> float:
        """The larger spread of the two codes' repeats."""
        return max(spread(self.before), spread(self.after))

    @property
    def failed(self) -> str:
        """Which code's runs failed ("before", "after", "both"), or "": a failed run did other
        work (it stopped early, say), so its time is not compared."""
        before, after = self.before.returncode != 0, self.after.returncode != 0
        return "both" if before and after else "before" if before else "after" if after else ""

    @property
    def slower(self) -> bool:
        """Slower by more than the noise (never said of a step that failed)."""
        return not self.failed and self.ratio - 1 > self.noise

    @property
    def slower_text(self) -> str:
        if self.failed:
            return f"not compared: {self.failed} failed"
        return "YES" if self.slower else "no"


def _runs(m: Measure) -> str:
    return ", ".join(f"{s:.1f}" for s in m.runs) or f"{m.seconds:.1f}"


def format_comparisons(comparisons: Sequence[Comparison]) -> str:
    lines = ["| step | before s | runs (s) | after s | runs (s) | after / before | noise "
             "| CPU after / before | slower beyond the noise |",
             "|---|---:|---|---:|---|---:|---:|---:|---|"]
    lines += [f"| {c.step} | {c.before.seconds:.1f} | {_runs(c.before)} | {c.after.seconds:.1f} "
              f"| {_runs(c.after)} | {c.ratio:.2f}x | {c.noise:.0%} | {c.cpu_ratio:.2f}x "
              f"| {c.slower_text} |" for c in comparisons]
    return "\n".join(lines)


def verdict(comparisons: Sequence[Comparison]) -> str:
    """One line: which steps are slower by more than their noise, if any."""
    slower = [c for c in comparisons if c.slower]
    failed = "".join(f" Not compared: {c.step} ({c.failed} failed)." for c in comparisons
                     if c.failed)
    if not slower:
        return "No step is slower by more than its noise." + failed
    return "Slower by more than the noise: " + "; ".join(
        f"{c.step} ({c.ratio:.2f}x, noise {c.noise:.0%})" for c in slower) + "." + failed
