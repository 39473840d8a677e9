"""The host updater: runs an update.zip on a fake module the way the module's recovery does.

Every rule comes from the device (docs `device-updater.md`): its zip reader, its edify
functions as they really behave, and the result codes the module reports (table 3 of the
application note). The fake module is `dfota.device.fs.Device`.

Power loss: every mutating step (a file written, renamed or deleted, a directory made or
removed, a symlink, a permission change on one path, a raw partition write) is counted; with
`power_loss_at=N` the run stops with `PowerLoss` right after the Nth. The module recovers by
running the same package again from the start on what is left (`resume_after_power_loss`;
`for_each_power_loss` does it for many steps during one run, each re-run a `Device.trial`).

Not modelled: IMGDIFF2 patches (applying one fails the way a corrupt patch does);
`run_program` and `format` (they abort); a write torn by the power loss (every step is whole).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import bsdiff4

from dfota.core.errors import DfotaError, bad_zip_name
from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.device.fs import Device
from dfota.device.storage import FsError, FsNode, Loaded
from dfota.device.zip_reader import DeviceZip, ZipEntry, ZipFormatError
from dfota.formats.edify_parse import (
    DEVICE_FUNCTIONS,
    And,
    Call,
    Concat,
    EdifySyntaxError,
    Eq,
    If,
    Literal,
    Ne,
    Node,
    Not,
    Or,
    Seq,
    calls,
    parse,
    source,
)

SCRIPT_NAME = "META-INF/com/google/android/updater-script"
VERSION_NAME = "quectel-project-version"
DEVICE_VERSION = "etc/quectel-project-version"  # in /system, which is `/` when running
SAVED_FILE = "/cache/saved.file"

OK = 0
BAD_PACKAGE = 504
VERSION_MISMATCH = 505
UPDATER_DIED = 502
CHECK_FAILED = 510
NO_SPACE = 511

# what the updater writes to the command pipe as it starts, before the script: the LE build
# looks for its volume configuration twice, and a recovery has neither file
STARTUP_PIPE = b"".join(b"ui_print %s not found\nui_print %s not found\n" % (name, name)
                        for name in (b"/res/recovery_volume_config",
                                     b"/tmp/recovery_volume_detected"))

_NO_ERROR = -1  # the updater's "no error code" (kNoError): never logged
_PATCH_MIN_FREE = 256 << 10
_MAX_PATCH_OUTPUT = 1 << 31
_SPACE = b" \t\n\v\f\r"
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


class PowerLoss(Exception):
    """The power went off right after mutating step `step` (`what` says which)."""

    def __init__(self, step: int, what: str) -> None:
        self.step = step
        self.what = what
        super().__init__(f"power lost after step {step}: {what}")


@dataclass(frozen=True)
class UpdateResult:
    """`code`: the module's result (0, 502, 504, 505, 510, 511 or an `E<num>` of the script);
    `updater_exit`: the updater's exit status (-1: it never ran); `progress`: percentages as
    the module reports them; `steps`: mutating steps done; `log`: what the updater printed."""

    code: int
    updater_exit: int
    message: str
    progress: tuple[float, ...] = ()
    steps: int = 0
    log: tuple[str, ...] = ()
    step_log: tuple[str, ...] = ()  # what each mutating step did ("write ...", "chmod ...")
    # the bytes the updater wrote to recovery's command pipe (`ui_print`, `progress`, ...)
    pipe: bytes = b""
    # a run that followed an earlier one: the top-level statement after which the device was
    # as that run left it there (the rest would go as it went, so it was not run)
    rejoined: int | None = None


# --- the package ----------------------------------------------------------------------------


@dataclass
class Package:
    """A package read and parsed once; `failure` is (updater exit, message) when the updater
    would stop before running anything."""

    path: Path
    zip: DeviceZip | None = None
    script: bytes = b""
    root: Node | None = None
    failure: tuple[int, str] | None = None
    # (source sha1, patch sha1) -> output: replays apply the same patches again and again
    # patch outputs with their sha1, by (source sha1, patch sha1): replays reuse them
    patched: dict[tuple[str, str], tuple[bytes, bytes]] = field(default_factory=dict,
                                                                 repr=False)
    # the file entries `package_extract_dir` takes, by zip prefix
    extracted: dict[bytes, tuple[ZipEntry, ...]] = field(default_factory=dict, repr=False)


def load_package(path: Path) -> Package:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise DfotaError("file not found", path) from exc
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    try:
        archive = DeviceZip(data)
    except ZipFormatError as exc:
        return Package(path, failure=(3, f"not a usable zip: {exc}"))
    # the device takes a name's bytes as they are; the host reads them as UTF-8, as every
    # reader of the project does, and refuses other bytes
    for found in archive.entries:
        if not found.name.isascii():
            try:
                found.name.decode("utf-8")
            except UnicodeDecodeError:
                raise bad_zip_name(found.name, path) from None
    entry = archive.find(SCRIPT_NAME.encode())
    if entry is None:
        return Package(path, archive, failure=(4, f"no {SCRIPT_NAME} in the package"))
    script, ok = archive.read(entry)
    if not ok:
        return Package(path, archive, failure=(5, f"cannot read {SCRIPT_NAME}"))
    try:
        root = parse(script, DEVICE_FUNCTIONS)
    except EdifySyntaxError as exc:
        return Package(path, archive, script, failure=(6, str(exc)))
    return Package(path, archive, script, root)


# --- values and the C number readers the device uses -----------------------------------


@dataclass(frozen=True)
class Blob:
    """A binary value (a file or entry read whole); None when the read failed."""

    data: bytes | None


Value = bytes | Blob


class _Abort(Exception):
    def __init__(self, message: str, cause: int | None = None) -> None:
        self.message = message
        self.cause = cause
        super().__init__(message)


@functools.lru_cache(maxsize=4096)  # scripts pass the same few numbers again and again
def _c_number(text: bytes, base: int) -> tuple[int, int]:
    """(value, end) as strtol/strtoul read `text`; end 0 when no digit was read."""
    i, size = 0, len(text)
    while i < size and text[i] in _SPACE:
        i += 1
    negative = False
    if i < size and text[i] in b"+-":
        negative = text[i] == 0x2D
        i += 1
    if (base in (0, 16) and text[i : i + 2] in (b"0x", b"0X") and i + 2 < size
            and text[i + 2] in _HEXDIGITS):
        base, i = 16, i + 2
    elif base == 0:
        base = 8 if text[i : i + 1] == b"0" else 10
    start, value = i, 0
    while i < size:
        digit = int(chr(text[i]), 36) if chr(text[i]).isalnum() and text[i] < 0x80 else 99
        if digit >= base:
            break
        value, i = value * base + digit, i + 1
    if i == start:
        return 0, 0
    return (-value if negative else value), i


def _strtoul_whole(text: bytes) -> int | None:
    """strtoul(text, &end, 0) that must use the whole non-empty text, stored in a C int."""
    value, end = _c_number(text, 0)
    if not text or end != len(text):
        return None
    value = min(value, (1 << 64) - 1) if value >= 0 else value % (1 << 64)
    return value & 0xFFFFFFFF


def _strtol10(text: bytes) -> tuple[int, bool]:
    """strtol(text, &end, 10): (value, whether any digit was read)."""
    value, end = _c_number(text, 10)
    return max(min(value, (1 << 63) - 1), -(1 << 63)), end > 0


def _scanf_int(text: bytes, base: int) -> int | None:
    value, end = _c_number(text, base)
    return value if end else None


def _strtod(text: bytes) -> float:
    found = re.match(rb"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text)
    return float(found.group(0)) if found else 0.0


@functools.lru_cache(maxsize=4096)  # the same sums are parsed at every re-run
def _parse_sha1(text: bytes) -> bytes | None:
    if len(text) != 40 or any(c not in _HEXDIGITS for c in text):
        return None
    return bytes.fromhex(text.decode())


def _owner(value: int) -> int | None:
    """A uid/gid as chown takes it: (uid_t)-1 leaves the field alone."""
    value &= 0xFFFFFFFF
    return None if value == 0xFFFFFFFF else value


def _text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")


def _error_code(message: str) -> int | None:
    """The code an abort message reports: a line `E<num>: ...` (the last one counts)."""
    code = None
    for line in message.split("\n"):
        found = re.match(r"E[ \t]*([+-]?\d+)", line)
        if found:
            code = int(found.group(1))
    return code


# --- the interpreter -------------------------------------------------------------------------


Function = Callable[[str, Sequence[Node]], Value]


class _Updater:
    def __init__(self, package: Package, device: Device, power_loss_at: int | None,
                 after_step: Callable[[int], None] | None = None,
                 units: Units | None = None) -> None:
        assert package.zip is not None
        self.after_step = after_step
        self.units = units
        self.package = package
        self.script = package.script
        self.zip = package.zip
        self.dev = device
        self.power_loss_at = power_loss_at
        self.steps = 0
        self.step_log: list[str] = []
        self.log: list[str] = []
        self.progress: list[float] = []
        self.pipe = bytearray(STARTUP_PIPE)
        self.scope = (0.0, 0.0)  # start and size of the current progress segment
        self.no_space: list[str] = []
        self.functions: dict[str, Function] = {
            name: getattr(self, "fn_" + name) for name in DEVICE_FUNCTIONS
        }

    # steps and failures

    def on_step(self, what: str) -> None:
        self.steps += 1
        self.step_log.append(what)
        if self.after_step is not None:
            self.after_step(self.steps)
        if self.steps == self.power_loss_at:
            raise PowerLoss(self.steps, what)

    def say(self, line: str) -> None:
        self.log.append(line)

    def to_pipe(self, line: bytes) -> None:
        self.pipe += line + b"\n"

    def fs_failed(self, exc: FsError, doing: str) -> None:
        if exc.code == "ENOSPC":
            self.no_space.append(exc.path)
        self.say(f"{doing} {exc.path} failed: {exc.code}")

    # evaluation

    def value(self, node: Node) -> Value:  # noqa: C901
        if type(node) is Literal:
            return node.value
        if isinstance(node, Call):
            return self.functions[node.name](node.name, node.args)
        if isinstance(node, Seq):
            for item in node.items[:-1]:
                self.string(item)
            return self.value(node.items[-1])
        if isinstance(node, If):
            if self.string(node.cond):
                return self.value(node.then)
            return b"" if node.orelse is None else self.value(node.orelse)
        if isinstance(node, And):
            left = self.string(node.left)
            return self.value(node.right) if left else left
        if isinstance(node, Or):
            left = self.string(node.left)
            return left if left else self.value(node.right)
        if isinstance(node, Not):
            return b"" if self.string(node.operand) else b"t"
        if isinstance(node, Eq | Ne):
            same = self.string(node.left) == self.string(node.right)
            return b"t" if same == isinstance(node, Eq) else b""
        if isinstance(node, Concat):
            return self.string(node.left) + self.string(node.right)
        raise TypeError(f"unknown node {node!r}")

    def string(self, node: Node) -> bytes:
        if type(node) is Literal:  # the common case, without the dispatch
            return node.value
        value = self.value(node)
        if isinstance(value, Blob):
            raise _Abort("expecting string, got blob")
        return value

    def strings(self, args: Sequence[Node]) -> list[bytes]:
        return [self.string(arg) for arg in args]

    def assert_failed(self, arg: Node) -> _Abort:
        names = {call.name for call in calls(arg)}
        cause = (CHECK_FAILED if "apply_patch_check" in names
                 else NO_SPACE if "apply_patch_space" in names else None)
        return _Abort("assert failed: " + _text(source(self.script, arg)), cause)

    def set_progress(self, start: float, size: float, fraction: float) -> None:
        self.scope = (start, size)
        self.progress.append(round(100 * (start + size * min(max(fraction, 0.0), 1.0)), 4))

    # reading files and partitions as applypatch does

    def load(self, name: str) -> Loaded | None:
        if name.startswith(("MTD:", "EMMC:")):
            return self.load_partition(name)
        try:
            return self.dev.load(name)
        except FsError as exc:
            self.say(f"failed to load {exc.path}: {exc.code}")
            return None

    def load_partition(self, spec: str) -> Loaded | None:
        """`MTD:name:size:sha1[:size:sha1...]`: the shortest listed prefix whose sha1 matches."""
        tokens = [t for t in spec.split(":") if t]
        pairs = (spec.count(":") - 1) // 2
        if len(tokens) < 2 + 2 * pairs or pairs < 1:
            self.say(f"bad partition name {spec}")
            return None
        part = self.dev.partition(tokens[1])
        wanted = []
        for n in range(pairs):
            size, _ = _strtol10(tokens[2 + 2 * n].encode())
            if size <= 0:
                self.say(f"bad size in {spec}")
                return None
            wanted.append((size, tokens[3 + 2 * n]))
        if part is None:
            self.say(f"partition {tokens[1]} not found")
            return None
        for size, sha1 in sorted(wanted, key=lambda w: w[0]):
            actual = part.digest(size)
            digest = _parse_sha1(sha1.encode())
            if actual is None or digest is None:
                self.say(f"cannot read {size} bytes of {tokens[1]} or parse {sha1}")
                return None
            if actual == digest:
                return Loaded(part.read(size) or b"", digest.hex(), 0o644, 0, 0)
        self.say(f"partition {tokens[1]} matches none of {spec}")
        return None

    def make_cache_space(self, needed: int) -> bool:
        """Free `needed` bytes on /cache by deleting loose files there, as the device may."""
        if self.free("/cache") >= needed:
            return True
        expendable = []
        for folder in ("/cache", "/cache/recovery/otatest"):
            try:
                names = self.dev.listdir(folder)
            except FsError:
                continue
            for name in names:
                path = f"{folder}/{name}"
                try:
                    if path != SAVED_FILE and self.dev.stat(path).kind == FILE:
                        expendable.append(path)
                except FsError:
                    continue
        for path in sorted(expendable):
            if self.free("/cache") >= needed:
                break
            try:
                self.dev.unlink(path)
                self.say(f"deleted {path} to make room on /cache")
            except FsError as exc:
                self.fs_failed(exc, "unlink")
        return self.free("/cache") >= needed

    def free(self, path: str) -> int:
        try:
            return self.dev.free_space(path)
        except FsError:
            return 1 << 62  # statfs failing reads as (size_t)-1 on the device

    def make_parents(self, path: str) -> bool:
        """mkdir 0700 of every missing ancestor of `path` (rename and symlink do this)."""
        for at in range(1, len(path)):
            if path[at] != "/":
                continue
            try:
                self.dev.mkdir(path[:at], 0o700)
            except FsError as exc:
                if exc.code != "EEXIST":
                    self.fs_failed(exc, "mkdir")
                    return False
        return True

    # --- edify builtins ----------------------------------------------------------------------

    def fn_abort(self, name: str, args: Sequence[Node]) -> Value:
        raise _Abort(_text(self.string(args[0])) if args else "called abort()")

    def fn_assert(self, name: str, args: Sequence[Node]) -> Value:
        for arg in args:
            if not self.string(arg):
                raise self.assert_failed(arg)
        return b""

    def fn_ifelse(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 2, 3)
        if self.string(args[0]):
            return self.value(args[1])
        return self.value(args[2]) if len(args) == 3 else b""

    def fn_concat(self, name: str, args: Sequence[Node]) -> Value:
        return b"".join(self.strings(args))

    def fn_stdout(self, name: str, args: Sequence[Node]) -> Value:
        for text in self.strings(args):
            self.say("stdout: " + _text(text))
        return b""

    def fn_sleep(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 1)
        return self.string(args[0])  # the host does not wait

    def fn_is_substring(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 2)
        needle, haystack = self.strings(args)
        return b"t" if needle in haystack else b""

    def fn_less_than_int(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 2)
        left, right = self.strings(args)
        return self.less_than(left, right)

    def fn_greater_than_int(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 2)
        left, right = self.strings(args)
        return self.less_than(right, left)

    def less_than(self, left: bytes, right: bytes) -> bytes:
        numbers = []
        for text in (left, right):
            value, end = _c_number(text, 10)
            if not text or end != len(text):
                self.say(f"[{_text(text)}] is not an int")
                return b""
            numbers.append(value)
        return b"t" if numbers[0] < numbers[1] else b""

    # --- properties, files read by the script ------------------------------------------------

    def fn_getprop(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 1)
        return self.dev.properties.get(_text(self.string(args[0])), "").encode(
            "utf-8", "surrogateescape")

    def fn_file_getprop(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 2)
        filename, key = self.strings(args)
        path = _text(filename)
        try:
            node = self.dev.stat(path)
        except FsError as exc:
            raise _Abort(f'{name}: failed to stat "{path}": {exc.code}') from None
        if node.kind != FILE:
            raise _Abort(f"{name}: failed to read {path}")
        data = self.dev.content(node)
        if len(data) > 65536:
            raise _Abort(f"{path} too large for {name} (max 65536)")
        for raw in data.split(b"\0", 1)[0].split(b"\n"):
            line = raw.lstrip(_SPACE)
            if not line or line.startswith(b"#") or b"=" not in line:
                continue
            found, _, value = line.partition(b"=")
            if found.rstrip(_SPACE) == key:
                return value.strip(_SPACE)
        return b""

    def fn_read_file(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 1)
        loaded = self.load(_text(self.string(args[0])))
        return Blob(None if loaded is None else loaded.data)

    def fn_sha1_check(self, name: str, args: Sequence[Node]) -> Value:
        if not args:
            raise _Abort(f"{name}() expects at least 1 arg")
        values = [self.value(arg) for arg in args]
        first = values[0]
        data = first.data if isinstance(first, Blob) else first
        if data is None:
            return b""
        digest = hashlib.sha1(data).digest()
        if len(values) == 1:
            return digest.hex().encode()
        for value in values[1:]:
            if isinstance(value, Blob) or _parse_sha1(value) is None:
                self.say(f"{name}(): skipping an argument that is not a sha1")
            elif _parse_sha1(value) == digest:
                return value
        return b""

    # --- user interface --------------------------------------------------------------------

    def fn_ui_print(self, name: str, args: Sequence[Node]) -> Value:
        text = b"".join(self.strings(args)) + b"\n"
        for line in text.split(b"\n"):
            if line:
                self.say("ui_print " + _text(line))
                self.to_pipe(b"ui_print " + line)
                self.to_pipe(b"ui_print")
        return text

    def fn_show_progress(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 2)
        fraction, seconds = self.strings(args)
        start, size = self.scope
        self.set_progress(start + size, _strtod(fraction), 0.0)
        value, end = _c_number(seconds, 10)  # seconds not wholly a number: 0
        self.to_pipe(b"progress %f %d" % (_strtod(fraction), value if end == len(seconds)
                                          else 0))
        return fraction

    def fn_set_progress(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 1)
        fraction = self.string(args[0])
        self.set_progress(*self.scope, _strtod(fraction))
        self.to_pipe(b"set_progress %f" % _strtod(fraction))
        return fraction

    # --- mounts ----------------------------------------------------------------------------

    def fn_mount(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 4, 5)
        values = self.strings(args)
        for label, value in zip(("fs_type", "partition_type", "location", "mount_point"),
                                values, strict=False):
            if not value:
                raise _Abort(f"{label} argument to {name}() can't be empty")
        point = values[3]
        if self.dev.mount(_text(point)):
            return point
        self.say(f"{name}: failed to mount {_text(values[2])} at {_text(point)}")
        return b""

    def fn_is_mounted(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 1)
        point = self.string(args[0])
        if not point:
            raise _Abort(f"mount_point argument to {name}() can't be empty")
        return point if self.dev.is_mounted(_text(point)) else b""

    def fn_unmount(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 1)
        point = self.string(args[0])
        if not point:
            raise _Abort(f"mount_point argument to {name}() can't be empty")
        if self.dev.unmount(_text(point)):
            return point
        self.say(f"unmount of {_text(point)} failed; no such volume")
        return b""

    def fn_format(self, name: str, args: Sequence[Node]) -> Value:
        raise _Abort(f"{name}() is not supported by the host updater")

    def fn_run_program(self, name: str, args: Sequence[Node]) -> Value:
        raise _Abort(f"{name}() is not supported by the host updater")

    # --- files ------------------------------------------------------------------------------

    def fn_rename(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 2)
        src_b, dst_b = self.strings(args)
        if not src_b or not dst_b:
            raise _Abort(f"{'src' if not src_b else 'dst'}_name argument to {name}() "
                         "can't be empty")
        src, dst = _text(src_b), _text(dst_b)
        if not self.make_parents(dst):
            raise _Abort(f"Creating parent of {dst} failed")
        if self.dev.exists(dst) and not self.dev.exists(src):
            return dst_b  # already moved
        try:
            self.dev.rename(src, dst)
        except FsError as exc:
            raise _Abort(f"Rename of {src} to {dst} failed, error {exc.code}") from None
        return dst_b

    def fn_delete(self, name: str, args: Sequence[Node]) -> Value:
        done = 0
        for path in map(_text, self.strings(args)):
            try:
                if name == "delete_recursive":
                    self.unlink_tree(path)
                else:
                    self.dev.unlink(path)
                done += 1
            except FsError as exc:
                self.fs_failed(exc, name)
        return str(done).encode()

    fn_delete_recursive = fn_delete

    def unlink_tree(self, path: str) -> None:
        node = self.dev.lstat(path)
        if node.kind != DIR:
            self.dev.unlink(path)
            return
        for child in self.dev.names(node):
            self.unlink_tree(f"{path}/{child}")
        self.dev.rmdir(path)

    def fn_symlink(self, name: str, args: Sequence[Node]) -> Value:
        if not args:
            raise _Abort(f"{name}() expects 1+ args, got 0")
        target = _text(self.string(args[0]))
        bad = 0
        for link in map(_text, self.strings(args[1:])):
            try:
                self.dev.unlink(link)
            except FsError as exc:
                if exc.code != "ENOENT":
                    self.fs_failed(exc, "remove")
                    bad += 1
            if not self.make_parents(link):
                bad += 1
            try:
                self.dev.symlink(target, link)
            except FsError as exc:
                self.fs_failed(exc, f"symlink {target} as")
                bad += 1
        if bad:
            raise _Abort(f"{name}: some symlinks failed")
        return b""

    def fn_set_perm(self, name: str, args: Sequence[Node]) -> Value:
        recursive = name == "set_perm_recursive"
        labels = ("uid", "gid", "dirmode", "filemode") if recursive else ("uid", "gid", "mode")
        if len(args) < len(labels) + 1:
            raise _Abort(f"{name}() expects {len(labels) + 1}+ args, got {len(args)}")
        values = self.strings(args)
        numbers = []
        for label, text in zip(labels, values, strict=False):
            number = _strtoul_whole(text)
            if number is None:
                raise _Abort(f'{name}: "{_text(text)}" not a valid {label}')
            numbers.append(number)
        uid, gid = _owner(numbers[0]), _owner(numbers[1])
        bad = 0
        for path in map(_text, values[len(labels):]):
            if recursive:
                self.perm_tree(path, uid, gid, numbers[2], numbers[3])
                continue
            try:
                node = self.dev.lstat(path)
            except FsError as exc:
                self.fs_failed(exc, name)
                bad += 1
                continue
            if node.kind != SYMLINK:
                self.dev.set_owner_mode(node, uid, gid, numbers[2], path)
        if bad:
            raise _Abort(f"{name}: some changes failed")
        return b""

    fn_set_perm_recursive = fn_set_perm

    def perm_tree(self, path: str, uid: int | None, gid: int | None, dmode: int,
                  fmode: int) -> None:
        """set_perm_recursive on one path."""
        def act(where: str, node: FsNode) -> None:
            if node.kind != SYMLINK:
                self.dev.set_owner_mode(node, uid, gid, dmode if node.kind == DIR else fmode,
                                        where)

        self.each_node(lambda: self.preorder(path), act)

    def preorder(self, path: str) -> list[tuple[str, FsNode]]:
        """What set_perm_recursive visits: each node before what it holds, a link not
        followed, up to the first that cannot be looked up (there it stops, silently)."""
        out: list[tuple[str, FsNode]] = []

        def visit(where: str) -> bool:
            try:
                node = self.dev.lstat(where)
            except FsError:
                return False
            out.append((where, node))
            if node.kind == DIR:
                for child in self.dev.names(node):
                    if not visit(f"{where}/{child}"):
                        return False
            return True

        visit(path)
        return out

    def each_node(self, walk: Callable[[], list[tuple[str, FsNode]]],
                  act: Callable[[str, FsNode], None]) -> None:
        """`act` on each node `walk` finds, in its order. With units, the walk is the
        statement's first unit and each node one more."""
        units = self.units
        nodes = walk() if units is None else units.walk(self, walk)
        index = 0
        while index < len(nodes):
            if units is not None:
                index = units.entry(self, index + 1, len(nodes) + 1) - 1
                if index >= len(nodes):
                    break
            where, node = nodes[index]
            act(where, node)
            if units is not None:
                def redo(_run: _Updater, w: str = where, n: FsNode = node) -> str:
                    act(w, n)
                    return ""

                units.entry_done(self, index + 1, "", redo)
            index += 1

    def fn_set_metadata(self, name: str, args: Sequence[Node]) -> Value:  # noqa: C901
        if len(args) % 2 != 1:
            raise _Abort(f"{name}() expects an odd number of arguments, got {len(args)}")
        values = self.strings(args)
        path = _text(values[0])
        try:
            top = self.dev.lstat(path)
        except FsError as exc:
            self.fs_failed(exc, f"{name}: lstat of")
            return b""
        wanted: dict[str, int | None] = {}
        for key_b, text in zip(values[1::2], values[2::2], strict=True):
            key = _text(key_b)
            if key in ("uid", "gid", "mode", "dmode", "fmode", "capabilities"):
                number = _scanf_int(text, 10 if key in ("uid", "gid") else 0)
                if number is None:
                    self.say(f'ParsePermArgs: invalid {key} "{_text(text)}"')
                else:
                    wanted[key] = _owner(number) if key in ("uid", "gid") else number
            elif key != "selabel":
                self.say(f'ParsedPermArgs: unknown key "{key}", ignoring')

        def act(where: str, node: FsNode) -> None:
            if node.kind == SYMLINK:
                return
            mode = wanted.get("mode")
            mode = wanted.get("dmode", mode) if node.kind == DIR else wanted.get("fmode", mode)
            if mode is not None or "uid" in wanted or "gid" in wanted:
                self.dev.set_owner_mode(node, wanted.get("uid"), wanted.get("gid"), mode, where)

        if name == "set_metadata_recursive":
            # the walk looks the top up again: so that what it found is in its footprint
            self.each_node(lambda: self.depth_first(path, self.dev.lstat(path)), act)
        else:
            act(path, top)
        return b""

    fn_set_metadata_recursive = fn_set_metadata

    def depth_first(self, path: str, node: FsNode) -> list[tuple[str, FsNode]]:
        """nftw(FTW_PHYS | FTW_DEPTH): what is in a directory comes before it."""
        out: list[tuple[str, FsNode]] = []
        if node.kind == DIR:
            for child in self.dev.names(node):
                child_path = f"{path}/{child}"
                out += self.depth_first(child_path, self.dev.lstat(child_path))
        out.append((path, node))
        return out

    # --- the package -------------------------------------------------------------------------

    def fn_package_extract_dir(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 2)
        zip_path, dest = self.strings(args)
        if zip_path.startswith(b"/") or not dest.startswith(b"/"):
            self.say(f"{name}: the zip path must be relative and the destination absolute")
            return b""
        prefix = zip_path + b"/" if zip_path and not zip_path.endswith(b"/") else zip_path
        base = dest if dest.endswith(b"/") else dest + b"/"
        entries = self.package.extracted.get(prefix)
        if entries is None:
            entries = self.package.extracted[prefix] = self.zip.under(prefix)
        index, units = 0, self.units
        while index < len(entries):
            if units is not None:
                index = units.entry(self, index, len(entries))
                if index >= len(entries):
                    break
            entry = entries[index]
            outcome = self.extract_entry(entry, prefix, base)
            if units is not None:
                def redo(run: _Updater, e: ZipEntry = entry) -> str:
                    return run.extract_entry(e, prefix, base)

                units.entry_done(self, index, outcome, redo)
            if outcome == "stop":
                return b""
            if outcome == "break":
                break  # the device stops here yet reports success
            index += 1
        return b"t"

    def extract_entry(self, entry: ZipEntry, prefix: bytes, base: bytes) -> str:
        """One file of `package_extract_dir`: "" to go on, "stop" to fail, "break" to stop
        and report success (out of room, or a corrupt entry truncated)."""
        target = _text(base + entry.name[len(prefix):])
        if not self.create_hierarchy(target):
            return "stop"
        data, ok = self.zip.read(entry)
        try:
            self.dev.write_file(target, data, new_mode=0o644, sha1=self.zip.sha1(entry))
        except FsError as exc:
            self.fs_failed(exc, "extract to")
            return "stop" if exc.code != "ENOSPC" else "break"
        if not ok:
            self.say(f"error extracting {target}: entry is corrupt")
            return "break"
        return ""

    def create_hierarchy(self, target: str) -> bool:
        """The parents of an extracted file, made 0755 as needed (links followed)."""
        cut = target.rfind("/")
        if cut <= 0:
            self.say(f"cannot create the folder of {target}")
            return False
        folder = target[: cut + 1]
        status = self.dir_status(folder)
        if status != "missing":
            return status == "dir"
        for at in range(1, len(folder)):
            if folder[at] != "/" or folder[at - 1] == "/":
                continue
            status = self.dir_status(folder[:at])
            if status == "illegal":
                return False
            if status == "missing":
                try:
                    self.dev.mkdir(folder[:at], 0o755)
                except FsError as exc:
                    self.fs_failed(exc, "mkdir")
                    return False
        return True

    def dir_status(self, path: str) -> str:
        try:
            return "dir" if self.dev.stat(path).kind == DIR else "illegal"
        except FsError as exc:
            return "missing" if exc.code == "ENOENT" else "illegal"

    def fn_package_extract_file(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 1, 2)
        values = self.strings(args)
        entry = self.zip.find(values[0])
        if entry is None:
            self.say(f"{name}: no {_text(values[0])} in package")
            return b"" if len(values) == 2 else Blob(None)
        data, ok = self.zip.read(entry)
        if len(values) == 1:
            return Blob(data if ok else None)
        try:
            self.dev.write_file(_text(values[1]), data, new_mode=0o600,
                                sha1=self.zip.sha1(entry))
        except FsError as exc:
            self.fs_failed(exc, "extract to")
            return b""
        return b"t" if ok else b""

    def fn_write_raw_image(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 2)
        contents, partition = self.value(args[0]), self.value(args[1])
        if isinstance(partition, Blob):
            raise _Abort(f"partition argument to {name} must be string")
        if not partition:
            raise _Abort(f"partition argument to {name} can't be empty")
        if contents == b"":
            raise _Abort(f"file argument to {name} can't be empty")
        part = _text(partition)
        if part not in self.dev.partitions:
            self.say(f'{name}: no mtd partition named "{part}"')
            return b""
        if isinstance(contents, Blob):
            if contents.data is None:
                raise _Abort(f"{name}: no data to write (the updater would crash)")
            data = contents.data
        else:
            try:
                data = self.dev.load(_text(contents)).data
            except FsError as exc:
                self.fs_failed(exc, f"{name}: open")
                return b""
        if not self.dev.write_partition(part, data):
            self.say(f"failed to write {part} partition: image larger than the partition")
            return b""
        return partition

    # --- applypatch ---------------------------------------------------------------------------

    def fn_apply_patch_space(self, name: str, args: Sequence[Node]) -> Value:
        _argc(name, args, 1)
        text = self.string(args[0])
        needed, parsed = _strtol10(text)
        if not parsed:
            raise _Abort(f'{name}(): can\'t parse "{_text(text)}" as byte count')
        return b"t" if self.make_cache_space(needed % (1 << 64)) else b""

    def fn_apply_patch_check(self, name: str, args: Sequence[Node]) -> Value:
        if not args:
            raise _Abort(f"{name}(): expected at least 1 arg, got 0")
        values = self.strings(args)
        return b"t" if self.patch_check(_text(values[0]), values[1:]) else b""

    def patch_check(self, name: str, sha1s: Sequence[bytes]) -> bool:
        loaded = self.load(name)
        if loaded is None or (sha1s and _pick(loaded, sha1s) is None):
            self.say(f'file "{name}" doesn\'t have any of expected sha1 sums; checking cache')
            saved = self.load(SAVED_FILE)
            if saved is None or _pick(saved, sha1s) is None:
                return False
        return True

    def fn_apply_patch(self, name: str, args: Sequence[Node]) -> Value:
        if len(args) < 6 or len(args) % 2:
            raise _Abort(f"{name}(): expected at least 6 args and an even number, "
                         f"got {len(args)}")
        src, tgt, tgt_sha1, size_text = self.strings(args[:4])
        tgt_size, parsed = _strtol10(size_text)
        if not parsed:
            raise _Abort(f'{name}(): can\'t parse "{_text(size_text)}" as byte count')
        rest = [self.value(arg) for arg in args[4:]]
        sha1s: list[bytes] = []
        patches: list[Blob] = []
        for n in range(0, len(rest), 2):
            sha1, patch = rest[n], rest[n + 1]
            if isinstance(sha1, Blob):
                raise _Abort(f"{name}(): sha-1 #{n // 2} is not string")
            if not isinstance(patch, Blob):
                raise _Abort(f"{name}(): patch #{n // 2} is not blob")
            sha1s.append(sha1)
            patches.append(patch)
        self.say(f"applying patch to {_text(src)}")
        done = self.apply_patch(_text(src), _text(tgt), tgt_sha1, tgt_size % (1 << 64),
                                sha1s, patches)
        return b"t" if done else b""

    def apply_patch(self, src: str, tgt: str, tgt_sha1: bytes, tgt_size: int,  # noqa: C901, PLR0913, PLR0915
                    sha1s: list[bytes], patches: list[Blob]) -> bool:
        """applypatch(): patch `src` into `tgt` ("-": the same), safe to run again."""
        tgt = src if tgt == "-" else tgt
        want = _parse_sha1(tgt_sha1)
        if want is None:
            self.say(f'failed to parse tgt-sha1 "{_text(tgt_sha1)}"')
            return False
        current = self.load(tgt)
        if current is not None and current.sha1 == want.hex():
            self.say(f'"{tgt}" is already target; no patch needed')
            return True
        source = current if current is not None and tgt == src else self.load(src)
        index = _pick(source, sha1s) if source is not None else None
        copy = None
        if index is None:
            source = None
            self.say("source file is bad; trying copy")
            copy = self.load(SAVED_FILE)
            index = _pick(copy, sha1s) if copy is not None else None
            if index is None:
                self.say("copy file doesn't match source SHA-1s either")
                return False
        to_partition = tgt.startswith(("MTD:", "EMMC:"))
        slash = tgt.find("/", 1)
        target_fs = tgt[:slash] if slash > 0 else tgt
        outname = tgt + ".patch"
        retry, made_copy = 1, False
        while True:
            if to_partition:
                # the source is backed up first, in case the partition write is cut
                if source is None or not self.back_up(source):
                    self.say("failed to back up source file")
                    return False
                made_copy, retry = True, 0
            else:
                free = self.free(target_fs) if retry > 0 else 0
                enough = retry > 0 and free > _PATCH_MIN_FREE and free > tgt_size * 3 // 2
                if not enough:
                    retry = 0
                if not enough and source is not None:
                    if src.startswith(("MTD:", "EMMC:")):
                        self.say("not enough free space for target but source is partition")
                        return False
                    if not self.back_up(source):
                        return False
                    made_copy = True
                    try:
                        self.dev.unlink(src)
                    except FsError as exc:
                        self.fs_failed(exc, "unlink")
            use = source if source is not None else copy
            assert use is not None
            outcome, out, out_sha1 = self.run_patch(use.data, use.sha1, patches[index])
            if outcome == "ok" and to_partition and len(out) > tgt_size:
                outcome = "failed"  # the output buffer holds tgt_size bytes
            if outcome != "ok" and not to_partition:
                self.try_write(outname, b"")  # opened before the patch is read
            if outcome == "unknown":
                self.say("Unknown patch file format")
                return False
            if outcome == "ok" and not to_partition:
                right = out_sha1 == want
                try:
                    self.dev.write_file(outname, out, new_mode=0o600,
                                        meta=(use.mode, use.uid, use.gid) if right else None,
                                        sha1=out_sha1.hex())
                except FsError as exc:
                    self.fs_failed(exc, "write")
                    if exc.code != "ENOSPC":
                        return False
                    outcome = "failed"
            if outcome == "failed":
                if retry == 0:
                    self.say("applying patch failed")
                    return False
                self.say("applying patch failed; retrying")
                if not to_partition:
                    self.try_unlink(outname)
                retry -= 1
                continue
            break
        if out_sha1 != want:
            self.say("patch did not produce expected sha1")
            return False
        if to_partition:
            part = [t for t in tgt.split(":") if t][1:2]
            if not part or part[0] not in self.dev.partitions or \
                    not self.dev.write_partition(part[0], out, out_sha1):
                self.say(f"write of patched data to {tgt} failed")
                return False
        else:
            try:
                self.dev.rename(outname, tgt)
            except FsError as exc:
                self.fs_failed(exc, "rename of .patch to")
                return False
        if made_copy:
            self.try_unlink(SAVED_FILE)
        return True

    def back_up(self, source: Loaded) -> bool:
        """Copy the source to /cache/saved.file with its mode and owner."""
        if not self.make_cache_space(len(source.data)):
            self.say("not enough free space on /cache")
            return False
        try:
            self.dev.write_file(SAVED_FILE, source.data, new_mode=0o600,
                                meta=(source.mode, source.uid, source.gid))
        except FsError as exc:
            self.fs_failed(exc, "back up to")
            return False
        return True

    def run_patch(self, source: bytes, source_sha1: str,
                  patch: Blob) -> tuple[str, bytes, bytes]:
        """("ok", output, its sha1), ("failed", ...) or ("unknown", ...) for a patch format the
        device does not know. IMGDIFF2 is known to the device but not to the host."""
        data = patch.data
        if data is None or len(data) < 8 or data[:8] not in (b"BSDIFF40", b"IMGDIFF2"):
            return "unknown", b"", b""
        if data[:8] == b"IMGDIFF2":
            self.say("IMGDIFF2 patches are not supported by the host updater")
            return "failed", b"", b""
        if len(data) < 32:
            return "failed", b"", b""
        new_size = int.from_bytes(data[24:32], "little")
        if new_size >> 63 or new_size > _MAX_PATCH_OUTPUT:
            return "failed", b"", b""
        key = (source_sha1, hashlib.sha1(data).hexdigest())
        if key not in self.package.patched:
            try:
                out = bsdiff4.patch(source, data)
                self.package.patched[key] = (out, hashlib.sha1(out).digest())
            except (ValueError, OSError, MemoryError, OverflowError, RuntimeError) as exc:
                self.say(f"bsdiff patch failed: {exc}")
                return "failed", b"", b""
        return ("ok", *self.package.patched[key])

    def try_write(self, path: str, data: bytes) -> None:
        try:
            self.dev.write_file(path, data, new_mode=0o600)
        except FsError as exc:
            self.fs_failed(exc, "write")

    def try_unlink(self, path: str) -> None:
        try:
            self.dev.unlink(path)
        except FsError as exc:
            self.fs_failed(exc, "unlink")


