"""The edify functions on files and folders: rename, delete, symlink, and the owner and mode
of one path or a whole tree (`set_perm`, `set_metadata` and their recursive forms).

A recursive statement's walk and each node it visits are units of their own when a run is
followed unit by unit (`dfota.device.interpreter.Units`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from dfota.core.tree import DIR, SYMLINK
from dfota.device.interpreter import Function, Updater
from dfota.device.storage import FsError, FsNode
from dfota.device.values import Abort, Value, argc, as_text, chown_id, scanf_int, strtoul_whole
from dfota.formats.edify_parse import Node


def _make_parents(run: Updater, path: str) -> bool:
    """mkdir 0700 of every missing ancestor of `path` (rename and symlink do this)."""
    for at in range(1, len(path)):
        if path[at] != "/":
            continue
        try:
            run.dev.mkdir(path[:at], 0o700)
        except FsError as exc:
            if exc.code != "EEXIST":
                run.fs_failed(exc, "mkdir")
                return False
    return True


def fn_rename(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 2)
    src_b, dst_b = run.strings(args)
    if not src_b or not dst_b:
        raise Abort(f"{'src' if not src_b else 'dst'}_name argument to {name}() "
                    "can't be empty")
    src, dst = as_text(src_b), as_text(dst_b)
    if not _make_parents(run, dst):
        raise Abort(f"Creating parent of {dst} failed")
    if run.dev.exists(dst) and not run.dev.exists(src):
        return dst_b  # already moved
    try:
        run.dev.rename(src, dst)
    except FsError as exc:
        raise Abort(f"Rename of {src} to {dst} failed, error {exc.code}") from None
    return dst_b


def fn_delete(run: Updater, name: str, args: Sequence[Node]) -> Value:
    done = 0
    for path in map(as_text, run.strings(args)):
        try:
            if name == "delete_recursive":
                _unlink_tree(run, path)
            else:
                run.dev.unlink(path)
            done += 1
        except FsError as exc:
            run.fs_failed(exc, name)
    return str(done).encode()


def _unlink_tree(run: Updater, path: str) -> None:
    node = run.dev.lstat(path)
    if node.kind != DIR:
        run.dev.unlink(path)
        return
    for child in run.dev.names(node):
        _unlink_tree(run, f"{path}/{child}")
    run.dev.rmdir(path)


def fn_symlink(run: Updater, name: str, args: Sequence[Node]) -> Value:
    if not args:
        raise Abort(f"{name}() expects 1+ args, got 0")
    target = as_text(run.string(args[0]))
    bad = 0
    for link in map(as_text, run.strings(args[1:])):
        try:
            run.dev.unlink(link)
        except FsError as exc:
            if exc.code != "ENOENT":
                run.fs_failed(exc, "remove")
                bad += 1
        if not _make_parents(run, link):
            bad += 1
        try:
            run.dev.symlink(target, link)
        except FsError as exc:
            run.fs_failed(exc, f"symlink {target} as")
            bad += 1
    if bad:
        raise Abort(f"{name}: some symlinks failed")
    return b""


class _Perms(NamedTuple):  # a tuple: made for every set_perm a script calls
    """What set_perm sets: the owner (None: a field left as it is) and the mode of folders
    and of files (the same for `set_perm`)."""

    uid: int | None
    gid: int | None
    dmode: int
    fmode: int


def fn_set_perm(run: Updater, name: str, args: Sequence[Node]) -> Value:
    recursive = name == "set_perm_recursive"
    labels = ("uid", "gid", "dirmode", "filemode") if recursive else ("uid", "gid", "mode")
    if len(args) < len(labels) + 1:
        raise Abort(f"{name}() expects {len(labels) + 1}+ args, got {len(args)}")
    values = run.strings(args)
    perms = _perms(name, labels, values)
    bad = 0
    for path in map(as_text, values[len(labels):]):
        if recursive:
            _perm_tree(run, path, perms)
            continue
        try:
            node = run.dev.lstat(path)
        except FsError as exc:
            run.fs_failed(exc, name)
            bad += 1
            continue
        if node.kind != SYMLINK:
            run.dev.set_owner_mode(node, perms.uid, perms.gid, perms.dmode, path)
    if bad:
        raise Abort(f"{name}: some changes failed")
    return b""


def _perms(name: str, labels: Sequence[str], values: Sequence[bytes]) -> _Perms:
    """The numbers `set_perm` (`labels`) got first, each the whole of its text."""
    numbers = []
    for label, text in zip(labels, values, strict=False):
        number = strtoul_whole(text)
        if number is None:
            raise Abort(f'{name}: "{as_text(text)}" not a valid {label}')
        numbers.append(number)
    return _Perms(chown_id(numbers[0]), chown_id(numbers[1]), numbers[2], numbers[-1])


def _perm_tree(run: Updater, path: str, perms: _Perms) -> None:
    """set_perm_recursive on one path."""
    def act(where: str, node: FsNode) -> None:
        if node.kind != SYMLINK:
            run.dev.set_owner_mode(node, perms.uid, perms.gid,
                                   perms.dmode if node.kind == DIR else perms.fmode, where)

    _each_node(run, lambda: _preorder(run, path), act)


def _preorder(run: Updater, path: str) -> list[tuple[str, FsNode]]:
    """What set_perm_recursive visits: each node before what it holds, a link not
    followed, up to the first that cannot be looked up (there it stops, silently)."""
    out: list[tuple[str, FsNode]] = []

    def visit(where: str) -> bool:
        try:
            node = run.dev.lstat(where)
        except FsError:
            return False
        out.append((where, node))
        if node.kind == DIR:
            for child in run.dev.names(node):
                if not visit(f"{where}/{child}"):
                    return False
        return True

    visit(path)
    return out


def _each_node(run: Updater, walk: Callable[[], list[tuple[str, FsNode]]],
               act: Callable[[str, FsNode], None]) -> None:
    """`act` on each node `walk` finds, in its order. With units, the walk is the
    statement's first unit and each node one more."""
    units = run.units
    nodes = walk() if units is None else units.walk(run, walk)
    index = 0
    while index < len(nodes):
        if units is not None:
            index = units.entry(run, index + 1, len(nodes) + 1) - 1
            if index >= len(nodes):
                break
        where, node = nodes[index]
        act(where, node)
        if units is not None:
            def redo(_run: Updater, w: str = where, n: FsNode = node) -> str:
                act(w, n)
                return ""

            units.entry_done(run, index + 1, "", redo)
        index += 1


