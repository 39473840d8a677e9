"""What a run tells people: lines on stdout, a progress bar on a terminal, a log file per run.

On a terminal a long step draws one bar that it redraws in place; elsewhere (CI, cron) it
prints a line when it starts, one with the count done at least every 10 s while it runs (so a
job's watchdog sees it alive), and one when it ends. Every line, and the detail lines that
stdout does not get (one per diff, say), also go to the run's log file.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, TextIO

_BAR = 30
PLAIN_EVERY = 10.0  # seconds at most between two progress lines off a terminal


class Bar(Protocol):
    """One long step's progress: `advance` as work gets done, `finish` at the end."""

    def advance(self, count: int = 1) -> None: ...

    def finish(self) -> None: ...


class Meter(Protocol):
    """What a long step reports its progress to (a RunLog, or SILENT in library use)."""

    def progress(self, label: str, total: int) -> Bar: ...


class _Silent:
    def advance(self, count: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass

    def progress(self, label: str, total: int) -> Bar:
        return self


SILENT: Meter = _Silent()


class Progress:
    def __init__(self, log: RunLog, label: str, total: int) -> None:
        self.log, self.label, self.total = log, label, max(total, 0)
        self.done = 0
        self.started = log.clock()
        self._drawn = 0.0
        self._said = self.started
        if not log.interactive:
            log.say(f"{label}: {self.total} to do")

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = self.log.clock()
        if self.log.interactive:
            if now - self._drawn > 0.1:
                self._draw()
        elif now - self._said >= PLAIN_EVERY:
            self._said = now
            self.log.say(f"{self.label}: {self.done}/{self.total} done in "
                         f"{now - self.started:.0f} s")

    def _draw(self) -> None:
        self._drawn = self.log.clock()
        share = self.done / self.total if self.total else 1.0
        filled = int(share * _BAR)
        self.log.stream.write(f"\r{self.label} [{'#' * filled}{' ' * (_BAR - filled)}] "
                              f"{self.done}/{self.total}")
        self.log.stream.flush()

    def finish(self) -> None:
        seconds = self.log.clock() - self.started
        if self.log.interactive:
            self._draw()
            self.log.stream.write("\n")
        self.log.say(f"{self.label}: {self.done} done in {seconds:.1f} s")


class RunLog:
    def __init__(self, log_dir: Path | None, task: str, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream or sys.stdout
        self.clock = clock  # seconds, for progress lines and their timings
        self.interactive = self.stream.isatty()
        self.path: Path | None = None
        self._file: TextIO | None = None
        if log_dir is not None:
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
            try:
                log_dir.mkdir(parents=True, exist_ok=True)
                self.path = log_dir / f"{stamp}-{task}.log"
                self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            except OSError:
                self.path = self._file = None  # a log that cannot be written never stops a run

    def say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
        self.detail(line)

    def detail(self, line: str) -> None:
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    def progress(self, label: str, total: int) -> Progress:
        return Progress(self, label, total)

    def close(self) -> None:
        if self._file is not None:
            empty = self._file.tell() == 0
            self._file.close()
            self._file = None
            if empty and self.path is not None:  # a run with nothing to say leaves no file
                self.path.unlink(missing_ok=True)
                self.path = None