def _argc(name: str, args: Sequence[Node], *allowed: int) -> None:
    if len(args) not in allowed:
        expected = " or ".join(str(n) for n in allowed)
        raise _Abort(f"{name}() expects {expected} args, got {len(args)}")


def _pick(loaded: Loaded, sha1s: Sequence[bytes]) -> int | None:
    """The index of the first sha1 string that names `loaded`'s content."""
    digest = bytes.fromhex(loaded.sha1)
    for index, text in enumerate(sha1s):
        if _parse_sha1(text) == digest:
            return index
    return None


def _pipe_abort(run: _Updater, message: str) -> None:
    """What an aborted script leaves on the command pipe: each non-empty line of the message,
    an empty `ui_print`, and `log error: N` when a line reports `EN:`."""
    for line in message.encode("utf-8", "surrogateescape").split(b"\n"):
        if line:
            run.to_pipe(b"ui_print " + line)
    run.to_pipe(b"ui_print")
    code = _error_code(message)
    if code is not None and code != _NO_ERROR:
        run.to_pipe(b"log error: %d" % code)


def _result(run: _Updater | None, exit_code: int, message: str,
            cause: int | None = None) -> UpdateResult:
    no_space = run.no_space if run is not None else []
    if exit_code == 0:
        code = NO_SPACE if no_space else OK
    elif exit_code in (3, 4, 5):
        code = BAD_PACKAGE
    elif exit_code == 6:
        code = UPDATER_DIED
    else:
        # an aborted run never reports success, even through `E0:`
        code = _error_code(message) or cause or (NO_SPACE if no_space else UPDATER_DIED)
    if no_space:
        message += f" (no space left writing {', '.join(dict.fromkeys(no_space))})"
    if run is None:
        return UpdateResult(code, exit_code, message)
    return UpdateResult(code, exit_code, message, tuple(run.progress), run.steps,
                        tuple(run.log), tuple(run.step_log), pipe=bytes(run.pipe))


