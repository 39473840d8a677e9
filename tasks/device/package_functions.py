"""The edify functions that take the package's entries: a folder or a file extracted, and an
image written to a raw partition.

Each file `package_extract_dir` extracts is a unit of its own when a run is followed unit by
unit (`dfota.device.interpreter.Units`).
"""

from __future__ import annotations

from collections.abc import Sequence

from dfota.core.tree import DIR
from dfota.device.contents import Content
from dfota.device.interpreter import Function, Updater
from dfota.device.storage import FsError
from dfota.device.values import Abort, Blob, Value, argc, as_text
from dfota.device.zip_reader import ZipEntry
from dfota.formats.edify_parse import Node


def fn_package_extract_dir(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 2)
    zip_path, dest = run.strings(args)
    if zip_path.startswith(b"/") or not dest.startswith(b"/"):
        run.say(f"{name}: the zip path must be relative and the destination absolute")
        return b""
    prefix = zip_path + b"/" if zip_path and not zip_path.endswith(b"/") else zip_path
    base = dest if dest.endswith(b"/") else dest + b"/"
    entries = run.package.extracted.get(prefix)
    if entries is None:
        entries = run.package.extracted[prefix] = run.zip.under(prefix)
    index, units = 0, run.units
    while index < len(entries):
        if units is not None:
            index = units.entry(run, index, len(entries))
            if index >= len(entries):
                break
        entry = entries[index]
        outcome = _extract_entry(run, entry, prefix, base)
        if units is not None:
            def redo(again: Updater, e: ZipEntry = entry) -> str:
                return _extract_entry(again, e, prefix, base)

            units.entry_done(run, index, outcome, redo)
        if outcome == "stop":
            return b""
        if outcome == "break":
            break  # the device stops here yet reports success
        index += 1
    return b"t"


def _extract_entry(run: Updater, entry: ZipEntry, prefix: bytes, base: bytes) -> str:
    """One file of `package_extract_dir`: "" to go on, "stop" to fail, "break" to stop
    and report success (out of room, or a corrupt entry truncated)."""
    target = as_text(base + entry.name[len(prefix):])
    if not _create_hierarchy(run, target):
        return "stop"
    data, ok = run.zip.read(entry)
    try:
        run.dev.write_file(target, data, new_mode=0o644, sha1=run.zip.sha1(entry))
    except FsError as exc:
        run.fs_failed(exc, "extract to")
        return "stop" if exc.code != "ENOSPC" else "break"
    if not ok:
        run.say(f"error extracting {target}: entry is corrupt")
        return "break"
    return ""


def _create_hierarchy(run: Updater, target: str) -> bool:
    """The parents of an extracted file, made 0755 as needed (links followed)."""
    cut = target.rfind("/")
    if cut <= 0:
        run.say(f"cannot create the folder of {target}")
        return False
    folder = target[: cut + 1]
    status = _dir_status(run, folder)
    if status != "missing":
        return status == "dir"
    for at in range(1, len(folder)):
        if folder[at] != "/" or folder[at - 1] == "/":
            continue
        status = _dir_status(run, folder[:at])
        if status == "illegal":
            return False
        if status == "missing":
            try:
                run.dev.mkdir(folder[:at], 0o755)
            except FsError as exc:
                run.fs_failed(exc, "mkdir")
                return False
    return True


def _dir_status(run: Updater, path: str) -> str:
    try:
        return "dir" if run.dev.stat(path).kind == DIR else "illegal"
    except FsError as exc:
        return "missing" if exc.code == "ENOENT" else "illegal"


def fn_package_extract_file(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 1, 2)
    values = run.strings(args)
    entry = run.zip.find(values[0])
    if entry is None:
        run.say(f"{name}: no {as_text(values[0])} in package")
        return b"" if len(values) == 2 else Blob(None)
    data, ok = run.zip.read(entry)
    if len(values) == 1:
        return Blob(data if ok else None)
    try:
        run.dev.write_file(as_text(values[1]), data, new_mode=0o600,
                           sha1=run.zip.sha1(entry))
    except FsError as exc:
        run.fs_failed(exc, "extract to")
        return b""
    return b"t" if ok else b""


def fn_write_raw_image(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 2)
    contents, partition = run.value(args[0]), run.value(args[1])
    if isinstance(partition, Blob):
        raise Abort(f"partition argument to {name} must be string")
    if not partition:
        raise Abort(f"partition argument to {name} can't be empty")
    if contents == b"":
        raise Abort(f"file argument to {name} can't be empty")
    part = as_text(partition)
    if part not in run.dev.partitions:
        run.say(f'{name}: no mtd partition named "{part}"')
        return b""
    data: Content
    if isinstance(contents, Blob):
        if contents.data is None:
            raise Abort(f"{name}: no data to write (the updater would crash)")
        data = contents.data
    else:
        try:
            data = run.dev.load(as_text(contents)).data
        except FsError as exc:
            run.fs_failed(exc, f"{name}: open")
            return b""
    if not run.dev.write_partition(part, data):
        run.say(f"failed to write {part} partition: image larger than the partition")
        return b""
    return partition


FUNCTIONS: dict[str, Function] = {
    "package_extract_dir": fn_package_extract_dir,
    "package_extract_file": fn_package_extract_file,
    "write_raw_image": fn_write_raw_image,
}
