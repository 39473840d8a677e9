"""A power loss after each step of a package, then a re-run, in time linear in the steps.

The module re-runs a package from its first statement after a power loss. Replaying that for
every step k would take time quadratic in the steps, so the proof follows the run in units
(each top-level statement; each file of a statement that only extracts a folder) and keeps,
for every unit done, what it depends on:

- After each unit of the run, it is run again on the state it left (a trial, undone), with
  every read of the device noted: a unit that changes nothing doing so is *settled*, and the
  items it read (what a folder holds under a name, a file's bytes, a node's owner and mode,
  a mount, the room left, a partition) are its footprint, with their values then.
- As the run goes on, each change of an item is checked against the footprints that hold
  it: a unit is *unsettled* while any item of its footprint differs.
- The re-run after step k (in unit c) starts from the state the cut left. Every settled unit
  before c would change nothing and go as it went (its items hold), so the re-run takes it as
  done and goes on with the next unit it must run: an unsettled one, or one whose footprint
  holds an item the re-run itself changed. A unit so run that changes nothing is settled
  again from what it read (the state is still the cut's). From unit c on, the re-run runs
  every unit, and stops as soon as the device is as a whole run left it after the same unit
  (`Rejoined`): from there it can only go as that run went.

Running a unit instead of taking it as done is always right (it is what the module does);
the footprints only decide what may be skipped. A unit whose footprint could be incomplete
(a rename) is never settled.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from dfota.device.fs import Device, FsNode, Item, item_value, same_value
from dfota.device.updater import (
    Package,
    PowerLoss,
    Rejoined,
    UpdateResult,
    _Abort,
    _Updater,
    apply_package,
)
from dfota.formats.edify_parse import Call, Literal, Node, Or

Key = tuple[object, ...]
# key -> (item, value, set): what a unit read, or set whatever was there (set=True)
Footprint = dict[Key, tuple[Item, object, bool]]
Reads = list[tuple[Item, object, bool]]
Walk = list[tuple[str, FsNode]]
_LOOK_AHEAD = 64  # units checked one by one for a changed item before one is simply run


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


class _Numbering:
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


class _WholeRun(_Numbering):
    """`Units` for a run that goes through every unit: `_unit_done` follows each."""

    def statement(self, run: _Updater, index: int, items: Sequence[Node]) -> int:
        self.begin(index, items)
        return index

    def statement_done(self, run: _Updater, index: int, item: Node) -> None:
        if not self.split:
            self._unit_done(run, lambda again: again.value(item), None)

    def entry(self, run: _Updater, index: int, count: int) -> int:
        if self.split:
            self.entry_unit(index)
        return index

    def entry_done(self, run: _Updater, index: int, outcome: str,
                   redo: Callable[[_Updater], str]) -> None:
        if self.split:
            self._unit_done(run, redo, outcome)

    def walk(self, run: _Updater, compute: Callable[[], Walk]) -> Walk:
        if not self.split:
            return compute()
        self.entry_unit(0)
        nodes = compute()
        self._walked(nodes)
        self._unit_done(run, lambda _again: compute(), nodes)
        return nodes

    def _walked(self, nodes: Walk) -> None:
        """What the current statement's walk found."""

    def _unit_done(self, run: _Updater, redo: Callable[[_Updater], object],
                   outcome: object) -> None:
        """The current unit is done; `redo` runs it again, and `outcome` is what it gave
        (None: a statement, which only must not abort)."""
        raise NotImplementedError


class MarkRecorder(_WholeRun):
    """`Units` for the whole run the re-runs rejoin: records `Marks`."""

    def _unit_done(self, run: _Updater, redo: Callable[[_Updater], object],
                   outcome: object) -> None:
        self.marks.digests.append(None if run.no_space else run.dev.digest())


