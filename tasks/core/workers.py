"""Worker processes: how they start, and a worker that does one job and says one thing."""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.context import ForkContext, ForkServerContext, SpawnContext
from typing import ParamSpec

# the thread a multiprocessing queue starts to send what is put on it: doit's task processes
# (DOIT_CONFIG's num_process) each have one, which sends their results to doit
_QUEUE_FEEDER = "QueueFeederThread"

_starting: list[int] = []  # the process (its pid) for each worker start under way in it


@contextlib.contextmanager
def starting() -> Iterator[None]:
    """A worker being started and recorded by the caller, which ends the workers it recorded
    when it unwinds: a stop that lands meanwhile (doit's SIGTERM, Ctrl-C in a task process)
    comes again once this is over (dfota.commands.action), so no worker goes unrecorded."""
    _starting.append(os.getpid())
    try:
        yield
    finally:
        _starting.pop()


def starting_now() -> bool:
    """This process is starting a worker (a worker forked meanwhile is not)."""
    return os.getpid() in _starting


def fork_is_safe() -> bool:
    """No other thread runs here but queue feeders, which hold only their own queue's locks
    (a forked child that never uses the queue needs none of them)."""
    current = threading.current_thread()
    return all(t is current or t.name == _QUEUE_FEEDER for t in threading.enumerate())


P = ParamSpec("P")


def quiet_on_ctrl_c(target: Callable[P, None]) -> Callable[P, None]:
    """A worker's `target` that ends without a word on Ctrl-C, which reaches the command's
    whole process group: the parent, which ends its workers as it unwinds, says what happened
    (multiprocessing would print the worker's name and a traceback)."""

    @functools.wraps(target)
    def quiet(*args: P.args, **kwargs: P.kwargs) -> None:
        with contextlib.suppress(KeyboardInterrupt):
            target(*args, **kwargs)

    return quiet


def worker_context(preload: Sequence[str] = ()) -> ForkContext | ForkServerContext | SpawnContext:
    """How worker processes start: fork when it is safe (`fork_is_safe`): cheap, nothing to
    pickle or re-import; else a fork server (importing `preload` once), which needs the work
    importable by name."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and fork_is_safe():
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(list(preload))
        return ctx
    return multiprocessing.get_context("spawn")


class OneShot:
    """`target(*args, report)` in a worker process that starts at once; the worker sends one
    object through `report`. It is not a daemon: a process that never waits for it still
    lets it finish at exit."""

    def __init__(self, target: Callable[..., None], args: tuple[object, ...], name: str) -> None:
        context = worker_context()
        self._receive, send = context.Pipe(duplex=False)
        self._process = context.Process(target=target, name=name, args=(*args, send))
        self._process.start()
        send.close()

    def wait(self) -> tuple[object, int | None]:
        """What the worker sent (None if it ended without a word), and its exit code."""
        try:
            said = self._receive.recv()
        except EOFError:
            said = None
        finally:
            self._receive.close()
            self._process.join()
        return said, self._process.exitcode