def fn_set_metadata(run: Updater, name: str, args: Sequence[Node]) -> Value:
    if len(args) % 2 != 1:
        raise Abort(f"{name}() expects an odd number of arguments, got {len(args)}")
    values = run.strings(args)
    path = as_text(values[0])
    try:
        top = run.dev.lstat(path)
    except FsError as exc:
        run.fs_failed(exc, f"{name}: lstat of")
        return b""
    act = _metadata_setter(run, _metadata_wanted(run, values[1:]))
    if name == "set_metadata_recursive":
        # the walk looks the top up again: so that what it found is in its footprint
        _each_node(run, lambda: _depth_first(run, path, run.dev.lstat(path)), act)
    else:
        act(path, top)
    return b""


def _metadata_wanted(run: Updater, pairs: Sequence[bytes]) -> dict[str, int | None]:
    """What set_metadata sets, from its (key, value) arguments: the keys it knows whose value
    reads as a number; others are said and left out."""
    wanted: dict[str, int | None] = {}
    for key_b, text in zip(pairs[0::2], pairs[1::2], strict=True):
        key = as_text(key_b)
        if key in ("uid", "gid", "mode", "dmode", "fmode", "capabilities"):
            number = scanf_int(text, 10 if key in ("uid", "gid") else 0)
            if number is None:
                run.say(f'ParsePermArgs: invalid {key} "{as_text(text)}"')
            else:
                wanted[key] = chown_id(number) if key in ("uid", "gid") else number
        elif key != "selabel":
            run.say(f'ParsedPermArgs: unknown key "{key}", ignoring')
    return wanted


def _metadata_setter(run: Updater, wanted: dict[str, int | None]) -> Callable[[str, FsNode], None]:
    """What set_metadata does to one node (a link is left as it is)."""
    def act(where: str, node: FsNode) -> None:
        if node.kind == SYMLINK:
            return
        mode = wanted.get("mode")
        mode = wanted.get("dmode", mode) if node.kind == DIR else wanted.get("fmode", mode)
        if mode is not None or "uid" in wanted or "gid" in wanted:
            run.dev.set_owner_mode(node, wanted.get("uid"), wanted.get("gid"), mode, where)

    return act


def _depth_first(run: Updater, path: str, node: FsNode) -> list[tuple[str, FsNode]]:
    """nftw(FTW_PHYS | FTW_DEPTH): what is in a directory comes before it."""
    out: list[tuple[str, FsNode]] = []
    if node.kind == DIR:
        for child in run.dev.names(node):
            child_path = f"{path}/{child}"
            out += _depth_first(run, child_path, run.dev.lstat(child_path))
    out.append((path, node))
    return out


FUNCTIONS: dict[str, Function] = {
    "rename": fn_rename, "delete": fn_delete, "delete_recursive": fn_delete,
    "symlink": fn_symlink, "set_perm": fn_set_perm, "set_perm_recursive": fn_set_perm,
    "set_metadata": fn_set_metadata, "set_metadata_recursive": fn_set_metadata,
}
