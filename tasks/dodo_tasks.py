"""doit task creators: names, parameters, dependencies. The work is done elsewhere in `tasks`.

The modules that do the work are imported by the action that needs them, when it runs: a run
with every task up to date imports none of them (half a second of a doit start).
"""

from __future__ import annotations

import hashlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from doit import task_params
from doit.dependency import FileChangedChecker, SqliteDB
from doit.exceptions import TaskFailed
from doit.reporter import ConsoleReporter
from doit.tools import config_changed

from tasks import __version__, atomic
from tasks.archive import Archive
from tasks.config import (
    PROJECT_DIR,
    SAMPLE_DIR,
    TEMPLATES,
    Settings,
    make_settings,
    resolve_path,
)
from tasks.errors import CheckFailed, DfotaError
from tasks.runlog import RunLog
from tasks.tree import file_stamp

if TYPE_CHECKING:  # the work modules are imported by the actions that run them
    from tasks.assemble import ScannedRootfs

TaskDict = dict[str, Any]


def _tool_digest() -> str:
    """The tool's own code and templates: a change to them makes every output out of date."""
    digest = hashlib.sha1(__version__.encode())
    code = [p for p in Path(__file__).parent.glob("*.py") if p.name not in ("bench.py", "cli.py")]
    for path in sorted([*code, *TEMPLATES.glob("*")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


TOOL = _tool_digest()


# what failed in this process: "input" (the user can fix an input) or "check" (a product of
# the tool failed a check); read by tasks.cli to choose the exit code
FAILURES: list[str] = []


class ReportedFailure(TaskFailed):
    """A failure whose one-line message was already printed."""


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
    """doit's console reporter, without repeating a message the task already printed."""

    def add_failure(self, task: Any, fail: Any) -> None:
        if isinstance(fail, ReportedFailure):
            self.failures.append({"task": task, "exception": fail})
            return
        super().add_failure(task, fail)

    def complete_run(self) -> None:
        self.failures = [f for f in self.failures
                         if not isinstance(f["exception"], ReportedFailure)]
        super().complete_run()


def guarded(name: str, log_dir: Path | None,
            step: Callable[[RunLog], object]) -> Callable[[], object]:
    """Run `step` with the run's log; the project's error becomes one line on stderr and a
    failed task; anything else is an internal error, kept whole in the log file."""

    def action() -> object:
        log = RunLog(log_dir, name)
        try:
            result = step(log)
        except DfotaError as exc:
            FAILURES.append("check" if isinstance(exc, CheckFailed) else "input")
            log.detail(f"error: {exc}")
            print(f"error: {exc}", file=sys.stderr, flush=True)
            return ReportedFailure(str(exc))
        except Exception:
            log.detail(traceback.format_exc())
            raise
        finally:
            log.close()
        return result if isinstance(result, dict) else None

    action.__name__ = name
    return action


COMMON_PARAMS: list[dict[str, Any]] = [
    {"name": "out", "long": "out", "type": str, "default": "out",
     "help": "folder for the outputs [default: %(default)s]"},
    {"name": "archive", "long": "archive", "type": str, "default": "archive",
     "help": "folder holding every version's targetfiles.zip [default: %(default)s]"},
    {"name": "state", "long": "state", "type": str, "default": "build",
     "help": "folder for bookkeeping between runs [default: %(default)s]"},
]

TARGETFILES_PARAMS: list[dict[str, Any]] = [
    {"name": "sdk", "long": "sdk", "type": str, "default": "",
     "help": "the ql-ol-extsdk folder of the SDK build [default: the sample SDK]"},
    {"name": "source", "long": "source", "type": str, "default": "",
     "help": "source version: an archived version key (or unique prefix) or a targetfiles.zip "
             "[default: the newest archived version other than the target's]"},
    {"name": "strict", "long": "strict", "type": bool, "default": False,
     "help": "treat warnings (empty directories, special files, image drift) as errors"},
    {"name": "metadata_from_image", "long": "metadata-from-image", "type": bool,
     "default": False,
     "help": "take SYSTEM's modes and owners from target/sdxlemur-sysfs.ubi, not the folder"},
    *COMMON_PARAMS,
]


def task_sample() -> TaskDict:
    """generate the sample SDK (sample_sdk/): a base firmware package and the next SDK build"""
    return {
        "actions": [guarded("sample", None, lambda log: _sample())],
        "uptodate": [_sample_is_current],
        "verbosity": 1,
    }


def _sample() -> None:
    from tasks.sample import generate_sample

    generate_sample(SAMPLE_DIR)


def _sample_is_current() -> bool:
    from tasks.sample import sample_is_current

    return sample_is_current(SAMPLE_DIR)


@task_params(TARGETFILES_PARAMS)
def task_targetfiles(sdk: str, source: str, strict: bool, metadata_from_image: bool, out: str,
                     archive: str, state: str) -> Iterator[TaskDict]:
    """assemble out/targetfiles.zip from the SDK output and the source version; archive both"""
    settings = make_settings(sdk=sdk, source=source, strict=strict, out=out, archive=archive,
                             state=state, metadata_from_image=metadata_from_image)
    scans: list[ScannedRootfs] = []  # the rootfs scan, handed from the first action to the second
    yield {
        "basename": "_targetfiles_inputs",
        "doc": "record what the target is made from (SDK images, rootfs tree, source) by content",
        "actions": [guarded("_targetfiles_inputs", settings.log_dir,
                            lambda log: _targetfiles_inputs(settings, log, scans))],
        "task_dep": ["sample"] if settings.sdk_is_sample else [],
        "targets": [settings.inputs_manifest],
        "uptodate": [False],
        "verbosity": 2,  # hashing the rootfs shows its progress
    }
    yield {
        "basename": "targetfiles",
        "doc": task_targetfiles.__doc__,
        "actions": [guarded("targetfiles", settings.log_dir,
                            lambda log: _targetfiles(settings, log, scans))],
        "file_dep": [settings.inputs_manifest],
        "targets": [settings.target_zip],
        "uptodate": [config_changed({"tool": TOOL, "strict": strict,
                                     "metadata_from_image": metadata_from_image,
                                     "archive": str(settings.archive_dir)}),
                     lambda task, values: _still_archived(settings, values)],
        "verbosity": 2,
    }


def _targetfiles_inputs(settings: Settings, log: RunLog, scans: list[ScannedRootfs]) -> None:
    from tasks.assemble import write_inputs_manifest

    scans[:] = [write_inputs_manifest(settings, log)]


def _targetfiles(settings: Settings, log: RunLog, scans: list[ScannedRootfs]) -> dict[str, str]:
    from tasks.assemble import build_targetfiles, describe

    result = build_targetfiles(settings, log, scans.pop() if scans else None)
    log.say(describe(result))
    return {"target_key": result.target_key, "sha256": result.sha256}


def _still_archived(settings: Settings, values: dict[str, Any]) -> bool:
    """The last build's target is still in the archive (else rebuild and re-archive it)."""
    key = values.get("target_key")
    if not key:
        return False
    try:
        version = Archive(settings.archive_dir, settings.archive_hashes).get(key)
    except DfotaError:
        return False
    return version is not None and version.sha256 == values.get("sha256")


DELTA_PARAMS: list[dict[str, Any]] = [
    {"name": "base", "long": "base", "type": str, "default": "",
     "help": "base version: an archived version key (or unique prefix) or a targetfiles.zip "
             "[default: the version the newest target was built on]"},
    {"name": "mode", "long": "mode", "type": str, "default": "all",
     "help": "what the package updates: all, rootfs, modem, kernel (or the vendor letters "
             "a, l, m, o), alone or combined as l,m [default: %(default)s]"},
    {"name": "config", "long": "config", "type": str, "default": "",
     "help": "folder of the vendor config lists (quectel_*_filelist.txt) "
             "[default: sample_sdk/config]"},
    {"name": "size_budget_mb", "long": "size-budget-mb", "type": float, "default": 70,
     "help": "warn when the package is larger [default: %(default)s]"},
    {"name": "diff_timeout", "long": "diff-timeout", "type": float, "default": 300.0,
     "help": "seconds per diff before the file is shipped whole [default: %(default)s]"},
    {"name": "workers", "long": "workers", "type": int, "default": 0,
     "help": "diff processes [default: one per core]"},
    {"name": "bases", "long": "bases", "type": str, "default": "",
     "help": "also make and verify one package from each of these bases: N (the last N "
             "archived versions) or a comma list of versions, into out/deltas/"},
    *COMMON_PARAMS,
]


@task_params(DELTA_PARAMS)
def task_delta(base: str, mode: str, config: str, size_budget_mb: float, diff_timeout: float,
               workers: int, bases: str, out: str, archive: str, state: str) -> TaskDict:
    """make out/update.zip (DFOTA package) from the base version to the newest target"""
    settings = make_settings(base=base, mode=mode, config=config, size_budget_mb=size_budget_mb,
                             diff_timeout=diff_timeout, workers=workers, bases=bases, out=out,
                             archive=archive, state=state)
    lists = sorted(settings.config_dir.glob("quectel_*_filelist.txt"))
    return {
        "actions": [guarded("delta", settings.log_dir, lambda log: _delta(settings, log))],
        "task_dep": ["targetfiles"],
        "file_dep": [settings.target_zip, *lists, TEMPLATES / "updater-script.j2"],
        "targets": [settings.update_summary],
        "uptodate": [config_changed({"tool": TOOL, "base": base, "mode": mode,
                                     "config": str(settings.config_dir), "bases": bases,
                                     "budget": size_budget_mb})],
        "verbosity": 2,
    }


def _delta(settings: Settings, log: RunLog) -> None:
    from tasks.delta import build_delta, build_for_bases
    from tasks.delta import describe as delta_describe

    result = build_delta(settings, log)
    for warning in result.warnings:
        log.say(f"warning: {warning}")
    log.say(delta_describe(result))
    if settings.bases:
        from tasks.verify import verify_delta

        outcomes = build_for_bases(settings, log, verify_delta)
        log.say(f"delta: {len(outcomes)} verified packages in {settings.out_dir / 'deltas'}")


@task_params(COMMON_PARAMS)
def task_verify(out: str, archive: str, state: str) -> TaskDict:
    """prove out/update.zip on the host (apply, power loss at every step); reject it on failure"""
    settings = make_settings(out=out, archive=archive, state=state)
    return {
        "actions": [guarded("verify", settings.log_dir, lambda log: _verify(settings, log))],
        "task_dep": ["delta"],
        "file_dep": [settings.update_summary, settings.target_zip],
        "targets": [settings.verify_stamp],
        "uptodate": [config_changed({"tool": TOOL})],
        "verbosity": 2,
    }


def _verify(settings: Settings, log: RunLog) -> None:
    from tasks.verify import verify_delta, verify_needed

    if not verify_needed(settings):
        log.say("verify: nothing to verify (no package, or this package was verified)")
    else:
        report = verify_delta(settings, log)
        for check in report.checks:
            log.say(f"verify: ok  {check.name}: {check.detail}")
        log.say(f"verify: {settings.update_zip} passed {len(report.checks)} checks in "
                f"{report.seconds:.1f} s; report: {settings.update_report}")
    atomic.write_text(settings.verify_stamp, "verified\n")


IMPORT_PARAMS: list[dict[str, Any]] = [
    {"name": "firmware", "long": "firmware", "type": str, "default": "",
     "help": "a release firmware package folder (update/, upgrade/, md5.txt, contents.xml)"},
    {"name": "template", "long": "template", "type": str, "default": "",
     "help": "a targetfiles.zip whose OTA/, RADIO/, RECOVERY/ complete a base built from the "
             "images [default: the package's own upgrade/targetfiles.zip]"},
    {"name": "from_images", "long": "from-images", "type": bool, "default": False,
     "help": "build the base from the images even when upgrade/targetfiles.zip is there"},
    *COMMON_PARAMS,
]


@task_params(IMPORT_PARAMS)
def task_import_base(firmware: str, template: str, from_images: bool, out: str, archive: str,
                     state: str) -> TaskDict:
    """check a release firmware package against its images and archive it as a base version"""
    settings = make_settings(out=out, archive=archive, state=state)
    return {
        "actions": [guarded("import_base", settings.log_dir,
                            lambda log: _import_base(settings, firmware, template, from_images,
                                                     log))],
        "uptodate": [False],
        "verbosity": 2,
    }


def _import_base(settings: Settings, firmware: str, template: str, from_images: bool,
                 log: RunLog) -> None:
    from tasks.firmware import import_base

    if not firmware:
        raise DfotaError("name the firmware package: doit import_base --firmware DIR")
    archive = Archive(settings.archive_dir, settings.archive_hashes)
    import_base(resolve_path(firmware), archive,
                template=resolve_path(template) if template else None,
                from_images=from_images, say=log.say, work_dir=settings.state_dir)


def task_bench() -> TaskDict:
    """measure the chain on a production-size SDK pair against the alternatives (BENCHMARKS.md)"""
    return {
        "actions": [guarded("bench", PROJECT_DIR / "build" / "logs", _bench)],
        "uptodate": [False],
        "verbosity": 2,
    }


def _bench(log: RunLog) -> None:
    from tasks.bench import run_benchmark

    run_benchmark(PROJECT_DIR / "build" / "bench", 1.0, log.say, PROJECT_DIR / "BENCHMARKS.md")


@task_params(COMMON_PARAMS)
def task_versions(out: str, archive: str, state: str) -> TaskDict:
    """list the archived versions, oldest first, with the source each was built on"""
    settings = make_settings(out=out, archive=archive, state=state)
    return {
        "actions": [guarded("versions", None, lambda log: _list_versions(settings, log))],
        "uptodate": [False],
        "verbosity": 2,
    }


def _list_versions(settings: Settings, log: RunLog) -> None:
    archive = Archive(settings.archive_dir, settings.archive_hashes)
    versions = archive.versions()
    if not versions:
        log.say(f"{settings.archive_dir}: no archived version yet")
    for v in versions:
        source = v.manifest.get("source") or "-"
        log.say(f"{v.key}  {v.manifest.get('origin', '?'):<11}  built on {source}  "
            f"sha256 {v.sha256[:12]}  {v.manifest.get('size', '?')} bytes")