class _Footprints(_WholeRun):
    """`Units` for the run that is cut: settles each unit as it is done and follows which
    footprints the run's changes unsettle."""

    def __init__(self, marks: Marks, device: Device, package: Package) -> None:
        super().__init__(Marks(first_unit=marks.first_unit))
        self.dev = device
        self.scratch = _Updater(package, device, None)
        self.footprints: list[Footprint | None] = []  # None: never settled
        self.differing: list[set[Key]] = []
        self.unsettled: list[int] = []  # sorted
        self.holders: dict[Key, list[int]] = {}  # item key -> units, sorted
        self.readers: dict[Key, list[int]] = {}  # the holders that read it, sorted
        self.last_setter: dict[Key, int] = {}  # the newest unit that set it
        self.walks: dict[int, Walk] = {}  # by statement: the nodes its walk found
        self.unknown: list[int] = []  # units never settled (what they read is not known)
        self.covering: dict[Key, set[int]] = {}  # units whose difference there is covered
        self.whole_reruns = 0  # re-runs that found a covered difference read: run whole
        self.changes: dict[Key, Item] = {}  # not yet checked
        device.watch = self.heard

    def heard(self, item: Item) -> None:
        self.changes[item[0]] = item

    # --- the run -----------------------------------------------------------------------------

    def _walked(self, nodes: Walk) -> None:
        self.walks[self.index] = nodes

    def _unit_done(self, run: _Updater, redo: Callable[[_Updater], object],
                   outcome: object) -> None:
        self._settle_new(redo, outcome)

    def _settle_new(self, redo: Callable[[_Updater], object], outcome: object = None) -> None:
        """The unit just done, run again on the state it left."""
        unit = len(self.footprints)
        assert unit == self.current
        self.check()
        footprint = self._again(redo, outcome)
        self.footprints.append(footprint)
        self.differing.append(set())
        if footprint is None:
            self.unsettled.append(unit)
            self.unknown.append(unit)
            return
        for key, (item, _, sets) in footprint.items():
            self.holders.setdefault(key, []).append(unit)
            if sets:
                self.last_setter[key] = unit
                self._judge_all(key, item)  # what it sets again may cover earlier units
            else:
                self.readers.setdefault(key, []).append(unit)

    def _again(self, redo: Callable[[_Updater], object], outcome: object) -> Footprint | None:
        """The footprint of `redo` on the device as it is, if it changes nothing and ends as
        `outcome` (None: does not abort)."""
        dev, hook, watch = self.dev, self.dev.hook, self.dev.watch
        reads: Reads = []
        dev.watch, dev.hook = None, self.scratch.on_step
        changed = same = False
        with dev.trial():
            dev.reads = reads
            try:
                got = redo(self.scratch)
                aborted = False
            except _Abort:
                aborted = True
            finally:
                dev.reads = None
            if dev.changed_in_trial():
                changed, after = True, dev.digest()
        if changed:
            same = dev.digest() == after  # a change back to what was there (a link made anew)
        dev.watch, dev.hook = watch, hook
        if aborted or (changed and not same) or (outcome is not None and got != outcome):
            return None
        return _footprint(reads)

    def check(self) -> None:
        """Check the footprints that hold an item the run changed since the last look."""
        changes, self.changes = self.changes, {}
        for key, item in changes.items():
            self._judge_all(key, item)

    def _judge_all(self, key: Key, item: Item) -> None:
        value = item_value(item)
        covering = self.covering.get(key) or ()
        footprints, differing = self.footprints, self.differing
        for unit in self.holders.get(key, ()):
            held = footprints[unit]
            seen = held.get(key) if held is not None else None
            if seen is None:
                continue  # it holds the key no more: nothing to judge
            # what most holders find: the value they saw, and nothing to undo (`_judge`)
            if unit not in covering and key not in differing[unit] \
                    and same_value(seen[0], seen[1], value):
                continue
            self._judge(unit, key, value)

    def _judge(self, unit: int, key: Key, value: object) -> None:
        """Whether `unit` differs at `key`, now `value`: it read something else there, or
        it set something else that no later unit sets back before anything reads it."""
        footprint = self.footprints[unit]
        if footprint is None or key not in footprint:
            return
        item, seen, sets = footprint[key]
        differs = self.differing[unit]
        was = bool(differs)
        covered = False
        if same_value(item, seen, value):
            differs.discard(key)
        elif sets and self._covered(unit, key, item, value):
            differs.discard(key)
            covered = True
        else:
            differs.add(key)
        if covered:
            self.covering.setdefault(key, set()).add(unit)
        elif key in self.covering:
            self.covering[key].discard(unit)
        if was != bool(differs):
            if differs:
                bisect.insort(self.unsettled, unit)
            else:
                _discard(self.unsettled, unit)

    def _covered(self, unit: int, key: Key, item: Item, value: object) -> bool:
        """A later unit sets `key` to what it is now, and nothing between reads it: what
        `unit` would set there, run again, is set back before it counts."""
        setter = self.last_setter.get(key, -1)
        found = self.footprints[setter] if setter > unit else None
        if found is None or key not in found or not found[key][2] \
                or not same_value(item, found[key][1], value):
            return False
        for between in (self.readers.get(key, ()), self.unknown):
            at = bisect.bisect_right(between, unit)
            if at < len(between) and between[at] < setter:
                return False
        return True

    def in_flight(self, key: Key, unit: int) -> bool:
        """Whether a re-run that reaches `unit` has skipped an earlier unit that would have
        set `key` to something a later one sets back (so a read of it there could differ
        from the module's)."""
        covered = self.covering.get(key)
        if not covered:
            return False
        return min(covered) < unit < self.last_setter.get(key, -1)

    def resettle(self, unit: int, footprint: Footprint) -> None:
        """`unit` changes nothing on the state as it is now, reading `footprint`."""
        old = self.footprints[unit]
        for key, (_item, _, sets) in footprint.items():
            if old is None or key not in old:
                bisect.insort(self.holders.setdefault(key, []), unit)
            if not sets:
                readers = self.readers.setdefault(key, [])
                at = bisect.bisect_left(readers, unit)
                if at == len(readers) or readers[at] != unit:
                    readers.insert(at, unit)
        _discard(self.unsettled, unit)
        _discard(self.unknown, unit)
        self.footprints[unit] = footprint
        self.differing[unit] = set()
        for key, (item, _, sets) in footprint.items():
            if not sets:  # a new reader may uncover what an earlier unit sets
                self._judge_all(key, item)