# --- entry points ------------------------------------------------------------------------------


def precheck(package: Path, device: Device) -> UpdateResult | None:
    """The module's own checks before it starts recovery; None when they pass."""
    try:
        archive = DeviceZip(Path(package).read_bytes())
    except ZipFormatError as exc:
        return UpdateResult(BAD_PACKAGE, -1, f"not a usable zip: {exc}")
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", package) from exc
    if archive.find(SCRIPT_NAME.encode()) is None:
        return UpdateResult(BAD_PACKAGE, -1, f"no {SCRIPT_NAME} in the package")
    entry = archive.find(VERSION_NAME.encode())
    shipped, ok = archive.read(entry) if entry is not None else (b"", False)
    running = device.read_in("/system", DEVICE_VERSION)
    if not ok or running is None or shipped != running:
        why = ("the package has no readable quectel-project-version" if not ok
               else f"the module has no /system/{DEVICE_VERSION}" if running is None
               else "quectel-project-version differs from the module's")
        return UpdateResult(VERSION_MISMATCH, -1, why)
    return None


class Units(Protocol):
    """What follows a run unit by unit (`dfota.device.power_loss`): each top-level statement is a
    unit, but a statement that only extracts a folder, whose every file is one, or that only
    sets modes down one tree, whose walk is one and every node one more.

    `statement` and `entry` are told where the run is about to go and say where it goes
    (the same place, or further on: the units between are taken as done); the `_done` calls
    follow each unit, with a way to run it again (`redo`)."""

    def statement(self, run: _Updater, index: int, items: Sequence[Node]) -> int: ...

    def statement_done(self, run: _Updater, index: int, item: Node) -> None: ...

    def entry(self, run: _Updater, index: int, count: int) -> int: ...

    def entry_done(self, run: _Updater, index: int, outcome: str,
                   redo: Callable[[_Updater], str]) -> None: ...

    def walk(self, run: _Updater,
             compute: Callable[[], list[tuple[str, FsNode]]]) -> list[tuple[str, FsNode]]: ...


