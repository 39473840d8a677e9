"""doit's side of a command: the loader (the command's one configuration, read and checked
before any task runs, with the task creators wired to it), doit's configuration as the
package gives it, the reporter, the backend of doit's record and its check of file
dependencies.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import doit.loader
from doit import get_initial_workdir, task_params
from doit.cmd_base import DodoTaskLoader
from doit.dependency import FileChangedChecker, SqliteDB
from doit.exceptions import InvalidCommand
from doit.reporter import ConsoleReporter

from dfota.commands import chain, housekeeping, modules, tools
from dfota.commands.action import ReportedFailure
from dfota.commands.configure import Configuration, check_versions, configure, runs
from dfota.commands.params import TASK_PARAMS, params_of
from dfota.core import atomic
from dfota.core.errors import (
    EXIT_BUSY,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    DfotaError,
    UsageError,
)
from dfota.formats.ziplimits import use_zip_limits
from dfota.settings import PROJECT_DIR, Workspace
from dfota.state.lock import WorkspaceBusy, WorkspaceLock
from dfota.state.lock import take as take_lock
from dfota.state.store import file_stamp

PARALLEL = 2  # task processes for a command that runs delta (see DfotaLoader)
DEFAULT_TASKS = ("targetfiles", "delta", "verify")  # what `doit` alone runs
# the backend of doit's record as a doit plugin: pyproject.toml names it for `doit`, and
# `dfota` gives it to doit wherever it runs
BACKEND_PLUGIN = {"sqlite3-wal": "dfota.commands.loader:WalSqliteDB"}


class WalSqliteDB(SqliteDB):
    """doit's sqlite3 backend with a write-ahead log whose commits are not synced to disk: a
    power cut may lose doit's record of the last run (its tasks then run again, and each
    finds its work done), never corrupt it. The synced commit cost every `doit` 0.2 s, half
    of a run with nothing to do. Registered in pyproject.toml (`[tool.doit.plugins.backend]`)."""

    desc = "sqlite3 with a write-ahead log"

    def _sqlite3(self, name: str) -> Any:
        conn = super()._sqlite3(name)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn


def db_backend() -> str:
    """The backend for DOIT_CONFIG: doit finds the plugin in the pyproject.toml of the folder
    it runs in, so elsewhere (`doit -f .../dodo.py`) the stock sqlite3 serves."""
    return "sqlite3-wal" if Path.cwd().resolve() == PROJECT_DIR else "sqlite3"


class StatChecker(FileChangedChecker):
    """A file dependency is unchanged while its size, modification time (ns) and inode are.

    Every file this tool writes is written aside and renamed into place (a new inode and
    time); doit's default check hashes each changed dependency, before and after the task:
    two reads of a 200 MB targetfiles.zip for `doit delta` and two more for `doit verify`.
    """

    def check_modified(self, file_path: str, file_stat: os.stat_result,
                       state: object) -> bool:
        return state != file_stamp(file_stat)

    def get_state(self, dep: str, current_state: object) -> list[int] | None:
        state = file_stamp(os.stat(dep))
        return None if state == current_state else state


class Reporter(ConsoleReporter):
    """doit's console reporter, without repeating a message the task already printed; a run
    in which every task was up to date says so in one line. A task's title is printed by
    the task's action (`guarded`), in the process that runs it, before its own lines.

    doit makes it from the class the loader gives for the command (`for_command`), which
    holds the command's settings and where the kinds of failure go."""

    up_to_date_line = "up to date: nothing changed"
    published: Path | None = None  # where verify publishes
    parallel = False  # the tasks run in doit's task processes (DOIT_CONFIG's num_process)
    failure_kinds: list[str] | None = None  # where the kinds of failure go
    lock: WorkspaceLock | None = None  # the workspace's, when the command took it
    failures: list[dict[str, Any]]  # doit's: {"task": ..., "exception": ...}

    @classmethod
    def for_command(cls, failure_kinds: list[str]) -> type[Reporter]:
        """A class of its own for one command, whose reporter adds the kind of each failure
        to `failure_kinds`."""
        return type(cls.__name__, (cls,), {"failure_kinds": failure_kinds})

    def __init__(self, outstream: Any, options: Any) -> None:
        super().__init__(outstream, options)
        self.ran = False
        self.succeeded: list[str] = []

    def add_success(self, task: Any) -> None:
        self.succeeded.append(task.name)
        super().add_success(task)

    def execute_task(self, task: Any) -> None:
        self.ran = self.ran or not task.name.startswith("_")

    def skip_uptodate(self, task: Any) -> None:
        pass  # one line at the end instead

    def add_failure(self, task: Any, fail: Any) -> None:
        if isinstance(fail, ReportedFailure):
            if self.failure_kinds is not None:
                self.failure_kinds.append(fail.kind)
            self.failures.append({"task": task, "exception": fail})
            return
        super().add_failure(task, fail)

    def complete_run(self) -> None:
        if sys.exc_info()[0] is KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
            if self.parallel:
                _wait_for_task_processes()
            done = "verify" in self.succeeded and self.published is not None
            print(f"interrupted after publishing {self.published}" if done
                  else "interrupted: nothing published", file=sys.stderr, flush=True)
            if self.lock is not None:  # let go: the next run has no leftovers to warn of
                self.lock.release()
            os._exit(EXIT_INTERRUPTED)  # the workers ended with their pools
        if not self.ran and not self.failures:
            self.write(self.up_to_date_line + "\n")
        self.failures = [f for f in self.failures
                         if not isinstance(f["exception"], ReportedFailure)]
        super().complete_run()


