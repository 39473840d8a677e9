"""The one configuration of a command: read, checked and cut into each task's settings once,
when the command starts, before any task runs.

Where a setting comes from, first found wins:

1. the command line (a chain-wide option given to any task applies to every task);
2. `pyproject.toml` of the folder the command runs in: chain-wide settings in `[tool.dfota]`,
   per-task ones in `[tool.doit.tasks.NAME]`;
3. the default.

A task the command does not name, run only because a named one depends on it, runs with the
settings its last run in this workspace recorded (`dfota.state.workspace`), so that a second
command never rebuilds from other values: `doit delta` packages the target the last
`doit targetfiles` built, with that build's SDK. A chain-wide option given on the command
line must then agree with that record.

The sample SDK is a workspace of its own (`sample_sdk/work/`): its versions never enter the
archive of a user's SDK, and nothing of the sample is used for a user's SDK.
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doit.cmdparse import CmdOption, CmdParseError, TaskParse

from dfota.core.errors import DfotaError, UsageError
from dfota.core.volumes import DEFAULT_CACHE_SIZE_MB, DEFAULT_SYSTEM_SIZE_MB, Volumes
from dfota.settings import (
    DEFAULT_DIFF_TIMEOUT,
    DEFAULT_SIZE_BUDGET_MB,
    EMPTY_BY_NATURE,
    MB,
    SAMPLE_CONFIG,
    SAMPLE_SDK,
    SAMPLE_WORK,
    DeltaSettings,
    TargetfilesSettings,
    VerifySettings,
    Workspace,
    is_sample_sdk,
    resolve_path,
)
from dfota.state.workspace import WorkspaceRecord, read_record

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TABLE = "tool.dfota"
NO_LISTS = "none"  # `config = "none"`: no vendor lists apply

Param = dict[str, Any]


def _param(name: str, kind: type, default: object, text: str) -> Param:
    return {"name": name, "long": name.replace("_", "-"), "type": kind, "default": default,
            "help": text}


# chain-wide settings: [tool.dfota], or an option of any task (default None: not given)
CHAIN_PARAMS: list[Param] = [
    _param("sdk", str, None, "the ql-ol-extsdk folder of the SDK build [chain-wide; default: "
                             "the sample SDK, in its own workspace sample_sdk/work]"),
    _param("source", str, None, "source version: an archived version key (or unique prefix) "
                                "or a targetfiles.zip [chain-wide; default: the newest "
                                "version this workspace built or imported]"),
    _param("out", str, None, "folder for the outputs [chain-wide; default: out]"),
    _param("archive", str, None, "folder holding every version's targetfiles.zip [chain-wide; "
                                 "default: archive]"),
    _param("state", str, None, "folder for bookkeeping between runs [chain-wide; default: "
                               "build]"),
    _param("config", str, None, "folder of the vendor lists (quectel_*_filelist.txt), or "
                                "'none' [chain-wide; required for your own SDK]"),
    {**_param("archive_group_readable", bool, None, "archive folders and files readable by "
                                                    "the group [chain-wide; default: on]"),
     "inverse": "archive-private"},
    _param("wait", float, None, "wait up to SECONDS for another run of this workspace to end "
                                "[chain-wide; default: 0, say it is busy]"),
]
CHAIN_DEFAULTS: dict[str, object] = {"out": "out", "archive": "archive", "state": "build",
                                     "source": "", "sdk": "", "config": "", "wait": 0.0,
                                     "archive_group_readable": True,
                                     "empty_by_nature": list(EMPTY_BY_NATURE)}
TABLE_ONLY = ("empty_by_nature",)  # chain-wide settings only pyproject.toml can give
FOLDERS = ("out", "archive", "state")

TASK_PARAMS: dict[str, list[Param]] = {
    "targetfiles": [
        _param("strict", bool, False, "treat warnings (empty directories, special files, "
                                      "image drift) as errors"),
        _param("metadata_from_image", bool, False, "take SYSTEM's modes and owners from "
                                                   "target/sdxlemur-sysfs.ubi"),
        _param("allow_outside_links", bool, False, "pack rootfs files hard-linked from "
                                                   "outside the rootfs, with a warning"),
    ],
    "delta": [
        _param("base", str, "", "base version: an archived version key (or unique prefix) or "
                                "a targetfiles.zip [default: the source of the target]"),
        _param("mode", str, "all", "what the package updates: all, rootfs, modem, kernel (or "
                                   "a, l, m, o), alone or combined as l,m [default: all]"),
        _param("size_budget_mb", float, DEFAULT_SIZE_BUDGET_MB,
               "warn when the package is larger [default: %(default)s]"),
        _param("diff_timeout", float, DEFAULT_DIFF_TIMEOUT,
               "seconds per diff before the file is shipped whole [default: %(default)s]"),
        _param("workers", int, 0, "diff processes [default: one per core]"),
        _param("system_size_mb", float, None,
               "the room of the module's system volume, MiB [default: volume rootfs of the "
               f"SDK's target/sdxlemur-sysfs.ubi, else {DEFAULT_SYSTEM_SIZE_MB}]"),
        _param("cache_size_mb", float, None,
               "the room of the module's /cache, MiB [default: volume cachefs of the SDK's "
               f"target/sdxlemur-sysfs.ubi, else {DEFAULT_CACHE_SIZE_MB}]"),
        _param("bases", str, "", "also make and verify one package from each of these bases: "
                                 "N (the N newest versions older than the target) or a comma "
                                 "list of versions, into out/deltas/"),
    ],
    "verify": [
        _param("package", str, "", "prove this update.zip instead of the workspace's package "
                                   "(never moved or published; --source KEY overrides the "
                                   "version its quectel-project-version names)"),
        _param("target", str, "", "with --package: the target version (key or zip) [default: "
                                  "the one the update.json beside the package names]"),
    ],
    "prune": [
        _param("keep", int, 0, "how many of the newest archived versions to keep"),
        _param("force", bool, False, "also remove versions a kept version was built on"),
    ],
    "bench": [
        _param("folder", str, "", "the benchmark's data and runs [default: <state>/bench]"),
        _param("keep_data", bool, False, "keep the benchmark's folder (gigabytes) afterwards"),
        _param("update_benchmarks", bool, False, "rewrite BENCHMARKS.md with the results"),
        _param("before", str, "", "run the steps with this git revision's code too, and compare"),
    ],
    "import_base": [
        _param("firmware", str, "", "a release firmware package folder (update/, upgrade/, "
                                    "md5.txt, contents.xml)"),
        _param("template", str, "", "a targetfiles.zip whose OTA/, RADIO/, RECOVERY/ complete "
                                    "a base built from the images [default: the package's "
                                    "own upgrade/targetfiles.zip]"),
        _param("from_images", bool, False, "build the base from the images even when "
                                           "upgrade/targetfiles.zip is there"),
    ],
    "versions": [],
    "twin": [
        _param("version", str, "", "the archived version (key or unique prefix) whose flash "
                                   "the module starts with, when --root holds another or none"),
        _param("root", str, "", "the folder holding the module's flash (system tree, "
                                "partitions, usrdata)"),
        _param("adb", str, "127.0.0.1:5600", "HOST:PORT the module listens on for `adb connect` "
                                             "[default: %(default)s; adb's server probes "
                                             "5555-5585 for emulators]"),
        _param("at_pty", bool, False, "also give the module a USB AT port (a pty; its path is "
                                      "printed)"),
        _param("fault", list, [], "a fault to simulate (repeatable): power-cut:N, "
                                  "low-space:MB, wrong-version, corrupt-download, "
                                  "modified-file:PATH, slow-link:KBPS, port-busy:NAME, "
                                  "cut-download:KB"),
        _param("cafile", str, "", "certificates the module trusts for HTTPS downloads "
                                  "[default: the system's]"),
    ],
    "upgrade": [
        _param("device", list, [], "a module's adb serial (repeatable), or 'all' online"),
        _param("package", str, "", "the update.zip to send [default: for each module, the "
                                   "proven package whose source is the version it runs]"),
        _param("transfer", str, "adb", "adb (push it) or url (the module downloads it from "
                                       "--serve-url) [default: %(default)s]"),
        _param("at", str, "smd7", "the AT port: smd7 or smd11 (through adb shell) or the USB "
                                  "AT port's device [default: %(default)s]"),
        _param("serve_url", str, "", "the address of a `doit serve` the modules reach "
                                     "(http(s)://HOST:PORT), for --transfer url"),
        _param("unverified", bool, False, "send a package `doit verify` did not prove (with a "
                                          "warning)"),
        _param("kill_port_users", bool, False, "kill what holds the AT port (note 4.2.1 "
                                               "step 1)"),
        _param("push_timeout", float, 600.0, "seconds for adb push [default: %(default)s]"),
        _param("update_timeout", float, 1800.0, "seconds from AT+QFOTADL to the module back "
                                                "with its result [default: %(default)s]"),
    ],
    "serve": [
        _param("bind", str, "127.0.0.1", "the address to listen on; modules need one they "
                                         "reach [default: %(default)s]"),
        _param("port", int, 8070, "the port (0: any free one) [default: %(default)s]"),
        _param("cert", str, "", "serve HTTPS with this certificate (PEM)"),
        _param("key", str, "", "the certificate's private key (PEM), with --cert"),
    ],
}
DEVICE_TASKS = ("twin", "upgrade", "serve")  # tasks that deal with modules; none writes
# the chain-wide settings each task reads (the folders: every task)
CHAIN_READS: dict[str, tuple[str, ...]] = {
    "targetfiles": ("sdk", "source", "empty_by_nature"),
    "delta": ("config",),
}
DEPENDS_ON = {"delta": "targetfiles", "verify": "delta"}  # doit's task_dep
RECORDED = ("targetfiles", "delta")  # tasks whose settings the workspace records


def params_of(task: str) -> list[Param]:
    """The options a task takes on the command line: its own and the chain-wide ones."""
    return [*TASK_PARAMS[task], *CHAIN_PARAMS]


@dataclass(frozen=True)
class ProjectFile:
    """`[tool.dfota]` and the `[tool.doit.tasks.*]` tables of the project's pyproject.toml."""

    path: Path
    chain: Mapping[str, object]
    tasks: Mapping[str, Mapping[str, object]]

    @property
    def folder(self) -> Path:
        return self.path.parent


