"""Power losses replayed on the host: which steps get one, and for each a re-run of the package
on what the cut left, compared with the target (`dfota.device.power_loss` runs them); many
replays are spread over forked workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from dfota.core.tree import Tree
from dfota.device.fs import Device
from dfota.device.host import entry_key
from dfota.device.interpreter import Package
from dfota.device.power_loss import for_each_power_loss
from dfota.device.units import Marks
from dfota.device.updater import UpdateResult
from dfota.proof.host_device import state_differences


@dataclass(frozen=True)
class Replays:
    """A package, the source module it is applied to (each replay runs on a copy), and what
    every re-run must end as: /system as `expected`, the partitions with these sha1s."""

    pkg: Package
    device: Device
    expected: Tree
    partitions: Mapping[str, str]


@dataclass(frozen=True)
class _Job:
    replays: Replays
    expected_keys: dict[str, tuple[object, ...]]
    # the marks of the whole run for re-runs to rejoin (None: each goes to its end), and
    # what a re-run that rejoins it ends as: that run's first difference, if any
    whole_run: Marks | None
    whole_run_differs: str | None


_JOB: _Job | None = None
_POLL = 1.0  # seconds between looks at the workers' replays (progress lines)
# below this many power losses the replays run in this process (measured: on the benchmark
# pair, 471 steps took 0.85 s in two workers and 0.25 s here)
_STEPS_PER_FORK = 2000


def replay_points(step_log: Sequence[str], permission_replays: int | None) -> list[int]:
    """The steps (1-based) after which the power is cut."""
    perms = [i for i, what in enumerate(step_log, 1) if what.startswith("chmod")]
    others = [i for i, what in enumerate(step_log, 1) if not what.startswith("chmod")]
    if permission_replays is not None and len(perms) > permission_replays:
        count = max(permission_replays, 2)
        stride = (len(perms) - 1) / (count - 1)
        perms = sorted({perms[round(i * stride)] for i in range(count)})
    return sorted(others + perms)


def _replay(steps: Sequence[int], advance: Callable[[int], None] | None = None) -> list[str]:
    """Cut the power after each step, re-run the package, compare (in a worker process).
    `advance(1)` after each (in this process only)."""
    assert _JOB is not None
    job = _JOB
    expected, partitions = job.replays.expected, job.replays.partitions
    problems = []

    def check(step: int, again: UpdateResult, after: Device) -> None:
        if advance is not None:
            advance(1)
        if again.code != 0:
            problems.append(f"power loss after step {step}: re-run gave {again.code} "
                            f"({again.message})")
        elif again.rejoined is not None:
            if job.whole_run_differs is not None:
                problems.append(f"power loss after step {step}: {job.whole_run_differs}")
        elif after.keys() != job.expected_keys or not \
                partitions.items() <= after.partition_sha1s().items():
            # the quick comparison found a difference: the full one says which
            diff = state_differences(after, expected, partitions) or ["differs"]
            problems.append(f"power loss after step {step}: {diff[0]}")

    for_each_power_loss(job.replays.pkg, job.replays.device, sorted(steps), check,
                        follow=job.whole_run)
    return problems


def forks(steps: int, workers: int | None = None) -> bool:
    """Whether `replay_power_losses` spreads `steps` replays over forked workers."""
    return (workers or os.cpu_count() or 1) > 1 and steps >= max(_STEPS_PER_FORK, 2)


def replay_power_losses(replays: Replays, steps: Sequence[int],
                        advance: Callable[[int], None], workers: int | None = None, *,
                        whole_run: tuple[Marks, str | None] | None = None) -> list[str]:
    """Every replay is independent: spread them over the cores (forked workers share the
    loaded package and device), in chunks, and report problems in step order.

    `whole_run`: the marks of a run of the package on the device that succeeded, and its
    first difference from what is expected (None: none). A re-run stops where its device is
    as that run left it after the same top-level statement, and ends as that run does.
    Without it, every re-run goes to its end and is compared."""
    global _JOB
    workers = workers or os.cpu_count() or 1
    # one chunk per core, each from the whole range (each runs the package once, to its
    # end); a package of few steps in this process: its re-runs cost less than a fork
    count = workers if forks(len(steps), workers) else 1
    chunks = [list(steps[i::count]) for i in range(count) if steps[i::count]]
    marks, differs = whole_run or (None, None)
    _JOB = _Job(replays, {path: entry_key(e) for path, e in replays.expected.items()},
                marks, differs)
    try:
        if len(chunks) < 2:
            results = [_replay(chunk, advance) for chunk in chunks]
        else:
            results = _in_workers(chunks, min(workers, len(chunks)), advance)
    finally:
        _JOB = None
    return [line for found in results for line in found]


def _in_workers(chunks: list[list[int]], workers: int,
                advance: Callable[[int], None]) -> list[list[str]]:
    """`_replay` of each chunk in a pool of forked workers, the results in chunk order."""
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = []
        found = pool.imap(_replay, chunks)
        for chunk in chunks:
            while True:
                try:
                    results.append(found.next(timeout=_POLL))
                    break
                except multiprocessing.TimeoutError:
                    advance(0)  # the bar may say how long it has run
            advance(len(chunk))
    return results
