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
archive of a user's SDK, and nothing of the sample is used for a user's SDK. An installed
package has no sample beside it: a command that builds a target then needs an SDK named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfota.commands.options import ProjectFile, command_line_options, read_project_file
from dfota.commands.params import (
    CHAIN_DEFAULTS,
    CHAIN_READS,
    DEVICE_TASKS,
    FOLDERS,
    NO_LISTS,
    RECORDED,
    TABLE,
    TABLE_ONLY,
    TASK_PARAMS,
    needs,
)
from dfota.core.errors import DfotaError
from dfota.core.volumes import Volumes
from dfota.formats.ziplimits import DEFLATE_LIMIT, MODULE_ENTRY_MB, ZipLimits
from dfota.settings import (
    MB,
    SAMPLE_CONFIG,
    SAMPLE_DIR,
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
    single: bool = False  # `doit -s`: the named tasks run without their dependencies


@dataclass(frozen=True)
class Given:
    """What a command's settings are made from: the project file, the command line, and the
    workspace they name with its record."""

    project: ProjectFile
    chain: Mapping[str, object]  # the chain-wide options given on the command line
    own: Mapping[str, Mapping[str, object]]  # each named task's own options, as given
    values: Mapping[str, object]  # chain-wide: the command line over [tool.dfota] over defaults
    sample: bool  # the SDK is the sample's
    workspace: Workspace
    record: WorkspaceRecord

    def options(self, task: str) -> dict[str, object]:
        """A task's own options: as given, over pyproject.toml's, over the defaults."""
        return {**_defaults(task, self.project), **self.own.get(task, {})}


def sample_is_here() -> bool:
    """The sample SDK's folder is beside the package (a checkout of the project): the SDK when
    none is named. An installed package has none."""
    return SAMPLE_DIR.is_dir()


def configure(project_dir: Path, args: Sequence[str], selected: Sequence[str],
              doit_tasks: Iterable[str] = TASK_PARAMS) -> Configuration:
    """The command's configuration. `args`: the command's task names and their options;
    `selected`: the tasks it runs (named, or doit's default tasks; none for `doit help` or
    `doit list`, which need no workspace record)."""
    given, sdk, warnings = _given(read_project_file(project_dir), args, doit_tasks)
    verify = given.options("verify")
    named = chained({t.split(":", 1)[0] for t in selected}, bool(verify["package"]))
    options, more = _task_options(given, sdk, named)
    targetfiles = _targetfiles_settings(options["targetfiles"], given,
                                        any(needs(t, "targetfiles") for t in named))
    delta = DeltaSettings(workspace=given.workspace, config_dir=None)
    if any(needs(task, "delta") for task in named):
        delta, lists_warnings = delta_settings(given.workspace, options["delta"], given.project,
                                               given.sample)
        more += lists_warnings
    return Configuration(
        workspace=given.workspace, targetfiles=targetfiles, delta=delta,
        verify=verify_settings(verify, given),
        import_options=given.options("import_base"), prune_options=given.options("prune"),
        bench_options=given.options("bench"),
        wait=_number(given.values, "wait", float, 0, False),
        record=given.record, recorded_options=options, warnings=(*warnings, *more),
        sample=given.sample, device_options={t: given.options(t) for t in DEVICE_TASKS})


def _given(project: ProjectFile, args: Sequence[str], doit_tasks: Iterable[str]
           ) -> tuple[Given, Path | None, list[str]]:
    """What the command was given, the SDK it names (None: none, and no sample here) and the
    warnings about its workspace."""
    given_chain, given_own = command_line_options(args, doit_tasks)
    values = _chain_values(project, given_chain)
    sdk = _sdk(values, project)
    sample = sdk is not None and is_sample_sdk(sdk)
    workspace, warnings = _workspace(values, project, sample, given_chain)
    return Given(project, given_chain, given_own, values, sample, workspace,
                 read_record(workspace.record)), sdk, warnings


def _sdk(values: Mapping[str, object], project: ProjectFile) -> Path | None:
    """The SDK named, else the one this project's workspace last built, else the sample's
    when it is here (None: none)."""
    text = str(values["sdk"]) or _recorded_sdk(values, project)
    if text:
        return resolve_path(text, project.folder)
    return SAMPLE_SDK if sample_is_here() else None


def _task_options(given: Given, sdk: Path | None, named: set[str]
                  ) -> tuple[dict[str, dict[str, object]], list[str]]:
    """The options of each task whose settings the workspace records. A task runs with the
    configuration when the command names it (or a task that runs before it in the chain),
    else with what its last run recorded."""
    configured: dict[str, dict[str, object]] = {}
    for task in RECORDED:
        chain = {k: given.values[k] for k in CHAIN_READS[task]}
        configured[task] = {**chain, **given.options(task)}
    configured["targetfiles"]["sdk"] = str(sdk) if sdk else ""
    configured["targetfiles"]["source"] = _version_reference(str(given.values["source"]),
                                                             given.project.folder)
    options: dict[str, dict[str, object]] = {}
    warnings: list[str] = []
    upstream_named = False
    for task in ("targetfiles", "delta"):
        upstream_named = upstream_named or task in named
        if upstream_named or not any(needs(t, task) for t in named):
            options[task] = configured[task]
        else:
            options[task], more = _from_record(task, configured[task], given)
            warnings += more
    return options, warnings


def _targetfiles_settings(t: Mapping[str, object], given: Given, will_run: bool
                          ) -> TargetfilesSettings:
    """`doit targetfiles`'s settings from its options; `will_run`: the command runs it."""
    if will_run and not t["sdk"]:
        raise DfotaError(f"name your SDK (its ql-ol-extsdk folder): sdk = \"DIR\" in "
                         f"[{TABLE}], or --sdk DIR", given.project.path)
    targetfiles = TargetfilesSettings(
        # no SDK ("") only when the command does not run targetfiles
        workspace=given.workspace, sdk=Path(str(t["sdk"])), source=str(t["source"]),
        strict=bool(t["strict"]), metadata_from_image=bool(t["metadata_from_image"]),
        empty_by_nature=_empty_by_nature(t["empty_by_nature"], given.project),
        allow_outside_links=bool(t.get("allow_outside_links", False)))
    if targetfiles.sdk_is_sample != given.sample:
        raise DfotaError(f"the workspace {given.workspace.out_dir} was built from "
                         f"{targetfiles.sdk}; run `doit targetfiles` for this SDK",
                         given.workspace.record)
    return targetfiles


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
                         archive_group_readable=bool(values["archive_group_readable"]),
                         zip_limits=_zip_limits(values)), warnings
    folder = project.folder
    return Workspace(resolve_path(str(values["out"]), folder),
                     resolve_path(str(values["state"]), folder),
                     resolve_path(str(values["archive"]), folder),
                     archive_group_readable=bool(values["archive_group_readable"]),
                     zip_limits=_zip_limits(values)), warnings


