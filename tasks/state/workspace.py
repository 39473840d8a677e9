"""What a workspace built, and with which settings: `<state>/workspace.json`.

- `tasks`: each recorded task's options as its last successful run here used them; a later
  command that runs the task without naming it uses them again (see `dfota.commands.configure`);
- `target`: the last target `doit targetfiles` built (key, sha256, the source it was built on)
  and that build's warnings, which the package's report carries;
- `package`: the files `out/`'s package was made from, by their paths here (`out/` names
  them without the host's layout), for `doit verify`;
- `versions`: every version this workspace built or imported, oldest first: default sources
  and bases are chosen among these only, so an archive shared with other workspaces never
  hands this one another product's version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dfota.core import atomic
from dfota.core.errors import DfotaError

FORMAT = 1


@dataclass(frozen=True)
class WorkspaceRecord:
    tasks: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    target: Mapping[str, object] = field(default_factory=dict)
    versions: tuple[str, ...] = ()
    package: Mapping[str, object] = field(default_factory=dict)  # PackageInputs of out/'s

    @property
    def target_key(self) -> str:
        return str(self.target.get("key") or "")

    @property
    def source_key(self) -> str:
        return str(self.target.get("source") or "")

    @property
    def build_warnings(self) -> tuple[str, ...]:
        found = self.target.get("warnings")
        return tuple(str(w) for w in found) if isinstance(found, list | tuple) else ()

    def to_json(self) -> dict[str, object]:
        return {"format": FORMAT, "tasks": dict(self.tasks), "target": dict(self.target),
                "versions": list(self.versions), "package": dict(self.package)}


def read_record(path: Path) -> WorkspaceRecord:
    """The record; an empty one when the workspace has none yet."""
    if not path.exists():
        return WorkspaceRecord()
    try:
        data = json.loads(path.read_text("utf-8"))
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format') if isinstance(data, dict) else '?'}")
        return WorkspaceRecord(dict(data["tasks"]), dict(data["target"]),
                               tuple(str(v) for v in data["versions"]),
                               dict(data.get("package") or {}))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DfotaError(f"unreadable workspace record ({exc}); remove it and run "
                         "`doit targetfiles` again", path) from exc


def _with_versions(known: Iterable[str], new: Iterable[str]) -> tuple[str, ...]:
    seen = list(known)
    return (*seen, *(v for v in dict.fromkeys(new) if v and v not in seen))


def record_package(path: Path, options: Mapping[str, object],
                   inputs: Mapping[str, object]) -> None:
    """What `doit delta` just made its package from, with the options it ran with."""
    old = read_record(path)
    _write(path, WorkspaceRecord({**old.tasks, "delta": dict(options)}, old.target,
                                 old.versions, dict(inputs)))


def record_target(path: Path, options: Mapping[str, object], target: Mapping[str, object],
                  versions: Iterable[str]) -> None:
    """What `doit targetfiles` just built, with the options it ran with."""
    old = read_record(path)
    _write(path, WorkspaceRecord({**old.tasks, "targetfiles": dict(options)}, dict(target),
                                 _with_versions(old.versions, versions), old.package))


def record_versions(path: Path, versions: Iterable[str]) -> None:
    """Versions this workspace imported."""
    old = read_record(path)
    _write(path, WorkspaceRecord(old.tasks, old.target, _with_versions(old.versions, versions),
                                 old.package))


def _write(path: Path, record: WorkspaceRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(record.to_json(), indent=1, sort_keys=True) + "\n")
