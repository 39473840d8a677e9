"""Trials and the proof's instruments: the base of `dfota.device.fs.Device`.

A trial undoes on leaving everything the device underwent inside it (a re-run tried on the
state a power loss left, without copying the whole tree): each change is recorded first in
the trial's journal. The power-loss proof (`dfota.device.power_loss`) follows a run through
`reads` (what it read, and what it set whatever was there) and `watch` (each change, heard
before it is made). Each mutating call reports itself once through `hook`, once done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from dfota.core.tree import FILE
from dfota.device.contents import Content
from dfota.device.items import Item, changed_items, child_item, item_value, listing_item
from dfota.device.storage import FsNode

_T = TypeVar("_T", bound="Trials")


class Trials:
    """A device's journal of changes to undo, its hook and the proof's instruments."""

    def __init__(self) -> None:
        self.hook: Callable[[str], None] | None = None
        self._journal: list[Callable[[], None]] | None = None
        # what a run reads (and what it sets whatever was there: True) is appended to
        # `reads`, and `watch` hears of each change before it is made
        self.reads: list[tuple[Item, object, bool]] | None = None
        self.watch: Callable[[Item], None] | None = None

    @contextlib.contextmanager
    def trial(self: _T) -> Iterator[_T]:
        """Everything the device undergoes inside is undone on leaving: a re-run tried on the
        state a power loss left, without copying the whole tree. The hook is kept too."""
        outer, hook = self._journal, self.hook
        self._journal = []
        try:
            yield self
        finally:
            journal, self._journal = self._journal, outer
            for undo in reversed(journal):
                undo()
            self.hook = hook

    def _remember(self, obj: object, *attrs: str) -> None:
        """Record `obj`'s `attrs` as they are now, to be restored when a trial ends; `obj` is
        about to change, so a node's digest is forgotten (now and when restored)."""
        node = obj if isinstance(obj, FsNode) else None
        every_child = "children" in attrs  # the whole dict replaced
        if node is not None:
            _forget(node, every_child)
        if self.watch is not None:
            for item in changed_items(obj, attrs):
                self.watch(item)
        if self._journal is not None:
            saved = [(name, getattr(obj, name)) for name in attrs]

            def undo() -> None:
                for name, value in saved:
                    setattr(obj, name, value)
                if node is not None:
                    _forget(node, every_child)

            self._journal.append(undo)

    def _remember_child(self, parent: FsNode, name: str) -> None:
        """Record what `parent` holds under `name` now (or that it holds nothing), as
        `_remember` does."""
        parent.changed_child(name)
        if self.watch is not None:
            self.watch(child_item(parent, name))
            self.watch(listing_item(parent))
        if self._journal is not None:
            children, old = parent.children, parent.children.get(name)

            def undo() -> None:
                if old is None:
                    children.pop(name, None)
                else:
                    children[name] = old
                parent.changed_child(name)

            self._journal.append(undo)

    def journal_length(self) -> int:
        return 0 if self._journal is None else len(self._journal)

    def undo_trial(self) -> None:
        """Undo what the trial under way changed so far; the trial goes on."""
        assert self._journal is not None
        journal, self._journal = self._journal, []
        for undo in reversed(journal):
            undo()

    def changed_in_trial(self, since: int = 0) -> bool:
        """Whether the trial under way changed anything (after its first `since` changes)."""
        return self._journal is not None and len(self._journal) > since

    def _read(self, item: Item) -> None:
        """Note that the run depends on `item` as it is now (when reads are followed)."""
        if self.reads is not None:
            self.reads.append((item, item_value(item), False))

    def _set(self, item: Item, value: object) -> None:
        """Note that the run sets `item` to `value`, whatever it was."""
        if self.reads is not None:
            self.reads.append((item, value, True))

    def _set_data(self, node: FsNode, data: Content, sha1: str | None = None) -> None:
        self._remember(node, "_data", "_stored", "_sha1")
        self._remember(node.fs, "used")
        node.set_data(data, sha1)

    def _release(self, node: FsNode) -> None:
        """Give back the room of a node leaving its filesystem (with all below it)."""
        if node.kind == FILE:
            self._set_data(node, b"")
        for child in node.children.values():
            self._release(child)

    def _done(self, what: str) -> None:
        if self.hook is not None:
            self.hook(what)


def _forget(node: FsNode, every_child: bool) -> None:
    if every_child:
        node.forget_children()
    else:
        node.touch()

