"""One place's measuring (on disk, or on a RAM disk): its folders, its codes (this checkout's
first), every measure by code and step, and the commands the steps run."""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dfota.settings import PROJECT_DIR
from dfota.tools.bench.alternatives import BsdiffLoop
from dfota.tools.bench.codes import Code
from dfota.tools.bench.measure import Measure, measure, measure_any
from dfota.tools.bench.options import CONFIG_DIR, ON_DISK, BenchOptions, RunPaths, Say, step_name


@dataclass(frozen=True, slots=True)
class Command:
    """One measured command: its step, its log's name, and what runs where."""

    key: str  # of STEPS
    label: str  # the log's name (the code's prefix comes before it)
    argv: Sequence[object]
    cwd: Path | None = None  # None: the code's own folder
    env: Mapping[str, str] = field(default_factory=dict)


def tool_digest() -> str:
    """What doit's up-to-date checks hash as the tool's code: editing it during a run makes
    the repeated chains rebuild everything."""
    digest = hashlib.sha1()
    for path in sorted([*(PROJECT_DIR / "tasks").rglob("*.py"),
                        *(p for p in (PROJECT_DIR / "templates").glob("*") if p.is_file())]):
        digest.update(path.relative_to(PROJECT_DIR).as_posix().encode() + b"\0"
                      + path.read_bytes())
    return digest.hexdigest()


def workspace(where: Path) -> list[object]:
    """The options of a workspace of its own under `where`: out/, archive/, state/."""
    return ["--out", where / "out", "--archive", where / "archive", "--state", where / "state"]


class Session:
    """One place's measuring: its folders, its codes (this checkout's first), every measure
    by code and step, and what the steps left to read. `env` goes to every command (the
    temporary folder on a RAM disk); `prune`: remove each round's folders once no later step
    needs them (on a RAM disk, whose room is memory)."""

    def __init__(self, paths: RunPaths, options: BenchOptions, codes: Sequence[Code],
                 say: Say, place: str = ON_DISK) -> None:
        self.paths, self.options, self.codes, self.say = paths, options, tuple(codes), say
        self.place = place
        self.env: dict[str, str] = {}
        self.prune = place != ON_DISK
        self.measured: dict[tuple[str, str], list[Measure]] = {}
        self.loop: BsdiffLoop | None = None

    @property
    def full(self) -> bool:
        return self.options.cases == "all"

    @property
    def this(self) -> Code:
        return self.codes[0]

    def turns(self, i: int) -> tuple[Code, ...]:
        """The codes in round `i`: which goes first alternates."""
        return self.codes if i % 2 == 0 else self.codes[::-1]

    def later_trials(self) -> range:
        """The trials of the steps after the first ones: all of them when two codes are
        compared (the noise is the spread of the repeats), else the first."""
        return range(self.options.repeat if len(self.codes) > 1 else 1)

    def take(self, code: Code, command: Command, check: bool = True) -> Measure:
        """Measure `command` with `code` (raise when it fails, unless not `check`)."""
        name = step_name(command.key, self.place)
        self.say(f"bench: {name}{code.tag} ...")
        m = (measure if check else measure_any)(
            name, [str(a) for a in command.argv],
            self.paths.logs / f"{code.prefix}{command.label}.log",
            cwd=command.cwd or code.root, env={**code.env, **self.env, **command.env})
        failed = f", failed (exit {m.returncode})" if m.returncode else ""
        self.say(f"bench: {name}{code.tag}: {m.seconds:.1f} s, {m.peak_kb / 1024:.0f} MB"
                 f"{failed}")
        self.measured.setdefault((code.name, command.key), []).append(m)
        return m

    def doit(self, code: Code, where: Path, label: str) -> list[object]:
        """`doit` with its record in `where`, under cProfile when profiling."""
        base: list[object] = [sys.executable]
        if self.options.profile:
            base += ["-m", "cProfile", "-o", self.paths.logs / f"{code.prefix}{label}.prof"]
        return [*base, "-m", "doit", "--db-file", where / "doit.db"]

    def chain(self, code: Code, where: Path, label: str) -> list[object]:
        """The whole chain as one command in the workspace `where`."""
        return [*self.doit(code, where, label), "targetfiles", "--sdk", self.paths.sdk,
                "--source", self.paths.source, *workspace(where), "delta", "--config",
                CONFIG_DIR, *workspace(where), "verify", *workspace(where)]

    def later(self, key: str, argv_of: Callable[[Code, Path, str], Sequence[object]],
              folder: str = "trial{}") -> None:
        """Step `key` in each later trial's workspace, with each code in turns."""
        for t in self.later_trials():
            label = key if t == 0 else f"{key}-{t}"
            for code in self.turns(t):
                where = code.folder(self.paths.run) / folder.format(t)
                self.take(code, Command(key, label, argv_of(code, where, label)))