class Rejoined(Exception):
    """A re-run found the device as a whole run left it after the same unit."""

    def __init__(self, statement: int) -> None:
        self.statement = statement


def _evaluate(run: _Updater, root: Node) -> Value:
    """The script's value, as `run.value(root)`; unit by unit with `run.units`."""
    units = run.units
    if units is None:
        return run.value(root)
    items = root.items if isinstance(root, Seq) else (root,)
    last, index = len(items) - 1, 0
    while True:
        index = min(units.statement(run, index, items), last)
        item = items[index]
        outcome = run.value(item) if index == last else run.string(item)
        units.statement_done(run, index, item)
        if index == last:
            return outcome
        index += 1


def apply_package(package: Path | Package, device: Device, *,
                  power_loss_at: int | None = None,
                  after_step: Callable[[int], None] | None = None,
                  units: Units | None = None) -> UpdateResult:
    """Start recovery on `device` (mounts and /tmp reset) and run the package's script.

    Raises PowerLoss after mutating step `power_loss_at`, leaving `device` as it is then;
    `after_step(n)` is called as each step n is done. The module's pre-checks are
    `precheck`'s job and are not repeated here. `units`: see `Units`; a run they stop with
    `Rejoined` ends with result 0 and `rejoined` set (the device left as it is then).
    """
    pkg = package if isinstance(package, Package) else load_package(package)
    device.reboot()
    if pkg.failure is not None:
        return _result(None, *pkg.failure)
    assert pkg.root is not None
    run = _Updater(pkg, device, power_loss_at, after_step, units)
    device.hook = run.on_step
    try:
        outcome = _evaluate(run, pkg.root)
        if isinstance(outcome, Blob):
            raise _Abort("expecting string, got blob")
    except _Abort as abort:
        run.say(f"script aborted: {abort.message}")
        _pipe_abort(run, abort.message)
        return _result(run, 7, abort.message, abort.cause)
    except Rejoined as joined:
        return dataclasses.replace(_result(run, 0, "as the run followed from here"),
                                   rejoined=joined.statement)
    finally:
        device.hook = None
    run.say(f"script succeeded: result was [{_text(outcome)}]")
    run.to_pipe(b"ui_print script succeeded: result was [" + outcome + b"]")
    return _result(run, 0, "script succeeded")


def count_mutating_steps(package: Path | Package, device: Device) -> int:
    """How many mutating steps a whole run takes (on a copy of `device`)."""
    return apply_package(package, device.copy()).steps


def resume_after_power_loss(package: Path | Package, device: Device,
                            step: int) -> tuple[UpdateResult, Device]:
    """Cut the power after `step` on a copy of `device`, then run the package again on what
    is left, as the module does at the next boot. Returns the second run and the device."""
    pkg = package if isinstance(package, Package) else load_package(package)
    twin = device.copy()
    with contextlib.suppress(PowerLoss):
        apply_package(pkg, twin, power_loss_at=step)
    return apply_package(pkg, twin), twin
