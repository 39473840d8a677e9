"""The updater's interpreter: a package read once, and a run of its script on a device.

`Updater` holds what one run accumulates (its steps, log, progress and command pipe) and
evaluates the script's nodes; the functions a script calls are given to it as a table, by
name (`dfota.device.updater` gathers them from the modules that define them).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from dfota.device.contents import Content, Spill
from dfota.device.fs import Device
from dfota.device.storage import FsError, FsNode
from dfota.device.values import Abort, Blob, Value
from dfota.device.zip_reader import DeviceZip, ZipEntry
from dfota.formats.edify_parse import (
    And,
    Call,
    Concat,
    Eq,
    If,
    Literal,
    Ne,
    Node,
    Not,
    Or,
    Seq,
)

# what the updater writes to the command pipe as it starts, before the script: the LE build
# looks for its volume configuration twice, and a recovery has neither file
STARTUP_PIPE = b"".join(b"ui_print %s not found\nui_print %s not found\n" % (name, name)
                        for name in (b"/res/recovery_volume_config",
                                     b"/tmp/recovery_volume_detected"))


@dataclass
class Package:
    """A package read and parsed once; `failure` is (updater exit, message) when the updater
    would stop before running anything."""

    path: Path
    zip: DeviceZip | None = None
    script: bytes = b""
    root: Node | None = None
    failure: tuple[int, str] | None = None
    # patch outputs with their sha1, by (source sha1, patch sha1): replays reuse them
    patched: dict[tuple[str, str], tuple[Content, bytes]] = field(default_factory=dict,
                                                                   repr=False)
    # the file entries `package_extract_dir` takes, by zip prefix
    extracted: dict[bytes, tuple[ZipEntry, ...]] = field(default_factory=dict, repr=False)
    spill: Spill = field(default_factory=Spill, repr=False)  # where large outputs are kept

    def close(self) -> None:
        """Let go of the package's file and of the outputs kept."""
        if self.zip is not None:
            self.zip.close()
        self.spill.close()
        self.patched.clear()


# an edify function: (the run, the name it was called by, its arguments unevaluated)
Function = Callable[["Updater", str, Sequence[Node]], Value]


class Units(Protocol):
    """What follows a run unit by unit (`dfota.device.power_loss`): each top-level statement is a
    unit, but a statement that only extracts a folder, whose every file is one, or that only
    sets modes down one tree, whose walk is one and every node one more.

    `statement` and `entry` are told where the run is about to go and say where it goes
    (the same place, or further on: the units between are taken as done); the `_done` calls
    follow each unit, with a way to run it again (`redo`)."""

    def statement(self, run: Updater, index: int, items: Sequence[Node]) -> int: ...

    def statement_done(self, run: Updater, index: int, item: Node) -> None: ...

    def entry(self, run: Updater, index: int, count: int) -> int: ...

    def entry_done(self, run: Updater, index: int, outcome: str,
                   redo: Callable[[Updater], str]) -> None: ...

    def walk(self, run: Updater,
             compute: Callable[[], list[tuple[str, FsNode]]]) -> list[tuple[str, FsNode]]: ...


class Updater:
    """One run of a package's script on `device`. `step_done(n, what)` is told of each
    mutating step as it is done; `units`: see `Units`."""

    def __init__(self, package: Package, device: Device, functions: Mapping[str, Function],
                 units: Units | None = None,
                 step_done: Callable[[int, str], None] | None = None) -> None:
        assert package.zip is not None
        self.step_done = step_done
        self.units = units
        self.package = package
        self.script = package.script
        self.zip = package.zip
        self.dev = device
        self.functions = functions
        self.steps = 0
        self.step_log: list[str] = []
        self.log: list[str] = []
        self.progress: list[float] = []
        self.pipe = bytearray(STARTUP_PIPE)
        self.scope = (0.0, 0.0)  # start and size of the current progress segment
        self.no_space: list[str] = []

    # steps and failures

    def on_step(self, what: str) -> None:
        self.steps += 1
        self.step_log.append(what)
        if self.step_done is not None:
            self.step_done(self.steps, what)

    def say(self, line: str) -> None:
        self.log.append(line)

    def to_pipe(self, line: bytes) -> None:
        self.pipe += line + b"\n"

    def fs_failed(self, exc: FsError, doing: str) -> None:
        if exc.code == "ENOSPC":
            self.no_space.append(exc.path)
        self.say(f"{doing} {exc.path} failed: {exc.code}")

    def set_progress(self, start: float, size: float, fraction: float) -> None:
        self.scope = (start, size)
        self.progress.append(round(100 * (start + size * min(max(fraction, 0.0), 1.0)), 4))

    # evaluation

    def value(self, node: Node) -> Value:
        if type(node) is Literal:
            return node.value
        if type(node) is Call:  # the next most common, without the table
            return self.functions[node.name](self, node.name, node.args)
        evaluate = _EVALUATE.get(type(node))
        if evaluate is None:
            raise TypeError(f"unknown node {node!r}")
        return evaluate(self, node)

    def string(self, node: Node) -> bytes:
        if type(node) is Literal:  # the common case, without the dispatch
            return node.value
        value = self.value(node)
        if isinstance(value, Blob):
            raise Abort("expecting string, got blob")
        return value

    def strings(self, args: Sequence[Node]) -> list[bytes]:
        return [self.string(arg) for arg in args]


def _call(run: Updater, node: Call) -> Value:
    return run.functions[node.name](run, node.name, node.args)


def _seq(run: Updater, node: Seq) -> Value:
    for item in node.items[:-1]:
        run.string(item)
    return run.value(node.items[-1])


def _if(run: Updater, node: If) -> Value:
    if run.string(node.cond):
        return run.value(node.then)
    return b"" if node.orelse is None else run.value(node.orelse)


def _and(run: Updater, node: And) -> Value:
    left = run.string(node.left)
    return run.value(node.right) if left else left


def _or(run: Updater, node: Or) -> Value:
    left = run.string(node.left)
    return left if left else run.value(node.right)


def _not(run: Updater, node: Not) -> Value:
    return b"" if run.string(node.operand) else b"t"


def _eq(run: Updater, node: Eq) -> Value:
    return b"t" if run.string(node.left) == run.string(node.right) else b""


def _ne(run: Updater, node: Ne) -> Value:
    return b"" if run.string(node.left) == run.string(node.right) else b"t"


def _concat(run: Updater, node: Concat) -> Value:
    return run.string(node.left) + run.string(node.right)


# how each kind of node but a literal evaluates
_EVALUATE: dict[type, Callable[[Updater, Any], Value]] = {
    Call: _call, Seq: _seq, If: _if, And: _and, Or: _or, Not: _not, Eq: _eq, Ne: _ne,
    Concat: _concat,
}