def _zip_limits(values: Mapping[str, object]) -> ZipLimits:
    """`max_entry_mb` (1 to what the module's zip reader takes) and `max_deflate_ratio` (1 to
    deflate's own limit)."""
    ratio = _number(values, "max_deflate_ratio", int, 1, False)
    if ratio > DEFLATE_LIMIT:
        raise DfotaError(f"--max-deflate-ratio {ratio}: must be at most {DEFLATE_LIMIT} "
                         "(deflate cannot expand data more)")
    entry = _number(values, "max_entry_mb", int, 1, False)
    if entry > MODULE_ENTRY_MB:
        raise DfotaError(f"--max-entry-mb {entry}: must be at most {MODULE_ENTRY_MB} (the "
                         "module's zip reader takes no ZIP64: no entry of 4 GiB or more)")
    return ZipLimits(entry, ratio)


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
    from dfota.package.mode import parse_mode

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


def _from_record(task: str, configured: Mapping[str, object], given: Given
                 ) -> tuple[dict[str, object], list[str]]:
    """A task the command does not name: the options of its last run here. A chain-wide
    option on the command line that this task reads must agree with them; one that
    pyproject.toml sets otherwise is said in a warning."""
    recorded = dict(given.record.tasks.get(task) or {})
    if not recorded:
        if task == "targetfiles":
            raise DfotaError("this workspace has no target yet: run `doit targetfiles` first",
                             given.workspace.record)
        return dict(configured), []
    warnings = []
    for key in CHAIN_READS.get(task, ()):
        if key not in recorded or key in TABLE_ONLY:
            continue
        if key in given.chain and configured[key] != recorded[key]:
            raise DfotaError(f"--{key} {given.chain[key]} differs from this workspace's "
                             f"record ({recorded[key] or 'the default'}, from its last "
                             f"`doit {task}`): run `doit {task}` with it to change it",
                             given.workspace.record)
        if key in given.project.chain and configured[key] != recorded[key]:
            warnings.append(f"{key}: the configuration says {configured[key] or 'the default'}"
                            f", this workspace's last `doit {task}` used "
                            f"{recorded[key] or 'the default'}; `doit {task}` applies the "
                            "configuration")
    return recorded, warnings


