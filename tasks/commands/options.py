"""The settings as given: `[tool.dfota]` and `[tool.doit.tasks.*]` of the project's
pyproject.toml (unknown keys refused, naming the nearest known one) and the options of the
command line (a chain-wide option given once for every task).
"""

from __future__ import annotations

import difflib
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from doit.cmdparse import CmdOption, CmdParseError, TaskParse

from dfota.commands.params import (
    CHAIN_PARAMS,
    TABLE,
    TABLE_ONLY,
    TASK_PARAMS,
    chain_keys,
    params_of,
)
from dfota.core.errors import DfotaError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


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
