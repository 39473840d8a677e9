"""The edify functions that write nothing: control and strings, numbers, properties and files
read by the script, the progress bar and messages, and mounts.

Each takes (the run, the name it was called by, its arguments unevaluated), as its C
counterpart in the module's updater does, messages and all (docs `device-updater.md`).
"""

from __future__ import annotations

from collections.abc import Sequence

from dfota.core.tree import FILE
from dfota.device.applypatch import load
from dfota.device.contents import sha1_of
from dfota.device.interpreter import Function, Updater
from dfota.device.storage import FsError
from dfota.device.values import (
    SPACE,
    Abort,
    Blob,
    Value,
    argc,
    as_text,
    c_number,
    parse_sha1,
    strtod,
)
from dfota.formats.edify_parse import Node, calls, source


def _assert_failed(run: Updater, arg: Node) -> Abort:
    """The abort of a failed `assert(arg)`, telling which check failed in it, if one did."""
    names = {call.name for call in calls(arg)}
    check = next((name for name in ("apply_patch_check", "apply_patch_space") if name in names),
                 None)
    return Abort("assert failed: " + as_text(source(run.script, arg)), check)


def fn_abort(run: Updater, name: str, args: Sequence[Node]) -> Value:
    raise Abort(as_text(run.string(args[0])) if args else "called abort()")


def fn_assert(run: Updater, name: str, args: Sequence[Node]) -> Value:
    for arg in args:
        if not run.string(arg):
            raise _assert_failed(run, arg)
    return b""


def fn_ifelse(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 2, 3)
    if run.string(args[0]):
        return run.value(args[1])
    return run.value(args[2]) if len(args) == 3 else b""


def fn_concat(run: Updater, name: str, args: Sequence[Node]) -> Value:
    return b"".join(run.strings(args))


def fn_stdout(run: Updater, name: str, args: Sequence[Node]) -> Value:
    for text in run.strings(args):
        run.say("stdout: " + as_text(text))
    return b""


def fn_sleep(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 1)
    return run.string(args[0])  # the host does not wait


def fn_is_substring(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 2)
    needle, haystack = run.strings(args)
    return b"t" if needle in haystack else b""


def fn_less_than_int(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 2)
    left, right = run.strings(args)
    return _less_than(run, left, right)


def fn_greater_than_int(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 2)
    left, right = run.strings(args)
    return _less_than(run, right, left)


def _less_than(run: Updater, left: bytes, right: bytes) -> bytes:
    numbers = []
    for text in (left, right):
        value, end = c_number(text, 10)
        if not text or end != len(text):
            run.say(f"[{as_text(text)}] is not an int")
            return b""
        numbers.append(value)
    return b"t" if numbers[0] < numbers[1] else b""


def fn_getprop(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 1)
    return run.dev.properties.get(as_text(run.string(args[0])), "").encode(
        "utf-8", "surrogateescape")


def fn_file_getprop(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 2)
    filename, key = run.strings(args)
    path = as_text(filename)
    try:
        node = run.dev.stat(path)
    except FsError as exc:
        raise Abort(f'{name}: failed to stat "{path}": {exc.code}') from None
    if node.kind != FILE:
        raise Abort(f"{name}: failed to read {path}")
    if node.size > 65536:
        raise Abort(f"{path} too large for {name} (max 65536)")
    data = run.dev.content(node)
    for raw in data.split(b"\0", 1)[0].split(b"\n"):
        line = raw.lstrip(SPACE)
        if not line or line.startswith(b"#") or b"=" not in line:
            continue
        found, _, value = line.partition(b"=")
        if found.rstrip(SPACE) == key:
            return value.strip(SPACE)
    return b""


def fn_read_file(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 1)
    loaded = load(run, as_text(run.string(args[0])))
    return Blob(None if loaded is None else loaded.data)


def fn_sha1_check(run: Updater, name: str, args: Sequence[Node]) -> Value:
    if not args:
        raise Abort(f"{name}() expects at least 1 arg")
    values = [run.value(arg) for arg in args]
    first = values[0]
    data = first.data if isinstance(first, Blob) else first
    if data is None:
        return b""
    digest = bytes.fromhex(sha1_of(data))
    if len(values) == 1:
        return digest.hex().encode()
    for value in values[1:]:
        if isinstance(value, Blob) or parse_sha1(value) is None:
            run.say(f"{name}(): skipping an argument that is not a sha1")
        elif parse_sha1(value) == digest:
            return value
    return b""


def fn_ui_print(run: Updater, name: str, args: Sequence[Node]) -> Value:
    text = b"".join(run.strings(args)) + b"\n"
    for line in text.split(b"\n"):
        if line:
            run.say("ui_print " + as_text(line))
            run.to_pipe(b"ui_print " + line)
            run.to_pipe(b"ui_print")
    return text


def fn_show_progress(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 2)
    fraction, seconds = run.strings(args)
    start, size = run.scope
    run.set_progress(start + size, strtod(fraction), 0.0)
    value, end = c_number(seconds, 10)  # seconds not wholly a number: 0
    run.to_pipe(b"progress %f %d" % (strtod(fraction), value if end == len(seconds)
                                     else 0))
    return fraction


def fn_set_progress(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 1)
    fraction = run.string(args[0])
    run.set_progress(*run.scope, strtod(fraction))
    run.to_pipe(b"set_progress %f" % strtod(fraction))
    return fraction


def fn_mount(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 4, 5)
    values = run.strings(args)
    for label, value in zip(("fs_type", "partition_type", "location", "mount_point"),
                            values, strict=False):
        if not value:
            raise Abort(f"{label} argument to {name}() can't be empty")
    point = values[3]
    if run.dev.mount(as_text(point)):
        return point
    run.say(f"{name}: failed to mount {as_text(values[2])} at {as_text(point)}")
    return b""


def fn_is_mounted(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 1)
    point = run.string(args[0])
    if not point:
        raise Abort(f"mount_point argument to {name}() can't be empty")
    return point if run.dev.is_mounted(as_text(point)) else b""


def fn_unmount(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 1)
    point = run.string(args[0])
    if not point:
        raise Abort(f"mount_point argument to {name}() can't be empty")
    if run.dev.unmount(as_text(point)):
        return point
    run.say(f"unmount of {as_text(point)} failed; no such volume")
    return b""


def fn_format(run: Updater, name: str, args: Sequence[Node]) -> Value:
    raise Abort(f"{name}() is not supported by the host updater")


def fn_run_program(run: Updater, name: str, args: Sequence[Node]) -> Value:
    raise Abort(f"{name}() is not supported by the host updater")


FUNCTIONS: dict[str, Function] = {
    "abort": fn_abort, "assert": fn_assert, "ifelse": fn_ifelse, "concat": fn_concat,
    "stdout": fn_stdout, "sleep": fn_sleep, "is_substring": fn_is_substring,
    "less_than_int": fn_less_than_int, "greater_than_int": fn_greater_than_int,
    "getprop": fn_getprop, "file_getprop": fn_file_getprop, "read_file": fn_read_file,
    "sha1_check": fn_sha1_check, "ui_print": fn_ui_print, "show_progress": fn_show_progress,
    "set_progress": fn_set_progress, "mount": fn_mount, "is_mounted": fn_is_mounted,
    "unmount": fn_unmount, "format": fn_format, "run_program": fn_run_program,
}