def _discard(ordered: list[int], unit: int) -> None:
    at = bisect.bisect_left(ordered, unit)
    if at < len(ordered) and ordered[at] == unit:
        del ordered[at]


def _footprint(reads: Iterable[tuple[Item, object, bool]]) -> Footprint:
    """The first value of each item; read, if it was read before or after it was set."""
    footprint: Footprint = {}
    for item, value, sets in reads:
        key = item[0]
        if key not in footprint:
            footprint[key] = (item, value, sets)
        elif not sets and footprint[key][2]:
            footprint[key] = (footprint[key][0], footprint[key][1], False)
    return footprint


class _Unsound(Exception):
    """A re-run read what a unit it skipped would have changed: it must run whole."""


class _Rerun(_Numbering):
    """`Units` for a re-run after a cut in unit `cut`: skips what it may."""

    def __init__(self, followed: _Footprints, cut: int, whole: Marks) -> None:
        super().__init__(whole)
        self.f = followed
        self.cut = cut
        self.dev = followed.dev
        self.before: dict[Key, tuple[Item, object]] = {}  # values at the cut
        self.touched: dict[Key, Item] = {}
        self.differs: dict[Key, Item] = {}  # items unlike the cut's state
        self.reads: Reads = []
        self.calm = True  # nothing differed when the current unit began
        self.journal_mark = 0
        self.dev.watch = self.heard

    def heard(self, item: Item) -> None:
        key = item[0]
        if key not in self.before:
            self.before[key] = (item, item_value(item))
        self.touched[key] = item

    def _settle(self) -> None:
        """Which of the items the re-run changed are still unlike the cut's state."""
        for key in self.touched:
            item, value = self.before[key]
            if same_value(item, value, item_value(item)):
                self.differs.pop(key, None)
            else:
                self.differs[key] = item
        self.touched.clear()

    def next_unit(self, unit: int) -> int:
        """The first unit from `unit` on that must run."""
        self._settle()
        best = self.cut
        if unit >= best:
            return unit
        unsettled = self.f.unsettled
        at = bisect.bisect_left(unsettled, unit)
        if at < len(unsettled) and unsettled[at] < best:
            best = unsettled[at]
        for key, item in self.differs.items():
            holders = self.f.holders.get(key, ())
            at = bisect.bisect_left(holders, unit)
            for looked, holder in enumerate(holders[at:at + _LOOK_AHEAD]):
                if holder >= best:
                    break
                footprint = self.f.footprints[holder]
                if footprint is None or key not in footprint:
                    continue
                seen_item, seen, _ = footprint[key]
                if looked == _LOOK_AHEAD - 1 or not same_value(seen_item, seen,
                                                                item_value(item)):
                    best = holder
                    break
        return max(best, unit)

    def _begin_unit(self) -> None:
        self._settle()
        self.calm = not self.differs
        self.journal_mark = self.dev.journal_length()
        self.reads = []
        if self.current < self.cut:
            self.dev.reads = self.reads

    def _ran(self, run: _Updater, index: int, outcome: str = "") -> None:
        self.dev.reads = None
        unit = self.current
        if unit < self.cut:
            if any(not sets and self.f.in_flight(item[0], unit)
                   for item, _, sets in self.reads):
                raise _Unsound
            # run because it was unsettled: if it changed nothing, it is settled again
            if self.calm and outcome == "" and not self.dev.changed_in_trial(
                    since=self.journal_mark):
                self.f.resettle(unit, _footprint(self.reads))
            return
        mark = self.marks.digests[unit] if unit < len(self.marks.digests) else None
        if mark is not None and not run.no_space and self.dev.digest() == mark:
            raise Rejoined(index)

    # --- Units -------------------------------------------------------------------------------

    def statement(self, run: _Updater, index: int, items: Sequence[Node]) -> int:
        first = self.marks.first_unit
        if index < len(first) and first[index] < self.cut:
            # the statement that holds the first unit to run (one of no unit holds none)
            unit = self.next_unit(first[index])
            index = max(index, bisect.bisect_right(first, unit) - 1)
        index = min(index, len(items) - 1)
        self.begin(index, items)
        if not self.split:
            self._begin_unit()
        return index

    def statement_done(self, run: _Updater, index: int, item: Node) -> None:
        if not self.split and not self.unsplit:
            self._ran(run, index)

    def walk(self, run: _Updater, compute: Callable[[], Walk]) -> Walk:
        if not self.split:
            return compute()
        found = self.f.walks.get(self.index)
        if found is not None and self.next_unit(self.base) > self.base:
            return found  # taken as done: the nodes it found then
        self.entry_unit(0)
        self._begin_unit()
        nodes = compute()
        same = nodes == found
        self._ran(run, self.index, "" if same else "another walk")
        if not same:  # the nodes are not the units numbered: the statement runs whole
            self.split, self.unsplit = False, True
        return nodes

    def entry(self, run: _Updater, index: int, count: int) -> int:
        if not self.split:
            return index
        index = min(self.next_unit(self.base + index) - self.base, count)
        if index < count:
            self.entry_unit(index)
            self._begin_unit()
        return index

    def entry_done(self, run: _Updater, index: int, outcome: str,
                   redo: Callable[[_Updater], str]) -> None:
        if self.split:
            self._ran(run, index, outcome)


