"""Footprints: what each unit of the run that is cut depends on, and which units its changes
unsettle (see `dfota.device.power_loss`).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable

from dfota.device.fs import Device
from dfota.device.interpreter import Package, Updater
from dfota.device.items import Item, item_value, same_value
from dfota.device.units import Marks, Walk, WholeRun
from dfota.device.updater import FUNCTIONS
from dfota.device.values import Abort

Key = tuple[object, ...]
# key -> (item, value, set): what a unit read, or set whatever was there (set=True)
Footprint = dict[Key, tuple[Item, object, bool]]
Reads = list[tuple[Item, object, bool]]


class Footprints(WholeRun):
    """`Units` for the run that is cut: settles each unit as it is done and follows which
    footprints the run's changes unsettle."""

    def __init__(self, marks: Marks, device: Device, package: Package) -> None:
        super().__init__(Marks(first_unit=marks.first_unit))
        self.dev = device
        self.scratch = Updater(package, device, FUNCTIONS)
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

    def _unit_done(self, run: Updater, redo: Callable[[Updater], object],
                   outcome: object) -> None:
        self._settle_new(redo, outcome)

    def _settle_new(self, redo: Callable[[Updater], object], outcome: object = None) -> None:
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

    def _again(self, redo: Callable[[Updater], object], outcome: object) -> Footprint | None:
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
            except Abort:
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
        return footprint_of(reads)

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


def footprint_of(reads: Iterable[tuple[Item, object, bool]]) -> Footprint:
    """The first value of each item; read, if it was read before or after it was set."""
    footprint: Footprint = {}
    for item, value, sets in reads:
        key = item[0]
        if key not in footprint:
            footprint[key] = (item, value, sets)
        elif not sets and footprint[key][2]:
            footprint[key] = (footprint[key][0], footprint[key][1], False)
    return footprint