UNWIND_SECONDS = 10.0  # how long an interrupted command waits for its task processes


def _wait_for_task_processes() -> None:
    """After Ctrl-C doit has told its task processes to stop (SIGTERM): each unwinds its task
    (`dfota.commands.action`); wait for them, killing one that takes too long."""
    deadline = time.monotonic() + UNWIND_SECONDS
    try:
        for child in multiprocessing.active_children():
            child.join(max(deadline - time.monotonic(), 0.0))
            if child.is_alive():
                child.kill()
    except KeyboardInterrupt:
        pass  # Ctrl-C again: leave now


def doit_config(backend: str) -> dict[str, Any]:
    """doit's configuration of every command (DOIT_CONFIG): the checkout's dodo.py gives it,
    and the loader gives it where there is no dodo.py (an installed `dfota`)."""
    return {
        "default_tasks": list(DEFAULT_TASKS),
        # task processes: what delta asks for is made beside targetfiles (`_delta_ahead`); the
        # loader runs a command that does not run delta in doit's own process
        "num_process": PARALLEL,
        "backend": backend,
        "dep_file": ".doit.db",
        "action_string_formatting": "new",
        "reporter": Reporter,
        "check_file_uptodate": StatChecker,
    }


# each task's creator, in the order doit makes the tasks
CREATORS: dict[str, Callable[[Configuration], Any]] = {
    "sample": tools.sample, "targetfiles": chain.targetfiles, "delta": chain.delta,
    "verify": chain.verify, "import_base": housekeeping.import_base,
    "prune": housekeeping.prune, "bench": tools.bench, "versions": housekeeping.versions,
    "twin": modules.twin, "upgrade": modules.upgrade, "serve": modules.serve}


def task_creators(conf: Configuration) -> dict[str, Callable[..., Any]]:
    """The task creators of one command, each wired to its settings from `conf`; doit's
    own parsing of their options (`params_of`) only serves `doit help` and the command line's
    shape: the values come from `conf`."""
    return {f"task_{task}": _wired(task, creator, conf) for task, creator in CREATORS.items()}


def _wired(task: str, creator: Callable[[Configuration], Any],
           conf: Configuration) -> Callable[..., Any]:
    def task_creator(**_: object) -> Any:
        return creator(conf)

    task_creator.__doc__ = creator.__doc__
    # doit reads a task's parameters from its creator
    return task_params(params_of(task))(task_creator) if task in TASK_PARAMS else task_creator