def for_each_power_loss(package: Package, device: Device, steps: Sequence[int],
                        check: Callable[[int, UpdateResult, Device], None], *,
                        follow: Marks | None = None) -> int:
    """For each of `steps`, in order: cut the power after that step on a copy of `device`,
    run the package again on what is left, as the module does at the next boot, and hand the
    re-run and the device it leaves to `check`. One run on a copy of `device` serves them all:
    at each step the re-run is a trial on that copy, undone before the run goes on. A step the
    run does not reach is tried on the state the run ends in.

    `follow`: the `Marks` of a whole run of the package on `device` that succeeded (see
    `MarkRecorder`): each re-run then skips what it may (see the module's docstring) and stops
    where it rejoins that run (`UpdateResult.rejoined`): from there it would end as that run
    did. Without it, every re-run is run whole, statement by statement. Returns how many
    re-runs ran whole."""
    wanted = set(steps)
    twin = device.copy()
    reached: set[int] = set()
    followed = _Footprints(follow, twin, package) if follow is not None else None

    def rerun(step: int, cut: int) -> None:
        if followed is None or follow is None:  # one is None exactly when the other is
            with twin.trial():
                check(step, apply_package(package, twin), twin)
            return
        followed.check()
        watch = twin.watch
        with twin.trial():
            try:
                result = apply_package(package, twin, units=_Rerun(followed, cut, follow))
            except _Unsound:
                twin.watch, twin.reads = None, None
                twin.undo_trial()
                result = apply_package(package, twin)
                followed.whole_reruns += 1
            finally:
                twin.watch, twin.reads = watch, None
            check(step, result, twin)

    def after_step(step: int) -> None:
        if step in wanted:
            reached.add(step)
            rerun(step, followed.current if followed is not None else 0)

    with contextlib.suppress(PowerLoss):
        apply_package(package, twin, power_loss_at=max(wanted), after_step=after_step,
                      units=followed)
    for step in sorted(wanted - reached):
        rerun(step, len(follow.digests) if follow is not None else 0)
    return followed.whole_reruns if followed is not None else len(wanted)