def chained(named: set[str], package: bool) -> set[str]:
    """The named tasks that run the chain before them: all but `verify --package`, which
    proves a package of its own and runs nothing else."""
    return named - {"verify"} if package else named


def verify_settings(options: Mapping[str, object], given: Given) -> VerifySettings:
    """`doit verify`'s settings; with `--package`, the package, its versions and the vendor
    lists it was made with (the command's `config`)."""
    package, target = str(options["package"]), str(options["target"])
    if not package:
        if target:
            raise DfotaError("--target: only with --package PATH")
        return VerifySettings(workspace=given.workspace)
    folder = given.project.folder
    lists, _ = _lists_folder(str(given.values["config"] or ""), given.sample, given.project)
    return VerifySettings(
        workspace=given.workspace, package=resolve_path(package, folder),
        source=_version_reference(str(given.chain.get("source") or ""), folder),
        target=_version_reference(target, folder), config_dir=lists)


def _recorded_sdk(values: Mapping[str, object], project: ProjectFile) -> str:
    """With no SDK named, the SDK this project's workspace last built (a user's SDK once
    given stays the one built), else "" (the sample)."""
    workspace, _ = _workspace(values, project, False, {})
    recorded = read_record(workspace.record).tasks.get("targetfiles") or {}
    return str(recorded.get("sdk") or "")


def runs(conf: Configuration, selected: Sequence[str], task: str) -> bool:
    """The command that runs the tasks `selected` runs `task` (named, or through doit's
    task_dep chain)."""
    named = chained({t.split(":", 1)[0] for t in selected}, conf.verify.package is not None)
    return any(needs(t, task) for t in named)


def check_versions(conf: Configuration, selected: Sequence[str]) -> None:
    """The versions the command names resolve (a key, a unique prefix, or a zip), before any
    task runs; whether each is intact is checked where it is used."""
    from dfota.build.archive import archive_of

    named = chained({t.split(":", 1)[0] for t in selected}, conf.verify.package is not None)
    ws = conf.workspace
    archive = archive_of(ws)
    if any(needs(t, "targetfiles") for t in named) and conf.targetfiles.source:
        archive.resolve(conf.targetfiles.source, "source", intact=False)
    if any(needs(t, "delta") for t in named):
        if conf.delta.base:
            archive.resolve(conf.delta.base, "base", intact=False)
        if conf.delta.bases and not conf.delta.bases.isdigit():
            for base in conf.delta.bases.split(","):
                archive.resolve(base, "base", intact=False)
