"""A run followed unit by unit (see `dfota.device.power_loss`): how units are numbered, and
the marks of a whole run that the re-runs rejoin.

A unit is a top-level statement, or one file of a statement that only extracts a folder, or
the walk and each node of a statement that only sets modes down one tree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dfota.device.interpreter import Updater
from dfota.device.storage import FsNode
from dfota.formats.edify_parse import Call, Literal, Node, Or

Walk = list[tuple[str, FsNode]]


def _split(item: Node) -> bool:
    """Whether a statement's units are its files or nodes: `package_extract_dir("a", "/b")`,
    `set_perm_recursive` of one path or `set_metadata_recursive`, with literal arguments,
    alone or `|| abort(...)`."""
    if isinstance(item, Or) and isinstance(item.right, Call) and item.right.name == "abort":
        item = item.left
    if not isinstance(item, Call) or not all(type(a) is Literal for a in item.args):
        return False
    count = len(item.args)
    return {"package_extract_dir": count == 2, "set_perm_recursive": count == 5,
            "set_metadata_recursive": count >= 3 and count % 2 == 1}.get(item.name, False)


@dataclass
class Marks:
    """A whole run, unit by unit: the first unit of each statement and the device's digest
    after each unit (None where a write was cut short for want of room)."""

    first_unit: list[int] = field(default_factory=list)
    digests: list[object] = field(default_factory=list)


class Numbering:
    """Units numbered in the order a run meets them (every run of one package on one
    source meets them alike, up to where it stops)."""

    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        self.split = False  # the current statement's units are its files or nodes
        self.unsplit = False  # ... but a re-run found another walk: it runs whole
        self.index = 0  # the current statement
        self.base = 0  # its first unit
        self.current = -1

    def begin(self, index: int, items: Sequence[Node]) -> int:
        first = self.marks.first_unit
        if index == len(first):
            first.append(len(self.marks.digests))
        self.index, self.base = index, first[index]
        self.split, self.unsplit = _split(items[index]), False
        self.current = self.base
        return self.base

    def entry_unit(self, index: int) -> int:
        self.current = self.base + index
        return self.current


class WholeRun(Numbering):
    """`Units` for a run that goes through every unit: `_unit_done` follows each."""

    def statement(self, run: Updater, index: int, items: Sequence[Node]) -> int:
        self.begin(index, items)
        return index

    def statement_done(self, run: Updater, index: int, item: Node) -> None:
        if not self.split:
            self._unit_done(run, lambda again: again.value(item), None)

    def entry(self, run: Updater, index: int, count: int) -> int:
        if self.split:
            self.entry_unit(index)
        return index

    def entry_done(self, run: Updater, index: int, outcome: str,
                   redo: Callable[[Updater], str]) -> None:
        if self.split:
            self._unit_done(run, redo, outcome)

    def walk(self, run: Updater, compute: Callable[[], Walk]) -> Walk:
        if not self.split:
            return compute()
        self.entry_unit(0)
        nodes = compute()
        self._walked(nodes)
        self._unit_done(run, lambda _again: compute(), nodes)
        return nodes

    def _walked(self, nodes: Walk) -> None:
        """What the current statement's walk found."""

    def _unit_done(self, run: Updater, redo: Callable[[Updater], object],
                   outcome: object) -> None:
        """The current unit is done; `redo` runs it again, and `outcome` is what it gave
        (None: a statement, which only must not abort)."""
        raise NotImplementedError


class MarkRecorder(WholeRun):
    """`Units` for the whole run the re-runs rejoin: records `Marks`."""

    def _unit_done(self, run: Updater, redo: Callable[[Updater], object],
                   outcome: object) -> None:
        self.marks.digests.append(None if run.no_space else run.dev.digest())

