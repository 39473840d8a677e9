"""The host updater: runs an update.zip on a fake module the way the module's recovery does.

Every rule comes from the device (docs `device-updater.md`): its zip reader, its edify
functions as they really behave, and the result codes the module reports (table 3 of the
application note). The fake module is `dfota.device.fs.Device`; the script runs in
`dfota.device.interpreter`, with the functions of `dfota.device.script_functions`,
`dfota.device.file_functions`, `dfota.device.package_functions` and
`dfota.device.applypatch`. Here: the package read, the module's checks, a run and its result.

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
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfota.core.errors import DfotaError, bad_zip_name
from dfota.device import applypatch, file_functions, package_functions, script_functions
from dfota.device.contents import same_content, whole
from dfota.device.fs import Device
from dfota.device.interpreter import Function, Package, Units, Updater
from dfota.device.values import Abort, Blob, Value, as_text
from dfota.device.zip_reader import DeviceZip, ZipFormatError
from dfota.formats.edify_parse import DEVICE_FUNCTIONS, EdifySyntaxError, Node, Seq, parse

SCRIPT_NAME = "META-INF/com/google/android/updater-script"
VERSION_NAME = "quectel-project-version"
DEVICE_VERSION = "etc/quectel-project-version"  # in /system, which is `/` when running

OK = 0
BAD_PACKAGE = 504
VERSION_MISMATCH = 505
UPDATER_DIED = 502
CHECK_FAILED = 510
NO_SPACE = 511
# the code of a script stopped by a failed `assert` of one of these checks
_FAILED_CHECK = {"apply_patch_check": CHECK_FAILED, "apply_patch_space": NO_SPACE}

_NO_ERROR = -1  # the updater's "no error code" (kNoError): never logged

# every function a script may call, by name (the parser knows the same names)
FUNCTIONS: dict[str, Function] = {**script_functions.FUNCTIONS, **file_functions.FUNCTIONS,
                                  **package_functions.FUNCTIONS, **applypatch.FUNCTIONS}


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


def load_package(path: Path) -> Package:
    """The package read as the updater reads it (its file open until `Package.close`)."""
    try:
        archive = DeviceZip(Path(path))
    except FileNotFoundError as exc:
        raise DfotaError("file not found", path) from exc
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    except ZipFormatError as exc:
        return Package(path, failure=(3, f"not a usable zip: {exc}"))
    # the device takes a name's bytes as they are; the host reads them as UTF-8, as every
    # reader of the project does, and refuses other bytes
    for found in archive.entries:
        if not found.name.isascii():
            try:
                found.name.decode("utf-8")
            except UnicodeDecodeError:
                archive.close()
                raise bad_zip_name(found.name, path) from None
    entry = archive.find(SCRIPT_NAME.encode())
    if entry is None:
        return Package(path, archive, failure=(4, f"no {SCRIPT_NAME} in the package"))
    content, ok = archive.read(entry)
    if not ok:
        return Package(path, archive, failure=(5, f"cannot read {SCRIPT_NAME}"))
    script = whole(content)
    try:
        root = parse(script, DEVICE_FUNCTIONS)
    except EdifySyntaxError as exc:
        return Package(path, archive, script, failure=(6, str(exc)))
    return Package(path, archive, script, root)


def _error_code(message: str) -> int | None:
    """The code an abort message reports: a line `E<num>: ...` (the last one counts)."""
    code = None
    for line in message.split("\n"):
        found = re.match(r"E[ \t]*([+-]?\d+)", line)
        if found:
            code = int(found.group(1))
    return code


def _pipe_abort(run: Updater, message: str) -> None:
    """What an aborted script leaves on the command pipe: each non-empty line of the message,
    an empty `ui_print`, and `log error: N` when a line reports `EN:`."""
    for line in message.encode("utf-8", "surrogateescape").split(b"\n"):
        if line:
            run.to_pipe(b"ui_print " + line)
    run.to_pipe(b"ui_print")
    code = _error_code(message)
    if code is not None and code != _NO_ERROR:
        run.to_pipe(b"log error: %d" % code)


def _result(run: Updater | None, exit_code: int, message: str,
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


def precheck(package: Path, device: Device) -> UpdateResult | None:
    """The module's own checks before it starts recovery; None when they pass."""
    try:
        archive = DeviceZip(Path(package))
    except ZipFormatError as exc:
        return UpdateResult(BAD_PACKAGE, -1, f"not a usable zip: {exc}")
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", package) from exc
    running = device.read_in("/system", DEVICE_VERSION)
    try:
        if archive.find(SCRIPT_NAME.encode()) is None:
            return UpdateResult(BAD_PACKAGE, -1, f"no {SCRIPT_NAME} in the package")
        entry = archive.find(VERSION_NAME.encode())
        shipped, ok = archive.read(entry) if entry is not None else (b"", False)
        same = running is not None and same_content(shipped, running)
    finally:
        archive.close()
    if not ok or running is None or not same:
        why = ("the package has no readable quectel-project-version" if not ok
               else f"the module has no /system/{DEVICE_VERSION}" if running is None
               else "quectel-project-version differs from the module's")
        return UpdateResult(VERSION_MISMATCH, -1, why)
    return None

class Rejoined(Exception):
    """A re-run found the device as a whole run left it after the same unit."""

    def __init__(self, statement: int) -> None:
        self.statement = statement


def _evaluate(run: Updater, root: Node) -> Value:
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
    run = Updater(pkg, device, FUNCTIONS, units, _step_done(power_loss_at, after_step))
    device.hook = run.on_step
    try:
        outcome = _evaluate(run, pkg.root)
        if isinstance(outcome, Blob):
            raise Abort("expecting string, got blob")
    except Abort as abort:
        run.say(f"script aborted: {abort.message}")
        _pipe_abort(run, abort.message)
        cause = _FAILED_CHECK[abort.check] if abort.check is not None else None
        return _result(run, 7, abort.message, cause)
    except Rejoined as joined:
        return dataclasses.replace(_result(run, 0, "as the run followed from here"),
                                   rejoined=joined.statement)
    finally:
        device.hook = None
    run.say(f"script succeeded: result was [{as_text(outcome)}]")
    run.to_pipe(b"ui_print script succeeded: result was [" + outcome + b"]")
    return _result(run, 0, "script succeeded")


def _step_done(power_loss_at: int | None,
               after_step: Callable[[int], None] | None) -> Callable[[int, str], None] | None:
    """What a run tells of each step done: `after_step(n)`, then the power lost after step
    `power_loss_at`."""
    if power_loss_at is None and after_step is None:
        return None

    def done(step: int, what: str) -> None:
        if after_step is not None:
            after_step(step)
        if step == power_loss_at:
            raise PowerLoss(step, what)

    return done


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
