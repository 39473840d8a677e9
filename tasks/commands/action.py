"""How every task's action runs: its title, the run's log, the project's error as one line and
a failed task of a kind the exit code tells apart, Ctrl-C in doit's task processes and in
its own.

The modules that do the work are imported by the action that needs them, when it runs: a run
with every task up to date imports none of them (half a second of a doit start).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from doit.exceptions import TaskFailed

from dfota.core.errors import CheckFailed, DfotaError
from dfota.core.runlog import RunLog
from dfota.core.workers import starting_now
from dfota.settings import tool_digest

TaskDict = dict[str, Any]

TOOL = tool_digest()  # a change to the code makes every output out of date


class ReportedFailure(TaskFailed):
    """A failure whose one-line message was already printed; `kind` says what failed for
    the exit code (dfota.cli): "input" (the user can fix an input), "check" (a product of the
    tool failed a check) or "exit:N" (an upgrade's). It reaches doit's process from a task
    process pickled, with its kind."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


# Python's own fork hooks (logging's locks): an exception raised while they run is printed as
# "Exception ignored" with a traceback and lost, so a signal that lands there comes again later
_FORK_HOOKS = frozenset(hook.__code__ for name in ("_acquireLock", "_releaseLock",
                                                  "_after_at_fork_child_reinit_locks",
                                                  "_prepareFork", "_afterFork")
                        if (hook := getattr(logging, name, None)) is not None
                        and hasattr(hook, "__code__"))
_AGAIN_AFTER = 0.01  # seconds: a fork's hooks take microseconds


def _in_fork_hook(frame: FrameType | None) -> bool:
    return frame is not None and frame.f_code in _FORK_HOOKS


def _deferred(signum: int, frame: FrameType | None) -> bool:
    """A signal landing inside a fork hook or the start of a worker comes again once that is
    over (True: it was put off)."""
    if _in_fork_hook(frame) or starting_now():
        _again_later(signum)
        return True
    return False


def _again_later(signum: int) -> None:
    """The same signal to this process once the current fork hook, or the start of a worker
    (`dfota.core.workers.starting`), is over."""
    timer = threading.Timer(_AGAIN_AFTER, os.kill, (os.getpid(), signum))
    timer.daemon = True
    timer.start()


def _stop_on_terminate() -> None:
    """In a task process of doit's, which doit ends with SIGTERM when the command is
    interrupted: the first SIGTERM or SIGINT ends the task as Ctrl-C ends it in doit's own
    process (KeyboardInterrupt: its temporary files removed, its workers ended), and later
    ones do not cut that short. A worker forked meanwhile keeps the usual behaviour."""
    task_process = os.getpid()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if _deferred(signum, frame):
            return
        if os.getpid() != task_process:  # a worker's copy of the handler
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if not stopping:
            stopping = True
            raise KeyboardInterrupt

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)


@contextlib.contextmanager
def _ctrl_c_after_starts() -> Iterator[None]:
    """In doit's own process (a command without task processes, `-n 0`): Ctrl-C raises
    KeyboardInterrupt as Python's own handler does, except inside a fork hook or the start of
    a worker, where it comes again once that is over (as in a task process). Only where
    Python's handler is the one in place, in the main thread."""
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler or \
            threading.current_thread() is not threading.main_thread():
        yield
        return
    own = os.getpid()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        if os.getpid() == own and _deferred(signum, frame):
            return
        raise KeyboardInterrupt  # a worker's copy of it too: Python's own behaviour

    signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def guarded(name: str, log_dir: Path | None,
            step: Callable[[RunLog], object]) -> Callable[[], object]:
    """Run `step` with the run's log, after the task's title (a hidden task has none); the
    project's error becomes one line on stderr and a failed task; anything else is an
    internal error, kept whole in the log file."""

    def action() -> object:
        if not name.startswith("_"):  # the stream doit's reporter writes to (never captured)
            print(f".  {name}", file=sys.__stdout__, flush=True)
        in_doit = multiprocessing.parent_process() is None
        if not in_doit:  # a task process of doit's
            _stop_on_terminate()
        log = RunLog(log_dir, name)
        try:
            with _ctrl_c_after_starts() if in_doit else contextlib.nullcontext():
                result = step(log)
        except DfotaError as exc:
            log.detail(f"error: {exc}")
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return ReportedFailure(str(exc), getattr(exc, "failure", None)
                                   or ("check" if isinstance(exc, CheckFailed) else "input"))
        except Exception:
            log.detail(traceback.format_exc())
            raise
        finally:
            log.close()
        return result if isinstance(result, dict) else None

    action.__name__ = name
    return action


def always_run(name: str, log_dir: Path | None, step: Callable[[RunLog], object]) -> TaskDict:
    """A task that does its work each time it is named (it has no outputs to be up to date)."""
    return {"actions": [guarded(name, log_dir, step)], "uptodate": [False], "verbosity": 2}
