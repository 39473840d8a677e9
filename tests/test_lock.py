"""The workspace lock (dfota.state.lock) in one process: two opens of the lock file exclude each
other as two runs do. The clock is the test's: a wait is counted in looks at it, not timed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dfota.state.lock import WorkspaceBusy, take


def test_a_run_that_may_wait_polls_until_the_holder_lets_go(tmp_path: Path) -> None:
    held = take(tmp_path, ["doit", "nightly", "chain"])
    looks = 0

    def clock() -> float:  # time stands still; the holder lets go at the third look
        nonlocal looks
        looks += 1
        if looks == 3:
            held.release()
        return 0.0

    lock = take(tmp_path, ["doit", "targetfiles"], wait=1.0, clock=clock)
    # the deadline, then two refused tries: the third try took the lock
    assert looks == 3
    assert json.loads((tmp_path / "lock").read_text())["command"] == "doit targetfiles"
    lock.release()


def test_a_run_whose_wait_is_over_names_the_holder(tmp_path: Path) -> None:
    held = take(tmp_path, ["doit", "nightly", "chain"])
    times = iter([100.0, 100.5, 101.0])  # deadline 101: one more try at 100.5, none at 101
    with pytest.raises(WorkspaceBusy, match=rf"^workspace busy: pid {os.getpid()} since "
                                            r"\S+: doit nightly chain$"):
        take(tmp_path, ["doit", "targetfiles"], wait=1.0, clock=lambda: next(times))
    assert next(times, None) is None  # gave up at the deadline's first look
    held.release()
    take(tmp_path, ["doit", "targetfiles"]).release()  # free again: taken without a wait
