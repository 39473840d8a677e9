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
(a rename) is never settled. Units are numbered in `dfota.device.units` and footprints kept
in `dfota.device.footprints`; here, the re-runs.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Sequence

from dfota.device.footprints import Footprints, Key, Reads, footprint_of
from dfota.device.fs import Device
from dfota.device.interpreter import Package, Updater
from dfota.device.items import Item, item_value, same_value
from dfota.device.units import Marks, Numbering, Walk
from dfota.device.updater import PowerLoss, Rejoined, UpdateResult, apply_package
from dfota.formats.edify_parse import Node

_LOOK_AHEAD = 64  # units checked one by one for a changed item before one is simply run


class _Unsound(Exception):
    """A re-run read what a unit it skipped would have changed: it must run whole."""


class _Rerun(Numbering):
    """`Units` for a re-run after a cut in unit `cut`: skips what it may."""

    def __init__(self, followed: Footprints, cut: int, whole: Marks) -> None:
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

    def _ran(self, run: Updater, index: int, outcome: str = "") -> None:
        self.dev.reads = None
        unit = self.current
        if unit < self.cut:
            if any(not sets and self.f.in_flight(item[0], unit)
                   for item, _, sets in self.reads):
                raise _Unsound
            # run because it was unsettled: if it changed nothing, it is settled again
            if self.calm and outcome == "" and not self.dev.changed_in_trial(
                    since=self.journal_mark):
                self.f.resettle(unit, footprint_of(self.reads))
            return
        mark = self.marks.digests[unit] if unit < len(self.marks.digests) else None
        if mark is not None and not run.no_space and self.dev.digest() == mark:
            raise Rejoined(index)

    # --- Units -------------------------------------------------------------------------------

    def statement(self, run: Updater, index: int, items: Sequence[Node]) -> int:
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

    def statement_done(self, run: Updater, index: int, item: Node) -> None:
        if not self.split and not self.unsplit:
            self._ran(run, index)

    def walk(self, run: Updater, compute: Callable[[], Walk]) -> Walk:
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

    def entry(self, run: Updater, index: int, count: int) -> int:
        if not self.split:
            return index
        index = min(self.next_unit(self.base + index) - self.base, count)
        if index < count:
            self.entry_unit(index)
            self._begin_unit()
        return index

    def entry_done(self, run: Updater, index: int, outcome: str,
                   redo: Callable[[Updater], str]) -> None:
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
    followed = Footprints(follow, twin, package) if follow is not None else None

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