def read_project_file(folder: Path) -> ProjectFile:
    path = folder / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text("utf-8")) if path.is_file() else {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DfotaError(f"cannot be read ({exc})", path) from exc
    tool = data.get("tool", {})
    chain = tool.get("dfota", {})
    tasks = tool.get("doit", {}).get("tasks", {})
    if not isinstance(chain, dict) or not isinstance(tasks, dict):
        raise DfotaError(f"[{TABLE}] and [tool.doit.tasks] must be tables", path)
    project = ProjectFile(path, chain, tasks)
    check_known_keys(project)
    return project


def _nearest(word: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.5)
    return f" (did you mean {close[0]}?)" if close else ""


def check_known_keys(project: ProjectFile) -> None:
    """Unknown keys in this tool's tables are errors; a chain-wide setting in a per-task
    table is told where it moved."""
    chain_keys = [p["name"] for p in CHAIN_PARAMS] + list(TABLE_ONLY)
    for key in project.chain:
        if key not in chain_keys:
            raise DfotaError(f"[{TABLE}] {key}: unknown setting{_nearest(key, chain_keys)}",
                             project.path)
    for task, table in project.tasks.items():
        if task not in TASK_PARAMS:
            raise DfotaError(f"[tool.doit.tasks.{task}]: no such task"
                             f"{_nearest(task, TASK_PARAMS)}", project.path)
        if not isinstance(table, dict):
            raise DfotaError(f"[tool.doit.tasks.{task}] must be a table", project.path)
        own = [p["name"] for p in TASK_PARAMS[task]]
        for key in table:
            where = f"[tool.doit.tasks.{task}] {key}"
            if key in chain_keys:
                raise DfotaError(f"{where}: a chain-wide setting; it moved to [{TABLE}]",
                                 project.path)
            if key not in own:
                hint = _nearest(key, own + chain_keys)
                raise DfotaError(f"{where}: unknown setting{hint}", project.path)


def command_line_options(args: Sequence[str], tasks: Iterable[str]
                         ) -> tuple[dict[str, object], dict[str, dict[str, object]]]:
    """The chain-wide options given anywhere on the command line (the same value wherever
    given), and each named task's own options as given."""
    known = set(tasks)
    chain: dict[str, object] = {}
    own: dict[str, dict[str, object]] = {}
    for pos, word in enumerate(args):
        task = word.split(":", 1)[0]
        if word.startswith("-") or task not in TASK_PARAMS or task not in known:
            continue
        try:
            values, _ = TaskParse([CmdOption(p) for p in params_of(task)]).parse(args[pos + 1:])
        except CmdParseError as exc:
            raise UsageError(_option_error(task, str(exc))) from None
        # a list option (given again and again) is appended to in place: not marked given
        given = {k: v for k, v in values.items()
                 if k in values._non_default_keys or (isinstance(v, list) and v)}
        own[task] = {k: v for k, v in given.items() if k not in chain_keys()}
        for key, value in given.items():
            if key not in chain_keys():
                continue
            if key in chain and chain[key] != value:
                raise DfotaError(f"--{key.replace('_', '-')} is given twice with different "
                                 f"values ({chain[key]} and {value}); give it once")
            chain[key] = value
    return chain, own


def _option_error(task: str, text: str) -> str:
    """getopt's complaint as one line naming the option and the task."""
    found = re.search(r"option (-+[\w-]+) (not recognized|requires argument|must not have an "
                      r"argument)", text)
    if not found:
        return f"{task}: bad options"
    option, what = found.groups()
    longs = [f"--{p['long']}" for p in params_of(task)]
    hint = _nearest(option, longs) if what == "not recognized" else ""
    said = {"not recognized": f"unknown option {option}{hint}",
            "requires argument": f"{option} needs a value",
            "must not have an argument": f"{option} takes no value"}[what]
    return f"{task}: {said} (`doit help {task}` lists its options)"


def chain_keys() -> tuple[str, ...]:
    return tuple(p["name"] for p in CHAIN_PARAMS)


@dataclass(frozen=True)
class Configuration:
    """The settings of every task of one command, and what the command was told."""

    workspace: Workspace
    targetfiles: TargetfilesSettings
    delta: DeltaSettings
    verify: VerifySettings
    import_options: Mapping[str, object]
    prune_options: Mapping[str, object]
    bench_options: Mapping[str, object]
    wait: float
    record: WorkspaceRecord
    # each recorded task's options as they go into the workspace record after its run
    recorded_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    sample: bool = False
    # the options of twin, upgrade and serve, as given over their defaults
    device_options: Mapping[str, Mapping[str, object]] = field(default_factory=dict)


def _chain_values(project: ProjectFile, given: Mapping[str, object]) -> dict[str, object]:
    """Chain-wide values: the command line over [tool.dfota] over the defaults."""
    return {**CHAIN_DEFAULTS, **project.chain, **given}


def _workspace(values: Mapping[str, object], project: ProjectFile, sample: bool,
               given: Mapping[str, object]) -> tuple[Workspace, list[str]]:
    warnings: list[str] = []
    if sample:
        named = [f"--{k}" for k in FOLDERS if k in given]
        if named:
            raise DfotaError(f"{' '.join(named)}: the sample SDK builds in its own workspace "
                             f"({SAMPLE_WORK}); copy the sample to build it elsewhere")
        set_in_file = [k for k in FOLDERS if k in project.chain]
        if set_in_file:
            warnings.append(f"{project.path}: [{TABLE}] sets {', '.join(set_in_file)} but no "
                            f"sdk: the sample SDK builds in {SAMPLE_WORK}")
        return Workspace(SAMPLE_WORK / "out", SAMPLE_WORK / "state", SAMPLE_WORK / "archive",
                         archive_group_readable=bool(values["archive_group_readable"])), warnings
    folder = project.folder
    return Workspace(resolve_path(str(values["out"]), folder),
                     resolve_path(str(values["state"]), folder),
                     resolve_path(str(values["archive"]), folder),
                     archive_group_readable=bool(values["archive_group_readable"])), warnings


def _version_reference(value: str, folder: Path) -> str:
    """A --source/--base value: a zip path made absolute; a version key as it is."""
    if not value:
        return ""
    path = resolve_path(value, folder)
    return str(path) if value.endswith(".zip") or "/" in value or path.exists() else value


def _empty_by_nature(value: object, project: ProjectFile) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DfotaError(f"[{TABLE}] empty_by_nature must be a list of folder paths",
                         project.path)
    return tuple(sorted({v.strip("/") for v in value if v.strip("/")}))


def _lists_folder(value: str, sample: bool, project: ProjectFile
                  ) -> tuple[Path | None, list[str]]:
    if value == NO_LISTS:
        return None, ["config = none: no vendor lists apply (no fullota, noota, chmod or "
                      "multifota rules)"]
    if value:
        return resolve_path(value, project.folder), []
    if sample:
        return SAMPLE_CONFIG, []
    raise DfotaError(f"name the vendor lists of your SDK: config = \"DIR\" (or \"{NO_LISTS}\") "
                     f"in [{TABLE}], or --config DIR", project.path)


def _number(values: Mapping[str, object], key: str, kind: type, low: float,
            above: bool) -> Any:
    value = values[key]
    try:
        number = kind(value)
    except (TypeError, ValueError) as exc:
        raise DfotaError(f"--{key.replace('_', '-')} {value}: not a number") from exc
    if number < low or (above and number == low):
        bound = f"above {low:g}" if above else f"at least {low:g}"
        raise DfotaError(f"--{key.replace('_', '-')} {value}: must be {bound}")
    return number


def _size(options: Mapping[str, object], key: str) -> int | None:
    """A volume size given in MiB, in bytes; None when not given (the SDK's image, else the
    default, decides)."""
    if options.get(key) is None:
        return None
    return int(_number(options, key, float, 0, True) * MB)


def delta_settings(workspace: Workspace, options: Mapping[str, object],
                   project: ProjectFile, sample: bool) -> tuple[DeltaSettings, list[str]]:
    from dfota.package.plan import parse_mode

    config_dir, warnings = _lists_folder(str(options.get("config") or ""), sample, project)
    mode = str(options["mode"])
    parse_mode(mode)  # a bad mode stops the command here
    bases = str(options["bases"]).strip()
    if bases.isdigit() and int(bases) < 1:
        raise DfotaError(f"--bases {bases}: must be at least 1")
    return DeltaSettings(
        workspace=workspace, config_dir=config_dir,
        base=_version_reference(str(options["base"]), project.folder), mode=mode,
        size_budget=int(_number(options, "size_budget_mb", float, 0, True) * MB),
        diff_timeout=_number(options, "diff_timeout", float, 0, True),
        workers=_number(options, "workers", int, 0, False),
        volumes=Volumes.given(_size(options, "system_size_mb"), _size(options, "cache_size_mb")),
        bases=",".join(_version_reference(b.strip(), project.folder)
                       for b in bases.split(",") if b.strip()) if not bases.isdigit()
        else bases,
    ), warnings


def _defaults(task: str, project: ProjectFile) -> dict[str, object]:
    return {**{p["name"]: p["default"] for p in TASK_PARAMS[task]}, **project.tasks.get(task, {})}


def _from_record(task: str, record: WorkspaceRecord, given_chain: Mapping[str, object],  # noqa: PLR0913
                 configured: Mapping[str, object], workspace: Workspace,
                 in_file: Iterable[str]) -> tuple[dict[str, object], list[str]]:
    """A task the command does not name: the options of its last run here. A chain-wide
    option on the command line that this task reads must agree with them; one that
    pyproject.toml sets otherwise is said in a warning."""
    in_file = set(in_file)
    recorded = dict(record.tasks.get(task) or {})
    if not recorded:
        if task == "targetfiles":
            raise DfotaError("this workspace has no target yet: run `doit targetfiles` first",
                             workspace.record)
        return dict(configured), []
    warnings = []
    for key in CHAIN_READS.get(task, ()):
        if key not in recorded or key in TABLE_ONLY:
            continue
        if key in given_chain and configured[key] != recorded[key]:
            raise DfotaError(f"--{key} {given_chain[key]} differs from this workspace's "
                             f"record ({recorded[key] or 'the default'}, from its last "
                             f"`doit {task}`): run `doit {task}` with it to change it",
                             workspace.record)
        if key in in_file and configured[key] != recorded[key]:
            warnings.append(f"{key}: the configuration says {configured[key] or 'the default'}"
                            f", this workspace's last `doit {task}` used "
                            f"{recorded[key] or 'the default'}; `doit {task}` applies the "
                            "configuration")
    return recorded, warnings


def configure(project_dir: Path, args: Sequence[str], selected: Sequence[str],
              doit_tasks: Iterable[str] = TASK_PARAMS) -> Configuration:
    """The command's configuration. `args`: the command's task names and their options;
    `selected`: the tasks it runs (named, or doit's default tasks; none for `doit help` or
    `doit list`, which need no workspace record)."""
    project = read_project_file(project_dir)
    given_chain, given_own = command_line_options(args, doit_tasks)
    verify = {**_defaults("verify", project), **given_own.get("verify", {})}
    named = chained({t.split(":", 1)[0] for t in selected}, bool(verify["package"]))
    values = _chain_values(project, given_chain)
    sdk_text = str(values["sdk"]) or _recorded_sdk(values, project)
    sdk = resolve_path(sdk_text, project.folder) if sdk_text else SAMPLE_SDK
    sample = is_sample_sdk(sdk)
    workspace, warnings = _workspace(values, project, sample, given_chain)
    record = read_record(workspace.record)

    configured: dict[str, dict[str, object]] = {}
    for task in RECORDED:
        own = {**_defaults(task, project), **given_own.get(task, {})}
        chain = {k: values[k] for k in CHAIN_READS[task]}
        configured[task] = {**chain, **own}
    configured["targetfiles"]["sdk"] = str(sdk)
    configured["targetfiles"]["source"] = _version_reference(str(values["source"]),
                                                             project.folder)

    # a task runs with the configuration when the command names it (or a task that runs
    # before it in the chain), else with what its last run recorded
    options: dict[str, dict[str, object]] = {}
    upstream_named = False
    for task in ("targetfiles", "delta"):
        upstream_named = upstream_named or task in named
        needed = any(_needs(t, task) for t in named)
        if upstream_named or not needed:
            options[task] = configured[task]
        else:
            options[task], more = _from_record(task, record, given_chain, configured[task],
                                               workspace, project.chain)
            warnings += more
    t = options["targetfiles"]
    targetfiles = TargetfilesSettings(
        workspace=workspace, sdk=Path(str(t["sdk"])), source=str(t["source"]),
        strict=bool(t["strict"]), metadata_from_image=bool(t["metadata_from_image"]),
        empty_by_nature=_empty_by_nature(t["empty_by_nature"], project),
        allow_outside_links=bool(t.get("allow_outside_links", False)))
    if targetfiles.sdk_is_sample != sample:
        raise DfotaError(f"the workspace {workspace.out_dir} was built from "
                         f"{targetfiles.sdk}; run `doit targetfiles` for this SDK",
                         workspace.record)
    lists_needed = any(_needs(task, "delta") for task in named)
    if lists_needed:
        delta, more = delta_settings(workspace, options["delta"], project, sample)
        warnings += more
    else:
        delta = DeltaSettings(workspace=workspace, config_dir=None)
    return Configuration(
        workspace=workspace, targetfiles=targetfiles, delta=delta,
        verify=verify_settings(workspace, verify, given_chain, values, project, sample),
        import_options={**_defaults("import_base", project), **given_own.get("import_base", {})},
        prune_options={**_defaults("prune", project), **given_own.get("prune", {})},
        bench_options={**_defaults("bench", project), **given_own.get("bench", {})},
        wait=_number(values, "wait", float, 0, False),
        record=record, recorded_options=options, warnings=tuple(warnings), sample=sample,
        device_options={t: {**_defaults(t, project), **given_own.get(t, {})}
                        for t in DEVICE_TASKS})


def chained(named: set[str], package: bool) -> set[str]:
    """The named tasks that run the chain before them: all but `verify --package`, which
    proves a package of its own and runs nothing else."""
    return named - {"verify"} if package else named


def verify_settings(workspace: Workspace, options: Mapping[str, object],  # noqa: PLR0913
                    given_chain: Mapping[str, object], values: Mapping[str, object],
                    project: ProjectFile, sample: bool) -> VerifySettings:
    """`doit verify`'s settings; with `--package`, the package, its versions and the vendor
    lists it was made with (the command's `config`)."""
    package, target = str(options["package"]), str(options["target"])
    if not package:
        if target:
            raise DfotaError("--target: only with --package PATH")
        return VerifySettings(workspace=workspace)
    lists, _ = _lists_folder(str(values["config"] or ""), sample, project)
    return VerifySettings(
        workspace=workspace, package=resolve_path(package, project.folder),
        source=_version_reference(str(given_chain.get("source") or ""), project.folder),
        target=_version_reference(target, project.folder), config_dir=lists)


def _recorded_sdk(values: Mapping[str, object], project: ProjectFile) -> str:
    """With no SDK named, the SDK this project's workspace last built (a user's SDK once
    given stays the one built), else "" (the sample)."""
    workspace, _ = _workspace(values, project, False, {})
    recorded = read_record(workspace.record).tasks.get("targetfiles") or {}
    return str(recorded.get("sdk") or "")


def _needs(task: str, other: str) -> bool:
    """`task` runs `other` (itself, or through doit's task_dep chain)."""
    while task:
        if task == other:
            return True
        task = DEPENDS_ON.get(task, "")
    return False


def runs(conf: Configuration, selected: Sequence[str], task: str) -> bool:
    """The command that runs the tasks `selected` runs `task` (named, or through doit's
    task_dep chain)."""
    named = chained({t.split(":", 1)[0] for t in selected}, conf.verify.package is not None)
    return any(_needs(t, task) for t in named)


def check_versions(conf: Configuration, selected: Sequence[str]) -> None:
    """The versions the command names resolve (a key, a unique prefix, or a zip), before any
    task runs; whether each is intact is checked where it is used."""
    from dfota.build.archive import archive_of

    named = chained({t.split(":", 1)[0] for t in selected}, conf.verify.package is not None)
    ws = conf.workspace
    archive = archive_of(ws)
    if any(_needs(t, "targetfiles") for t in named) and conf.targetfiles.source:
        archive.resolve(conf.targetfiles.source, "source", intact=False)
    if any(_needs(t, "delta") for t in named):
        if conf.delta.base:
            archive.resolve(conf.delta.base, "base", intact=False)
        if conf.delta.bases and not conf.delta.bases.isdigit():
            for base in conf.delta.bases.split(","):
                archive.resolve(base, "base", intact=False)
