"""No file name can change the updater-script's structure (property-based).

Arbitrary names (any valid UTF-8 without NUL or '/': quotes, backslashes, newlines, edify and
shell syntax, non-ASCII) and arbitrary link targets are given every change kind and written
by the package's script writer (`dfota.package.writer.script_steps` and `render_script`); the script
is parsed back with the device's grammar (`dfota.formats.edify_parse`). It must have exactly the
structure of the same script written for plain placeholder names (the same calls, in the same
order, with the same arguments), and each string must be the placeholder's string with every
placeholder replaced by the real name's bytes: every name round-trips exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dfota.core.tree import DIR, FILE, SYMLINK, Entry
from dfota.formats.edify_parse import DEVICE_FUNCTIONS, Literal, Node, children, parse
from dfota.formats.filelists import ChmodRule
from dfota.package.mode import Part
from dfota.package.plan import Change, Kind, Span
from dfota.package.writer import TargetSystem, Writes, render_script, script_steps

_NAME_CHARS = st.characters(blacklist_categories=["Cs"], blacklist_characters="\0/")
_NASTY = st.sampled_from(list('"\\\n\r\t\x01\x1b\x7f -#;(),$`\'.é日😀'))
NAMES = st.text(alphabet=st.one_of(_NASTY, _NAME_CHARS), min_size=1, max_size=12).filter(
    lambda n: n not in (".", ".."))
TARGETS = st.text(alphabet=st.one_of(_NASTY, st.just("/"), _NAME_CHARS), min_size=1,
                  max_size=16)
KINDS = ("new", "patched", "deleted", "symlink", "empty_dir", "metadata", "dir_removed",
         "file_to_link", "chmod")
OLD, NEW = "a" * 40, "b" * 40


def _change(kind: str, name: str, target: str) -> Change:
    """One change of `kind` at `name`; `target`: a link's target."""
    old_file = Entry(name, FILE, 0o644, 0, 0, 100, OLD)
    new_file = Entry(name, FILE, 0o755, 0, 0, 120, NEW)
    link = Entry(name, SYMLINK, 0o777, 0, 0, 0, "", target)
    made = {
        "new": (Kind.NEW, None, new_file), "chmod": (Kind.NEW, None, new_file),
        "patched": (Kind.PATCHED, old_file, new_file),
        "deleted": (Kind.DELETED, old_file, None),
        "symlink": (Kind.LINK_NEW, None, link),
        "empty_dir": (Kind.NEW_DIR, None, Entry(name, DIR, 0o750)),
        "metadata": (Kind.METADATA, old_file, Entry(name, FILE, 0o600, 1000, 1000, 100, OLD)),
        "dir_removed": (Kind.DIR_REMOVED, Entry(name, DIR, 0o755), None),
        "file_to_link": (Kind.REPLACED, old_file, link),
    }[kind]
    return Change(name, *made)


def _changes(names: Sequence[str], targets: Sequence[str]
             ) -> tuple[list[Change], dict[str, Entry], list[ChmodRule]]:
    """Every change kind, one per name in turn; names sorted as the planner sorts paths."""
    changes, tree, rules = [], {}, []
    for i, name in enumerate(names):
        kind = KINDS[i % len(KINDS)]
        change = _change(kind, name, targets[i % len(targets)])
        if kind == "chmod":
            rules.append(ChmodRule(f"SYSTEM/{name}", False, 0o700, 0, 0, 0o755, i + 1))
        changes.append(change)
        if change.target is not None:
            tree[name] = change.target
    return changes, tree, rules


def script_for(names: Sequence[str], targets: Sequence[str]) -> bytes:
    changes, tree, rules = _changes(names, targets)
    script = script_steps(Span("SRC@20220101T0000", "TGT@20220201T0000", frozenset(Part)),
                          Writes(changes, boot=None, minor=[]),
                          TargetSystem(tree, rules, ("ubifs", "UBI", "system")), ["c" * 40])
    return render_script(script)


def shape(node: Node) -> object:
    """The tree without its strings: what a name must never change."""
    if isinstance(node, Literal):
        return "string"
    return (type(node).__name__, getattr(node, "name", None),
            tuple(shape(child) for child in children(node)))


def strings(node: Node) -> Iterator[bytes]:
    if isinstance(node, Literal):
        yield node.value
    for child in children(node):
        yield from strings(child)


@given(names=st.lists(NAMES, min_size=1, max_size=9, unique=True),
       targets=st.lists(TARGETS, min_size=1, max_size=3, unique=True))
@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@pytest.mark.slow  # 100 examples, each script written and parsed twice: seconds
def test_any_name_round_trips_and_never_changes_the_script_structure(
        names: list[str], targets: list[str]) -> None:
    # one order-preserving placeholder per distinct string, so every sort agrees
    pool = sorted(set(names) | set(targets))
    token = {text: f"Q{i:04d}Z" for i, text in enumerate(pool)}
    names = sorted(names)
    hostile = parse(script_for(names, targets), DEVICE_FUNCTIONS)
    plain = parse(script_for([token[n] for n in names], [token[t] for t in targets]),
                  DEVICE_FUNCTIONS)

    assert shape(hostile) == shape(plain)
    expected = []
    for value in strings(plain):
        for text, placeholder in token.items():
            value = value.replace(placeholder.encode(), text.encode("utf-8"))
        expected.append(value)
    assert list(strings(hostile)) == expected
    found = set(strings(hostile))
    for name in names:
        assert f"/system/{name}".encode() in found
