"""doit task creators: names, parameters, dependencies. The work is done elsewhere in `tasks`.

The modules that do the work are imported by the action that needs them, when it runs: a run
with every task up to date imports none of them (half a second of a doit start).
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from doit import get_initial_workdir
from doit.cmd_base import DodoTaskLoader
from doit.dependency import FileChangedChecker, SqliteDB
from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter
from doit.tools import config_changed

from dfota.build.archive import archive_of
from dfota.commands.configure import (
    TASK_PARAMS,
    Configuration,
    check_versions,
    configure,
    params_of,
    runs,
)
from dfota.core import atomic
from dfota.core.errors import (
    EXIT_BUSY,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    CheckFailed,
    DfotaError,
    UsageError,
)
from dfota.core.runlog import RunLog
from dfota.core.volumes import Volumes
from dfota.settings import (
    PROJECT_DIR,
    SAMPLE_DIR,
    TEMPLATES,
    DeltaSettings,
    PackageInputs,
    TargetfilesSettings,
    VerifySettings,
    Workspace,
    key_of,
    resolve_path,
    tool_digest,
)
from dfota.state.lock import WorkspaceBusy, WorkspaceLock
from dfota.state.lock import take as take_lock
from dfota.state.store import State, file_stamp
from dfota.state.workspace import (
    WorkspaceRecord,
    read_record,
    record_package,
    record_target,
    record_versions,
)

TaskDict = dict[str, Any]


TOOL = tool_digest()  # a change to the code makes every output out of date
PARALLEL = 2  # task processes for a command that runs delta (see DfotaLoader)


class ReportedFailure(TaskFailed):
    """A failure whose one-line message was already printed; `kind` says what failed for
    the exit code (dfota.cli): "input" (the user can fix an input), "check" (a product of the
    tool failed a check) or "exit:N" (an upgrade's). It reaches doit's process from a task
    process pickled, with its kind."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


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
            os._exit(EXIT_INTERRUPTED)  # the workers ended with their pools; the lock with us
        if not self.ran and not self.failures:
            self.write(self.up_to_date_line + "\n")
        self.failures = [f for f in self.failures
                         if not isinstance(f["exception"], ReportedFailure)]
        super().complete_run()


UNWIND_SECONDS = 10.0  # how long an interrupted command waits for its task processes


def _wait_for_task_processes() -> None:
    """After Ctrl-C doit has told its task processes to stop (SIGTERM): each unwinds its task
    (`_stop_on_terminate`); wait for them, killing one that takes too long."""
    deadline = time.monotonic() + UNWIND_SECONDS
    try:
        for child in multiprocessing.active_children():
            child.join(max(deadline - time.monotonic(), 0.0))
            if child.is_alive():
                child.kill()
    except KeyboardInterrupt:
        pass  # Ctrl-C again: leave now


def _stop_on_terminate() -> None:
    """In a task process of doit's, which doit ends with SIGTERM when the command is
    interrupted: the first SIGTERM or SIGINT ends the task as Ctrl-C ends it in doit's own
    process (KeyboardInterrupt: its temporary files removed, its workers ended), and later
    ones do not cut that short. A worker forked meanwhile keeps the usual behaviour."""
    task_process = os.getpid()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
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


def guarded(name: str, log_dir: Path | None,
            step: Callable[[RunLog], object]) -> Callable[[], object]:
    """Run `step` with the run's log, after the task's title (a hidden task has none); the
    project's error becomes one line on stderr and a failed task; anything else is an
    internal error, kept whole in the log file."""

    def action() -> object:
        if not name.startswith("_"):  # the stream doit's reporter writes to (never captured)
            print(f".  {name}", file=sys.__stdout__, flush=True)
        if multiprocessing.parent_process() is not None:  # a task process of doit's
            _stop_on_terminate()
        log = RunLog(log_dir, name)
        try:
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


def task_sample() -> TaskDict:
    """generate the sample SDK (sample_sdk/): a base firmware package and the next SDK build"""
    return {
        "actions": [guarded("sample", None, lambda log: _sample())],
        "uptodate": [_sample_is_current],
        "verbosity": 1,
    }


def _sample() -> None:
    from dfota.tools.sample import generate_sample

    generate_sample(SAMPLE_DIR)


def _sample_is_current() -> bool:
    from dfota.tools.sample import sample_is_current

    return sample_is_current(SAMPLE_DIR)




def task_creators(conf: Configuration, single: bool = False) -> dict[str, Callable[..., Any]]:  # noqa: C901
    """The task creators of one command, each wired to its settings from `conf`; doit's
    own parsing of their options (`params_of`) only serves `doit help` and the command line's
    shape: the values come from `conf`. `single`: doit runs the named tasks without their
    dependencies (`doit -s`)."""
    ws = conf.workspace

    def task_targetfiles(**_: object) -> Iterator[TaskDict]:
        """assemble out/targetfiles.zip from the SDK output and the source version; archive both"""
        settings = conf.targetfiles
        yield {
            "basename": "_targetfiles_inputs",
            "doc": "record what the target is made from (SDK images, rootfs tree, source) and "
                   "the rootfs scan it was made from",
            "actions": [guarded("_targetfiles_inputs", ws.log_dir,
                                lambda log: _targetfiles_inputs(settings, log))],
            "task_dep": ["sample"] if settings.sdk_is_sample else [],
            "targets": [ws.inputs_manifest],
            "uptodate": [False],
            "verbosity": 2,  # hashing the rootfs shows its progress
        }
        yield {
            "basename": "targetfiles",
            "doc": task_targetfiles.__doc__,
            # the inputs step ran first (always out of date), unless doit skips it (-s)
            "actions": [guarded("targetfiles", ws.log_dir,
                                lambda log: _targetfiles(conf, log, inputs_recorded=not single))],
            "file_dep": [ws.inputs_manifest],
            "targets": [ws.target_zip],
            "uptodate": [config_changed({"tool": TOOL, **key_of(settings)}),
                         lambda task, values: _still_archived(ws, values)],
            "clean": [lambda: clean_workspace(ws)],
            "verbosity": 2,
        }

    def task_delta(**_: object) -> Iterator[TaskDict]:
        """make the DFOTA update.zip from the base version to this workspace's target"""
        settings = conf.delta
        lists = sorted(settings.config_dir.glob("quectel_*_filelist.txt")) \
            if settings.config_dir else []
        yield {
            "basename": "_delta_ahead",
            "doc": "make what delta asks for from the inputs manifest (the base's sha1s, the "
                   "kernel's patch), beside targetfiles",
            "actions": [guarded("_delta_ahead", ws.log_dir,
                                lambda log: _delta_ahead(settings, conf.targetfiles, log))],
            "file_dep": [ws.inputs_manifest],
            "targets": [ws.delta_ahead],
            "uptodate": [config_changed({"tool": TOOL, "base": settings.base,
                                         "mode": settings.mode,
                                         "diff_timeout": settings.diff_timeout})],
            "verbosity": 2,
        }
        yield {
            "basename": "delta",
            "doc": task_delta.__doc__,
            "actions": [guarded("delta", ws.log_dir, lambda log: _delta(conf, log))],
            "task_dep": ["targetfiles", "_delta_ahead"],
            "file_dep": [ws.target_zip, *lists, TEMPLATES / "updater-script.j2"],
            "targets": [ws.update_summary],
            "uptodate": [WithTargetVolumes({"tool": TOOL, **key_of(settings)}, ws),
                         lambda task, values: _no_diff_timeout(ws)],
            "clean": [lambda: clean_workspace(ws)],
            "verbosity": 2,
        }

    def task_verify(**_: object) -> TaskDict:
        """prove the package on the host (apply, power loss at every step), then publish it
        as out/update.zip; reject it on failure"""
        if conf.verify.package is not None:  # a package of the user's: proven every time
            return {"actions": [guarded("verify", ws.log_dir,
                                        lambda log: _verify_named(conf.verify, log))],
                    "uptodate": [False], "verbosity": 2}
        return {
            "actions": [guarded("verify", ws.log_dir, lambda log: _verify(conf.verify, log))],
            "task_dep": ["delta"],
            "file_dep": [ws.update_summary, ws.target_zip],
            "targets": [ws.verify_stamp],
            # what is published must be what was proven: a changed out/update.zip is proven
            # again
            "uptodate": [config_changed({"tool": TOOL, **key_of(conf.verify)}),
                         lambda task, values: _published_is_proven(ws)],
            "clean": [lambda: clean_workspace(ws)],
            "verbosity": 2,
        }

    def task_import_base(**_: object) -> TaskDict:
        """check a release firmware package against its images and archive it as a base version"""
        return {
            "actions": [guarded("import_base", ws.log_dir,
                                lambda log: _import_base(ws, conf.import_options, log))],
            "uptodate": [False],
            "verbosity": 2,
        }

    def task_prune(**_: object) -> TaskDict:
        """remove old archived versions: keep the newest --keep N (and what they need)"""
        return {
            "actions": [guarded("prune", ws.log_dir,
                                lambda log: _prune(ws, conf.prune_options, log))],
            "uptodate": [False],
            "verbosity": 2,
        }

    def task_bench(**_: object) -> TaskDict:
        """measure the chain on a production-size SDK pair against the alternatives"""
        return {
            "actions": [guarded("bench", ws.log_dir,
                                lambda log: _bench(ws, conf.bench_options, log))],
            "uptodate": [False],
            "verbosity": 2,
        }

    def task_versions(**_: object) -> TaskDict:
        """list the archived versions, oldest first, with the source each was built on"""
        return {
            "actions": [guarded("versions", None, lambda log: _list_versions(ws, log))],
            "uptodate": [False],
            "verbosity": 2,
        }

    def task_twin(**_: object) -> TaskDict:
        """run a simulated module (flash under --root) that adb and doit upgrade reach"""
        return {
            "actions": [guarded("twin", ws.log_dir, lambda log: _twin(
                ws, conf.device_options["twin"], log))],
            "uptodate": [False],
            "verbosity": 2,
        }

    def task_upgrade(**_: object) -> TaskDict:
        """upgrade modules over adb and their AT port with proven packages"""
        return {
            "actions": [guarded("upgrade", ws.log_dir, lambda log: _upgrade(
                ws, conf.device_options["upgrade"], log))],
            "uptodate": [False],
            "verbosity": 2,
        }

    def task_serve(**_: object) -> TaskDict:
        """serve the proven packages over HTTP(S) for AT+QFOTADL downloads"""
        return {
            "actions": [guarded("serve", ws.log_dir, lambda log: _serve(
                ws, conf.device_options["serve"], log))],
            "uptodate": [False],
            "verbosity": 2,
        }

    creators: dict[str, Callable[..., Any]] = {
        "task_targetfiles": task_targetfiles, "task_delta": task_delta,
        "task_verify": task_verify, "task_import_base": task_import_base,
        "task_versions": task_versions, "task_sample": task_sample, "task_bench": task_bench,
        "task_prune": task_prune, "task_twin": task_twin, "task_upgrade": task_upgrade,
        "task_serve": task_serve}
    for name, creator in creators.items():
        task = name.removeprefix("task_")
        if task in TASK_PARAMS:
            # doit reads a task's parameters from this attribute of its creator
            creator._task_creator_params = params_of(task)  # type: ignore[attr-defined]
    return creators


def _targetfiles_inputs(settings: TargetfilesSettings, log: RunLog) -> None:
    from dfota.build.assemble import write_inputs_manifest

    known = read_record(settings.workspace.record).versions
    with settings.workspace.open_state() as state:
        write_inputs_manifest(settings, known, state, log)


def _targetfiles(conf: Configuration, log: RunLog, inputs_recorded: bool) -> dict[str, str]:
    from dfota.build.assemble import build_targetfiles, describe

    settings = conf.targetfiles
    record = settings.workspace.record
    with settings.workspace.open_state() as state:
        result = build_targetfiles(settings, log, read_record(record).versions, state,
                                   inputs_recorded=inputs_recorded)
    record_target(record, conf.recorded_options["targetfiles"],
                  {"key": result.target_key, "sha256": result.sha256,
                   "source": result.source_key, "warnings": list(result.warnings),
                   "volumes": result.volumes.to_json() if result.volumes else None},
                  [result.source_key, result.target_key])
    log.say(describe(result))
    return {"target_key": result.target_key, "sha256": result.sha256}


def _still_archived(ws: Workspace, values: dict[str, Any]) -> bool:
    """The last build's target is still in the archive (else rebuild and re-archive it)."""
    key = values.get("target_key")
    if not key:
        return False
    try:
        version = archive_of(ws).get(key)
    except DfotaError:
        return False
    return version is not None and version.sha256 == values.get("sha256")


def target_volumes(record: WorkspaceRecord) -> Volumes | None:
    """The sizes of /system and /cache the target's SDK image gave (None: it had none)."""
    volumes = record.target.get("volumes")
    return Volumes.from_json(volumes) if isinstance(volumes, dict) else None


class WithTargetVolumes(config_changed):
    """doit's `config_changed` over a task's settings and the sizes the target's SDK image
    gave, read when doit asks: after `targetfiles` ran, when the command runs it first."""

    def __init__(self, settings: dict[str, object], ws: Workspace) -> None:
        super().__init__(settings)
        self.settings, self.ws = settings, ws

    def _calc_digest(self) -> str:
        image = target_volumes(read_record(self.ws.record))
        self.config = {**self.settings, "image_volumes": image.to_json() if image else None}
        return str(super()._calc_digest())


def _no_diff_timeout(ws: Workspace) -> bool:
    """A package in which a diff ran out of time is never up to date."""
    return not atomic.read_json_object(ws.update_summary).get("diff_timeouts")


def _delta_ahead(delta: DeltaSettings, targetfiles: TargetfilesSettings, log: RunLog) -> None:
    from dfota.package.ahead import make_ahead

    log.detail(make_ahead(delta, targetfiles))


def _delta(conf: Configuration, log: RunLog) -> None:
    from dfota.package.delta import build_delta, build_for_bases
    from dfota.package.delta import describe as delta_describe

    ws = conf.workspace
    record = read_record(ws.record)
    # a size the user did not set is the one the target's SDK image gave, if any
    settings = dataclasses.replace(conf.delta,
                                   volumes=conf.delta.volumes.over(target_volumes(record)))
    with ws.open_state() as state:
        check_target_is_recorded(ws, record, state)
        sdk = record.tasks.get("targetfiles", {}).get("sdk")
        result = build_delta(settings, log, record.source_key, record.build_warnings,
                             Path(str(sdk)) if sdk else None, state)
        for warning in result.warnings:
            log.say(f"warning: {warning}")
        log.say(delta_describe(result))
        if settings.bases:
            outcomes = build_for_bases(settings, log, record.versions, _verify_one, state)
            log.say(f"delta: {len(outcomes)} packages in {ws.deltas_dir} (index.json)")
        else:
            shutil.rmtree(ws.deltas_dir, ignore_errors=True)  # packages of an earlier run
    record_package(ws.record, conf.recorded_options["delta"], result.inputs.to_json())


def check_target_is_recorded(ws: Workspace, record: WorkspaceRecord, state: State) -> None:
    """out/targetfiles.zip is the target this workspace's last `doit targetfiles` built."""
    if not record.target_key:
        raise DfotaError("this workspace has no target yet: run `doit targetfiles` first",
                         ws.record)
    # targetfiles noted its copy's sha256 by stat: nothing is hashed while the file is as made
    if ws.target_zip.is_file() and \
            archive_of(ws, state).sha256_of(ws.target_zip) != record.target.get("sha256"):
        raise DfotaError(f"is not the target this workspace built ({record.target_key}): run "
                         "`doit targetfiles` again", ws.target_zip)


def _verify_one(ws: Workspace, log: RunLog, inputs: PackageInputs, state: State) -> None:
    from dfota.proof.verify import verify_delta

    verify_delta(VerifySettings(ws), log, inputs, state)


def package_inputs(ws: Workspace) -> PackageInputs:
    """What the workspace's package was made from (its record says; `out/` does not)."""
    try:
        return PackageInputs.from_json(read_record(ws.record).package)
    except ValueError as exc:
        raise DfotaError("this workspace's record does not say what its package was made "
                         "from: run `doit delta` again", ws.record) from exc


def _verify(settings: VerifySettings, log: RunLog) -> None:
    from dfota.proof.verify import verify_delta, verify_needed

    ws = settings.workspace
    with ws.open_state() as state:
        if not verify_needed(ws, state.digests):
            log.say("verify: nothing to verify (no package, or this package was verified)")
        else:
            report = verify_delta(settings, log, package_inputs(ws), state)
            for check in report.checks:
                log.say(f"verify: ok  {check.name}: {check.detail}")
            log.say(f"verify: {ws.update_zip} passed {len(report.checks)} checks in "
                    f"{report.seconds:.1f} s and is published; report: {ws.update_report}")
    atomic.write_text(ws.verify_stamp, "verified\n")


def _published_is_proven(ws: Workspace) -> bool:
    from dfota.proof.verify import published_is_proven

    with ws.open_state() as state:
        return published_is_proven(ws, digests=state.digests)


def _verify_named(settings: VerifySettings, log: RunLog) -> None:
    from dfota.proof.verify import verify_named

    with settings.workspace.open_state() as state:
        report, where = verify_named(settings, log, state)
    for check in report.checks:
        log.say(f"verify: ok  {check.name}: {check.detail}")
    log.say(f"verify: {settings.package} is proven ({len(report.checks)} checks in "
            f"{report.seconds:.1f} s); report: {where}")


# below, `options` are a command's settings, each of the type its parameter declares
def _import_base(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.build.import_base import import_base

    firmware, template = str(options["firmware"]), str(options["template"])
    if not firmware:
        raise DfotaError("name the firmware package: doit import_base --firmware DIR")
    with ws.open_state() as state:
        key = import_base(resolve_path(firmware), archive_of(ws, state),
                          template=resolve_path(template) if template else None,
                          from_images=bool(options["from_images"]), say=log.say,
                          work_dir=ws.state_dir)
    record_versions(ws.record, [key])


def _bench(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.tools.bench import run_benchmark

    folder = resolve_path(str(options["folder"])) if options["folder"] else ws.state_dir / "bench"
    report = PROJECT_DIR / "BENCHMARKS.md" if options["update_benchmarks"] else None
    try:
        run_benchmark(folder, 1.0, log.say, report)
    finally:
        if not options["keep_data"]:
            shutil.rmtree(folder, ignore_errors=True)
    if report is None:
        log.say("bench: BENCHMARKS.md left as it is (--update-benchmarks rewrites it)")


def _twin(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.upgrade.twin import parse_faults, run_twin

    faults = parse_faults([str(f) for f in options["fault"]])
    if not options["root"]:
        raise DfotaError("name the folder of the module's flash: doit twin --root DIR")
    zip_path, key = None, ""
    if options["version"]:
        version = archive_of(ws).find(str(options["version"]))
        zip_path, key = version.zip_path, version.key
    run_twin(resolve_path(str(options["root"])), zip_path, key, str(options["adb"]), faults,
             at_pty=bool(options["at_pty"]),
             cafile=str(resolve_path(str(options["cafile"]))) if options["cafile"] else "",
             say=log.say)


def _upgrade(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.upgrade.upgrade import UpgradeOptions, run_upgrade

    package = str(options["package"])
    run_upgrade(ws, UpgradeOptions(
        devices=tuple(str(d) for d in options["device"]),
        package=resolve_path(package) if package else None,
        transfer=str(options["transfer"]), at=str(options["at"]),
        serve_url=str(options["serve_url"]), unverified=bool(options["unverified"]),
        kill_port_users=bool(options["kill_port_users"]),
        push_timeout=float(options["push_timeout"]),
        update_timeout=float(options["update_timeout"])), log.say)


def _serve(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.upgrade.serve import serve

    cert, key = str(options["cert"]), str(options["key"])
    serve(ws, str(options["bind"]), int(options["port"]),
          str(resolve_path(cert)) if cert else "", str(resolve_path(key)) if key else "",
          log.say)


def clean_workspace(ws: Workspace) -> None:
    """`doit clean`: the workspace's outputs and state go; the archive never does."""
    for folder in (ws.out_dir, ws.state_dir):
        if ws.archive_dir.resolve().is_relative_to(folder.resolve()):
            raise DfotaError(f"holds the archive ({ws.archive_dir}): not removed", folder)
    for folder in (ws.out_dir, ws.state_dir):
        if folder.exists():
            shutil.rmtree(folder)
            print(f"clean: removed {folder}", flush=True)


def _prune(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.build.prune import kept_by_workspace, prune

    keep = int(options["keep"])
    if keep < 1:
        raise DfotaError("name how many versions to keep: doit prune --keep N (N >= 1)")
    archive = archive_of(ws)
    removed = prune(archive, keep, kept_by_workspace(ws), bool(options["force"]), log.say)
    log.say(f"prune: {len(removed)} version(s) removed from {ws.archive_dir}")


def _list_versions(ws: Workspace, log: RunLog) -> None:
    archive = archive_of(ws)
    versions = archive.versions()
    known = set(read_record(ws.record).versions)
    if not versions:
        log.say(f"{ws.archive_dir}: no archived version yet")
    for v in versions:
        source = v.manifest.get("source") or "-"
        mark = "*" if v.key in known else " "
        log.say(f"{mark} {v.key}  {v.manifest.get('origin', '?'):<11}  built on {source}  "
                f"sha256 {v.sha256[:12]}  {v.manifest.get('size', '?')} bytes")
    if known:
        log.say("(* built or imported by this workspace)")


class DfotaLoader(DodoTaskLoader):
    """doit's loader of dodo.py, with this project's tasks made from the command's one
    configuration (`dfota.commands.configure`), built and checked before any task runs. Named in
    pyproject.toml (`[tool.doit] loader`); `dfota` uses it wherever it runs.

    A command that runs `delta` runs its tasks in DOIT_CONFIG's `num_process` task processes
    (`_delta_ahead` beside `targetfiles`); any other runs them in doit's own process, unless
    `-n` says otherwise. The kind of each task's failure is added to `failure_kinds`."""

    def __init__(self) -> None:
        super().__init__()
        self.failure_kinds: list[str] = []
        self.reporter = Reporter.for_command(self.failure_kinds)
        self.options: Any = {}

    def setup(self, opt_values: Any) -> None:
        super().setup(opt_values)
        self.options = opt_values  # doit reads the number of task processes from them later

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
        project_dir = Path(get_initial_workdir() or Path.cwd())
        try:
            conf = configure(project_dir, pos_args, selected)
            if starting:
                check_versions(conf, selected)
        except DfotaError as exc:
            usage = isinstance(exc, UsageError)
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_USAGE if usage else EXIT_INPUT) from None
        if starting:
            for warning in conf.warnings:
                print(f"warning: {warning}", file=sys.stderr, flush=True)
        if _writes(cmd, selected):
            self.lock = _lock(conf, cmd, pos_args or selected)
        single = bool(self.options.get("single"))
        if not (starting and runs(conf, selected, "delta")) or single:
            with contextlib.suppress(AttributeError):  # -n given: as the user says
                self.options.update_defaults({"num_process": 0})
        self.reporter.parallel = bool(self.options.get("num_process")) and \
            self.options.get("par_type", "process") == "process"
        self.reporter.up_to_date_line = up_to_date_line(conf.workspace)
        self.reporter.published = conf.workspace.update_zip
        self.namespace = {**self.namespace, **task_creators(conf, single)}
        return super().load_tasks(cmd, pos_args)


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