class DfotaLoader(DodoTaskLoader):
    """doit's loader, with this project's tasks made from the command's one configuration
    (`dfota.commands.configure`), built and checked before any task runs. Named in
    pyproject.toml (`[tool.doit] loader`); `dfota` uses it wherever it runs. doit's own
    configuration (`doit_config`) comes from the dodo.py of the folder (the checkout's), else
    from the package: an installed `dfota` needs neither dodo.py nor pyproject.toml.

    A command that runs `delta` runs its tasks in DOIT_CONFIG's `num_process` task processes
    (`_delta_ahead` beside `targetfiles`); any other runs them in doit's own process, unless
    `-n` says otherwise. The kind of each task's failure is added to `failure_kinds`."""

    def __init__(self) -> None:
        super().__init__()
        self.failure_kinds: list[str] = []
        self.reporter = Reporter.for_command(self.failure_kinds)
        self.options: Any = {}

    def setup(self, opt_values: Any) -> None:
        if _dodo_file_named(opt_values):
            super().setup(opt_values)
        else:  # no dodo.py here: the package's own configuration
            self.namespace = {"DOIT_CONFIG": doit_config(self._backend())}
            _start_in(opt_values["cwdPath"])
        self.options = opt_values  # doit reads the number of task processes from them later

    def _backend(self) -> str:
        """WAL when doit knows the plugin (`dfota` gives it; pyproject.toml may name it)."""
        plugins = (self.config or {}).get("BACKEND", {})
        return next(iter(BACKEND_PLUGIN)) if set(BACKEND_PLUGIN) <= set(plugins) else "sqlite3"

    def load_doit_config(self) -> dict[str, Any]:
        config = dict(super().load_doit_config())
        if config.get("reporter") is Reporter:
            config["reporter"] = self.reporter
        return config

    namespace: dict[str, Any]  # doit's: the names tasks are made from

    def load_tasks(self, cmd: Any, pos_args: list[str]) -> list[Any]:
        starting = bool(getattr(cmd, "execute_tasks", False))
        # `doit help delta` names a task it does not run: nothing it needs is checked
        selected = list(getattr(cmd, "sel_tasks", None) or pos_args) if starting else []
        conf = _configuration(pos_args, selected, starting)
        if _writes(cmd, selected):
            self.lock = self.reporter.lock = _lock(conf, cmd, pos_args or selected)
        single = bool(self.options.get("single"))
        if not (starting and runs(conf, selected, "delta")) or single:
            with contextlib.suppress(AttributeError):  # -n given: as the user says
                self.options.update_defaults({"num_process": 0})
        self.reporter.parallel = bool(self.options.get("num_process")) and \
            self.options.get("par_type", "process") == "process"
        self.reporter.up_to_date_line = up_to_date_line(conf.workspace)
        self.reporter.published = conf.workspace.update_zip
        self.namespace = {**self.namespace,
                          **task_creators(dataclasses.replace(conf, single=single))}
        return list(super().load_tasks(cmd, pos_args))


def _dodo_file_named(opt_values: Any) -> bool:
    """doit's way to a dodo.py: one is here (the checkout's), or the command names one (`-f`,
    `-k`); else the loader needs none."""
    named = opt_values["dodoFile"] != "dodo.py" or opt_values["seek_file"]
    return bool(named) or Path("dodo.py").exists()


def _start_in(folder: str | None) -> None:
    """What doit does before it loads a dodo.py: note where the command started, and move to
    `-d DIR`, if given."""
    doit.loader.initial_workdir = os.getcwd()
    if folder:
        if not os.path.isdir(folder):
            raise InvalidCommand(f"Specified 'dir' path must be a directory.\nGot '{folder}'.")
        os.chdir(folder)


def _configuration(args: list[str], selected: list[str], starting: bool) -> Configuration:
    """The command's one configuration, checked, its warnings said; or one line and the exit
    code of bad input or usage."""
    project_dir = Path(get_initial_workdir() or Path.cwd())
    try:
        conf = configure(project_dir, args, selected)
        if starting:
            check_versions(conf, selected)
    except DfotaError as exc:
        usage = isinstance(exc, UsageError)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USAGE if usage else EXIT_INPUT) from None
    if starting:
        for warning in conf.warnings:
            print(f"warning: {warning}", file=sys.stderr, flush=True)
    use_zip_limits(conf.workspace.zip_limits)  # every zip the command reads
    return conf


WRITERS = ("targetfiles", "delta", "verify", "import_base", "prune", "_targetfiles_inputs",
           "_delta_ahead")


def _writes(cmd: Any, selected: Sequence[str]) -> bool:
    """The command writes the workspace (its outputs, state or archive entries)."""
    if getattr(cmd, "name", "") == "clean":
        return True
    return bool(getattr(cmd, "execute_tasks", False)) and any(
        t.split(":", 1)[0] in WRITERS for t in selected)


def _lock(conf: Configuration, cmd: Any, args: Sequence[str]) -> WorkspaceLock:
    """The workspace's lock, or one line and the busy exit code."""
    try:
        lock = take_lock(conf.workspace.state_dir,
                         ["doit", getattr(cmd, "name", "run"), *args], conf.wait)
    except WorkspaceBusy as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BUSY) from None
    except DfotaError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_INPUT) from None
    if lock.stale is not None:
        print(f"warning: {lock.path}: taken over from {lock.stale.line()}, which ended "
              "without letting go", file=sys.stderr, flush=True)
    atexit.register(lock.release)
    return lock


def up_to_date_line(ws: Workspace) -> str:
    summary = atomic.read_json_object(ws.update_summary)
    if summary.get("published") and ws.update_zip.is_file():
        return (f"up to date: nothing changed; {ws.update_zip} ({summary.get('source')} -> "
                f"{summary.get('target')}) stays published")
    return "up to date: nothing changed"
