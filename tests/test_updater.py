"""The host updater, rule by rule from device-updater.md, on small hand-written packages."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import bsdiff4
import pytest

from dfota.core.tree import DIR, FILE, SYMLINK, Entry
from dfota.device.applypatch import SAVED_FILE
from dfota.device.contents import whole
from dfota.device.fs import Device
from dfota.device.host import EntrySpec, entry_key
from dfota.device.power_loss import for_each_power_loss
from dfota.device.storage import FsError, Partition
from dfota.device.units import MarkRecorder, Marks
from dfota.device.updater import (
    FUNCTIONS,
    SCRIPT_NAME,
    PowerLoss,
    UpdateResult,
    apply_package,
    count_mutating_steps,
    load_package,
    precheck,
    resume_after_power_loss,
)
from dfota.formats.edify_parse import DEVICE_FUNCTIONS
from dfota.formats.zipio import ZipItem, bytes_item, dir_item, link_item, write_zip

MOUNT = 'mount("ubifs", "MTD", "system", "/system");\n'
V1 = b"Project Name: RG520NNADA_VB\nProject Rev : R01A01_01.001\n"
V2 = b"Project Name: RG520NNADA_VB\nProject Rev : R01A01_01.002\n"


def noise(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


APP1 = noise(1, 30000)
APP2 = APP1[:10000] + b"new code" + APP1[10000:25000] + noise(2, 3000)
TOOL1 = noise(3, 20000)
TOOL2 = TOOL1[:15000] + noise(4, 500) + TOOL1[15000:]
BOOT1 = noise(5, 8000)
BOOT2 = BOOT1[:4000] + noise(6, 5000)

SOURCE: dict[str, EntrySpec] = {
    "etc": (DIR, 0o755, 0, 0, b""),
    "etc/quectel-project-version": (FILE, 0o644, 0, 0, V1),
    "bin": (DIR, 0o755, 0, 0, b""),
    "bin/app": (FILE, 0o755, 0, 0, APP1),
    "bin/tool": (FILE, 0o750, 1000, 1001, TOOL1),
    "lib": (DIR, 0o755, 0, 0, b""),
    "lib/old.so": (FILE, 0o644, 0, 0, b"old library"),
    "lib/link.so": (SYMLINK, 0o777, 0, 0, "old.so"),
    "lib/olddir": (DIR, 0o755, 0, 0, b""),
    "lib/olddir/x": (FILE, 0o644, 0, 0, b"x"),
    "data": (DIR, 0o755, 0, 0, b""),
    "data/conf": (FILE, 0o600, 0, 0, b"keep me"),
}

_names = itertools.count()


def device(entries: Mapping[str, EntrySpec] | None = None, **kwargs: Any) -> Device:
    return Device.from_system(SOURCE if entries is None else entries, {"boot": BOOT1}, **kwargs)


def source_file_bytes() -> int:
    """What the source module's files hold, in bytes."""
    return sum(len(cast(bytes, v[4])) for v in SOURCE.values() if v[0] == FILE)


def roomy_or_tight(tight: bool) -> Device:
    """The source module; `tight`: a /system with 60 KB free."""
    used = source_file_bytes()
    return device(system_capacity=used + 60_000 if tight else None)


def package(tmp: Path, script: str | bytes, files: dict[str, bytes] | None = None,
            items: tuple[ZipItem, ...] = (), version: bytes = V1) -> Path:
    path = tmp / f"update{next(_names)}.zip"
    text = script.encode() if isinstance(script, str) else script
    entries = [bytes_item(SCRIPT_NAME, text), bytes_item("quectel-project-version", version)]
    entries += [bytes_item(name, data) for name, data in (files or {}).items()]
    write_zip(path, [*entries, *items])
    return path


def run(tmp: Path, body: str, files: dict[str, bytes] | None = None,
        dev: Device | None = None, items: tuple[ZipItem, ...] = ()) -> tuple[UpdateResult, Device]:
    dev = device() if dev is None else dev
    return apply_package(package(tmp, MOUNT + body, files, items), dev), dev


def entry(dev: Device, path: str) -> Entry | None:
    return dev.entries().get(path)


def patch_call(path: str, old: bytes, new: bytes, entry_name: str) -> str:
    return (f'apply_patch("/system/{path}", "-", "{sha1(new)}", "{len(new)}", "{sha1(old)}", '
            f'package_extract_file("{entry_name}"))')


# --- script syntax and aborts -----------------------------------------------------------------


@pytest.mark.parametrize(
    "script",
    [
        b'ui_print("a");\r\nui_print("b");\n',
        b'ui_print("a");\n# last comment without newline',
        b"",
        b"   \n\t\n",
        b'ui_print("a");\nno_such_function("b");\n',
    ],
    ids=["crlf", "final-comment", "empty", "blank", "unknown-function"],
)
def test_script_syntax_errors_exit_6(tmp_path: Path, script: bytes) -> None:
    dev = device()
    result = apply_package(package(tmp_path, script), dev)
    assert (result.updater_exit, result.code, result.steps) == (6, 502, 0)


def test_abort_exits_7_with_its_message_and_error_code(tmp_path: Path) -> None:
    result, _ = run(tmp_path, 'abort("E123: this module is not the right one");')
    assert (result.updater_exit, result.code) == (7, 123)
    assert result.message == "E123: this module is not the right one"
    plain, _ = run(tmp_path, 'abort("stop");')
    assert (plain.updater_exit, plain.code, plain.message) == (7, 502, "stop")
    bare, _ = run(tmp_path, "abort();")
    assert bare.message == "called abort()"


def test_failed_assert_aborts_with_the_expression_text(tmp_path: Path) -> None:
    result, _ = run(tmp_path, 'ui_print("x");\nassert("t", getprop("ro.x") == "y");')
    assert result.updater_exit == 7
    assert result.message == 'assert failed: getprop("ro.x") == "y"'
    assert result.log[0] == "ui_print x"


def test_a_blob_where_a_string_is_expected_aborts(tmp_path: Path) -> None:
    result, _ = run(tmp_path, 'ui_print(package_extract_file("f"));', {"f": b"data"})
    assert result.updater_exit == 7
    assert "expecting string" in result.message


def test_run_program_and_format_abort_on_the_host(tmp_path: Path) -> None:
    for call in ('run_program("/sbin/reboot")', 'format("ubifs", "MTD", "system", "0", "/s")'):
        result, _ = run(tmp_path, call + ";")
        assert (result.updater_exit, result.code) == (7, 502)
        assert "not supported" in result.message


def test_every_function_the_parser_knows_has_its_model() -> None:
    """The functions a script may call (the parser's list) are the ones the updater runs."""
    assert set(FUNCTIONS) == DEVICE_FUNCTIONS


# --- package and zip reading ---------------------------------------------------------------


def test_not_a_zip_or_no_script_is_504(tmp_path: Path) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"this is not a zip at all" * 10)
    result = apply_package(junk, device())
    assert (result.updater_exit, result.code) == (3, 504)
    checked = precheck(junk, device())
    assert checked is not None and checked.code == 504
    no_script = tmp_path / "noscript.zip"
    write_zip(no_script, [bytes_item("quectel-project-version", V1)])
    result = apply_package(no_script, device())
    assert (result.updater_exit, result.code) == (4, 504)
    checked = precheck(no_script, device())
    assert checked is not None and checked.code == 504


def test_precheck_compares_the_project_version_byte_for_byte(tmp_path: Path) -> None:
    assert precheck(package(tmp_path, "ui_print(\"x\");\n"), device()) is None
    other = precheck(package(tmp_path, "ui_print(\"x\");\n", version=V1 + b"\n"), device())
    assert other is not None and other.code == 505
    missing = dict(SOURCE)
    del missing["etc/quectel-project-version"]
    gone = precheck(package(tmp_path, "ui_print(\"x\");\n"), device(missing))
    assert gone is not None and gone.code == 505


def test_zips_the_device_reader_refuses(tmp_path: Path) -> None:
    good = package(tmp_path, MOUNT)
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    stub = tmp_path / "stub.zip"
    stub.write_bytes(b"#!/bin/sh\nexit 0\n" + good.read_bytes())  # unzip still reads it
    for path in (empty, stub):
        result = apply_package(path, device())
        assert (result.updater_exit, result.code) == (3, 504)


def test_only_stored_and_deflated_entries_can_be_read(tmp_path: Path) -> None:
    path = tmp_path / "bzip2.zip"
    script = MOUNT + ('package_extract_file("system/b", "/system/copy") && abort("read");\n'
                      'package_extract_dir("system", "/system") || abort("dir");')
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(SCRIPT_NAME, script)
        zf.writestr("system/a", b"stored")
        zf.writestr("system/b", b"bzip2" * 100, compress_type=zipfile.ZIP_BZIP2)
        zf.writestr("system/c", b"after")
    dev = device()
    result = apply_package(path, dev)
    assert result.code == 0, result.message
    assert dev.host_read("/system/a") == b"stored"
    assert dev.host_read("/system/b") == b""  # opened, nothing inflated
    assert dev.host_read("/system/c") is None


def test_entries_made_on_another_host_reject_the_package(tmp_path: Path) -> None:
    path = tmp_path / "ntfs.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(SCRIPT_NAME, MOUNT)
        info = zipfile.ZipInfo("system/a")
        info.create_system = 11
        zf.writestr(info, b"a")
    result = apply_package(path, device())
    assert (result.updater_exit, result.code) == (3, 504)


def test_duplicate_names_the_first_wins(tmp_path: Path) -> None:
    path = tmp_path / "dup.zip"
    with zipfile.ZipFile(path, "w") as zf, pytest.warns(UserWarning):
        zf.writestr(SCRIPT_NAME, MOUNT + 'package_extract_dir("system", "/system");\n'
                    'package_extract_file("system/dup", "/system/copy");')
        zf.writestr("system/dup", b"first")
        zf.writestr("system/dup", b"second")
    dev = device()
    assert apply_package(path, dev).code == 0
    assert dev.host_read("/system/dup") == b"first"
    assert dev.host_read("/system/copy") == b"first"


def test_crcs_are_not_checked(tmp_path: Path) -> None:
    data = b"payload without the crc bytes in it"
    path = package(tmp_path, MOUNT + 'package_extract_dir("system", "/system");',
                   {"system/f": data})
    raw = path.read_bytes()
    crc = struct.pack("<I", zlib.crc32(data))
    assert raw.count(crc) == 2  # local header and central directory
    path.write_bytes(raw.replace(crc, b"\0\0\0\0"))
    dev = device()
    assert apply_package(path, dev).code == 0
    assert dev.host_read("/system/f") == data


def as_deflated(path: Path, name: bytes, size: int) -> None:
    """Mark a stored entry as deflated in the central directory (all the device reads)."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")
    while raw[at + 46 : at + 46 + len(name)] != name:
        at = raw.index(b"PK\x01\x02", at + 4)
    struct.pack_into("<H", raw, at + 10, 8)
    struct.pack_into("<I", raw, at + 24, size)
    path.write_bytes(bytes(raw))


def test_a_corrupt_deflated_entry_is_truncated_and_reported_as_success(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = bytes(rng.choice(b"abcdefgh \n") for _ in range(200000))
    deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    good = deflater.compress(data[:100000]) + deflater.flush(zlib.Z_FULL_FLUSH)
    broken = good + b"\x07" + b"\0" * 100  # a final block of the reserved type 3
    script = MOUNT + 'package_extract_dir("system", "/system") || abort("extract failed");'
    path = package(tmp_path, script, {"system/big": broken, "system/later": b"after it"})
    as_deflated(path, b"system/big", len(data))
    dev = device()
    result = apply_package(path, dev)
    assert (result.updater_exit, result.code) == (0, 0)
    assert dev.host_read("/system/big") == data[: 3 * 32768]  # whole inflate buffers only
    assert dev.host_read("/system/later") is None  # the device stops at the bad entry


# --- apply_patch_check and apply_patch ------------------------------------------------------


def test_apply_patch_check_accepts_source_target_or_saved_copy(tmp_path: Path) -> None:
    check = 'apply_patch_check("/system/bin/app", "{}", "{}") || abort("E510: no match");'
    good = check.format(sha1(APP2), sha1(APP1))
    assert run(tmp_path, good)[0].code == 0
    done = device()
    done.put("/system/bin/app", FILE, 0o755, 0, 0, APP2)
    assert run(tmp_path, good, dev=done)[0].code == 0
    changed = device()
    changed.put("/system/bin/app", FILE, 0o755, 0, 0, APP1 + b"!")
    assert run(tmp_path, good, dev=changed)[0].code == 510
    changed.put(SAVED_FILE, FILE, 0o755, 0, 0, APP1)
    assert run(tmp_path, good, dev=changed)[0].code == 0


def test_apply_patch_check_follows_symlinks(tmp_path: Path) -> None:
    dev = device()
    dev.put("/system/bin/alias", SYMLINK, 0o777, 0, 0, "app")
    body = f'assert(apply_patch_check("/system/bin/alias", "{sha1(APP1)}"));'
    assert run(tmp_path, body, dev=dev)[0].code == 0


def test_a_failed_assert_of_apply_patch_check_is_510(tmp_path: Path) -> None:
    result, _ = run(tmp_path, f'assert(apply_patch_check("/system/bin/app", "{"0" * 40}"));')
    assert (result.updater_exit, result.code) == (7, 510)


def test_apply_patch_check_reads_raw_partitions(tmp_path: Path) -> None:
    spec = f"MTD:boot:{len(BOOT1)}:{sha1(BOOT1)}:{len(BOOT2)}:{sha1(BOOT2)}"
    assert run(tmp_path, f'assert(apply_patch_check("{spec}"));')[0].code == 0
    other = Device.from_system(SOURCE, {"boot": BOOT1[::-1]})
    assert run(tmp_path, f'assert(apply_patch_check("{spec}"));', dev=other)[0].code == 510


def test_apply_patch_keeps_the_source_mode_and_owner(tmp_path: Path) -> None:
    body = patch_call("bin/tool", TOOL1, TOOL2, "p/tool") + ' || abort("E510: tool");'
    result, dev = run(tmp_path, body, {"p/tool": bsdiff4.diff(TOOL1, TOOL2)})
    assert (result.code, result.steps) == (0, 2)  # <file>.patch written, then renamed
    assert entry(dev, "bin/tool") == Entry("bin/tool", FILE, 0o750, 1000, 1001, len(TOOL2),
                                           sha1(TOOL2))
    assert entry(dev, "bin/tool.patch") is None


def test_apply_patch_on_a_patched_file_succeeds_at_once(tmp_path: Path) -> None:
    dev = device()
    dev.put("/system/bin/tool", FILE, 0o755, 0, 0, TOOL2)
    body = patch_call("bin/tool", TOOL1, TOOL2, "missing.p") + ' || abort("E510: tool");'
    result, _ = run(tmp_path, body, dev=dev)
    assert (result.code, result.steps) == (0, 0)


def test_apply_patch_failure_does_not_abort_by_itself(tmp_path: Path) -> None:
    wrong = bsdiff4.diff(TOOL1, TOOL2 + b"x")
    body = patch_call("bin/tool", TOOL1, TOOL2, "p/tool") + ';\nui_print("went on");'
    result, dev = run(tmp_path, body, {"p/tool": wrong})
    assert (result.updater_exit, result.code) == (0, 0)
    assert "ui_print went on" in result.log
    assert dev.host_read("/system/bin/tool") == TOOL1
    assert dev.host_read("/system/bin/tool.patch") == TOOL2 + b"x"  # left behind


def test_a_patch_giving_the_wrong_sha1_is_caught(tmp_path: Path) -> None:
    wrong = bsdiff4.diff(TOOL1, TOOL2 + b"x")
    body = patch_call("bin/tool", TOOL1, TOOL2, "p/tool") + ' || abort("E510: tool");'
    result, dev = run(tmp_path, body, {"p/tool": wrong})
    assert (result.updater_exit, result.code) == (7, 510)
    assert "patch did not produce expected sha1" in result.log
    assert dev.host_read("/system/bin/tool") == TOOL1


def test_a_corrupt_patch_moves_the_source_to_the_cache(tmp_path: Path) -> None:
    # The device retries a patch that fails to apply the low-space way: the source is
    # copied to /cache/saved.file and deleted before the second attempt.
    body = patch_call("bin/tool", TOOL1, TOOL2, "p/tool") + ' || abort("E510: tool");'
    result, dev = run(tmp_path, body, {"p/tool": b"BSDIFF40" + b"\0" * 40})
    assert result.code == 510
    assert dev.host_read("/system/bin/tool") is None
    assert dev.host_read(SAVED_FILE) == TOOL1
    again, _ = run(tmp_path, f'assert(apply_patch_check("/system/bin/tool", "{sha1(TOOL1)}"));',
                   dev=dev)
    assert again.code == 0


@pytest.mark.parametrize("patch", [b"IMGDIFF2" + b"\0" * 60, b"XYZDIFF9" + b"\0" * 60, b""])
def test_patches_the_host_cannot_apply_fail(tmp_path: Path, patch: bytes) -> None:
    body = patch_call("bin/tool", TOOL1, TOOL2, "p/tool") + ' || abort("E510: tool");'
    result, dev = run(tmp_path, body, {"p/tool": patch})
    assert result.code == 510
    assert dev.host_read("/system/bin/tool.patch") == b""


def test_apply_patch_when_space_is_short_goes_through_the_cache(tmp_path: Path) -> None:
    used = sum(len(cast("bytes | str", v[4])) for v in SOURCE.values())
    dev = device(system_capacity=used + 100_000)
    body = patch_call("bin/app", APP1, APP2, "p/app") + ' || abort("E510: app");'
    pkg = package(tmp_path, MOUNT + body, {"p/app": bsdiff4.diff(APP1, APP2)})
    result = apply_package(pkg, dev.copy())
    # saved.file written, source deleted, .patch written, renamed, saved.file deleted
    assert (result.code, result.steps) == (0, 5)
    halfway = dev.copy()
    with pytest.raises(PowerLoss):
        apply_package(pkg, halfway, power_loss_at=2)
    assert halfway.host_read("/system/bin/app") is None
    assert halfway.host_read(SAVED_FILE) == APP1
    saved = halfway.entries("/cache")["saved.file"]
    assert (saved.mode, saved.uid, saved.gid) == (0o755, 0, 0)
    assert apply_package(pkg, halfway).code == 0
    assert entry(halfway, "bin/app") == Entry("bin/app", FILE, 0o755, 0, 0, len(APP2),
                                              sha1(APP2))


def test_apply_patch_space_checks_the_cache_and_frees_loose_files(tmp_path: Path) -> None:
    dev = device(cache_capacity=50_000)
    dev.put("/cache/old.log", FILE, 0o644, 0, 0, b"x" * 30_000)
    dev.put("/cache/recovery/last_log", FILE, 0o644, 0, 0, b"y" * 10_000)
    result, _ = run(tmp_path, 'assert(apply_patch_space("30000"));', dev=dev)
    assert (result.code, result.steps) == (0, 1)
    assert dev.host_read("/cache/old.log") is None
    assert dev.host_read("/cache/recovery/last_log") is not None  # not a loose file
    short, _ = run(tmp_path, 'assert(apply_patch_space("60000"));', dev=dev)
    assert (short.updater_exit, short.code) == (7, 511)


# --- extraction -------------------------------------------------------------------------------


def test_package_extract_dir_rules(tmp_path: Path) -> None:
    dev = device()
    dev.put("/system/etc/conf", FILE, 0o600, 1000, 1000, b"old")
    dev.put("/system/lib/real.so", FILE, 0o640, 0, 3, b"real")
    dev.put("/system/lib/alias.so", SYMLINK, 0o777, 0, 0, "real.so")
    items = (
        bytes_item("system/etc/conf", b"new conf", 0o644),
        bytes_item("system/bin/new", b"new binary", 0o755),
        bytes_item("system/a/b/c/deep", b"deep", 0o600),
        link_item("system/bin/sh", "busybox"),
        dir_item("system/emptydir", 0o700),
        bytes_item("system/lib/alias.so", b"through the link"),
        bytes_item("system/../cache/escaped", b"dot dot"),
    )
    result, dev = run(tmp_path, 'package_extract_dir("system", "/system") || abort("x");',
                      dev=dev, items=items)
    assert result.code == 0
    entries = dev.entries()
    assert entries["etc/conf"].mode == 0o600 and entries["etc/conf"].uid == 1000
    assert dev.host_read("/system/etc/conf") == b"new conf"
    assert (entries["bin/new"].mode, entries["bin/new"].uid) == (0o644, 0)
    assert entries["a/b/c/deep"].mode == 0o644
    assert [entries[d].mode for d in ("a", "a/b", "a/b/c")] == [0o755] * 3
    assert entries["bin/sh"] == Entry("bin/sh", FILE, 0o644, 0, 0, 7, sha1(b"busybox"))
    assert "emptydir" not in entries
    assert entries["lib/alias.so"].kind == SYMLINK
    assert dev.host_read("/system/lib/real.so") == b"through the link"
    assert entries["lib/real.so"].mode == 0o640
    assert dev.host_read("/cache/escaped") == b"dot dot"


def test_package_extract_file_rules(tmp_path: Path) -> None:
    body = ('package_extract_file("f", "/system/etc/f") || abort("one");\n'
            'package_extract_file("f", "/system/nodir/f") && abort("two");\n'
            'package_extract_file("absent", "/system/etc/g") && abort("three");\n'
            'package_extract_file("f", "/system/etc/conf") || abort("four");')
    dev = device()
    dev.put("/system/etc/conf", FILE, 0o640, 5, 6, b"old")
    result, dev = run(tmp_path, body, {"f": b"content"}, dev=dev)
    assert result.code == 0, result.message
    entries = dev.entries()
    assert (entries["etc/f"].mode, entries["etc/f"].uid, entries["etc/f"].gid) == (0o600, 0, 0)
    assert "nodir" not in entries and "etc/g" not in entries
    assert (entries["etc/conf"].mode, entries["etc/conf"].uid) == (0o640, 5)


# --- delete, symlink, rename --------------------------------------------------------------


def test_delete_unlinks_files_only_and_never_aborts(tmp_path: Path) -> None:
    body = ('ui_print(delete("/system/lib/old.so", "/system/lib/olddir", "/system/nothing",'
            ' "/system/lib/link.so"));')
    result, dev = run(tmp_path, body)
    assert result.code == 0
    assert "ui_print 2" in result.log  # how many were removed
    entries = dev.entries()
    assert "lib/old.so" not in entries and "lib/link.so" not in entries
    assert "lib/olddir/x" in entries


def test_delete_recursive_does_not_follow_symlinks(tmp_path: Path) -> None:
    dev = device()
    dev.put("/system/lib/olddir/to_data", SYMLINK, 0o777, 0, 0, "/system/data")
    result, dev = run(tmp_path, 'delete_recursive("/system/lib/olddir");', dev=dev)
    assert result.code == 0
    entries = dev.entries()
    assert not any(p.startswith("lib/olddir") for p in entries)
    assert "data/conf" in entries


def test_symlink_replaces_and_makes_parents_0700(tmp_path: Path) -> None:
    body = ('symlink("new.so", "/system/lib/link.so", "/system/lib/old.so");\n'
            'symlink("busybox", "/system/sbin/x/sh");')
    result, dev = run(tmp_path, body)
    assert result.code == 0
    entries = dev.entries()
    assert entries["lib/link.so"].link == "new.so"
    assert entries["lib/old.so"] == Entry("lib/old.so", SYMLINK, 0o777, 0, 0, 6, "", "new.so")
    assert entries["sbin"].mode == entries["sbin/x"].mode == 0o700
    assert entries["sbin/x/sh"].link == "busybox"


def test_symlink_fails_on_a_directory_and_returns_empty(tmp_path: Path) -> None:
    result, _ = run(tmp_path, 'symlink("x", "/system/lib/olddir");')
    assert (result.updater_exit, result.code) == (7, 502)
    assert "some symlinks failed" in result.message
    empty, _ = run(tmp_path, 'symlink("x", "/system/lib/new") || abort("symlink gave empty");')
    assert empty.message == "symlink gave empty"


def test_rename_makes_parents_and_accepts_a_done_move(tmp_path: Path) -> None:
    body = 'rename("/system/data/conf", "/system/moved/here/conf");'
    result, dev = run(tmp_path, body)
    assert result.code == 0
    entries = dev.entries()
    assert entries["moved/here/conf"].mode == 0o600 and entries["moved"].mode == 0o700
    again = apply_package(package(tmp_path, MOUNT + body), dev)
    assert again.code == 0
    missing, _ = run(tmp_path, 'rename("/system/none", "/system/other");')
    assert missing.updater_exit == 7


# --- permissions -------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "mode"), [("0755", 0o755), ("755", 0o1363),
                                             ("0x1ed", 0o755), ("04755", 0o4755)])
def test_set_perm_reads_numbers_like_c(tmp_path: Path, text: str, mode: int) -> None:
    result, dev = run(tmp_path, f'set_perm(0, 2000, {text}, "/system/bin/app");')
    assert result.code == 0
    got = entry(dev, "bin/app")
    assert got is not None and (got.mode, got.uid, got.gid) == (mode, 0, 2000)


def test_set_perm_refuses_a_bad_number(tmp_path: Path) -> None:
    result, _ = run(tmp_path, 'set_perm(0, 0, "0755x", "/system/bin/app");')
    assert result.updater_exit == 7 and "not a valid mode" in result.message
    assert result.steps == 0


def test_set_perm_on_a_missing_path_aborts_after_the_others(tmp_path: Path) -> None:
    result, dev = run(tmp_path, 'set_perm(1, 2, 0700, "/system/missing", "/system/bin/app");')
    assert (result.updater_exit, result.code) == (7, 502)
    got = entry(dev, "bin/app")
    assert got is not None and (got.mode, got.uid, got.gid) == (0o700, 1, 2)


def test_set_perm_skips_symlinks(tmp_path: Path) -> None:
    result, dev = run(tmp_path, 'set_perm(5, 5, 0600, "/system/lib/link.so");')
    assert (result.code, result.steps) == (0, 0)
    old = entry(dev, "lib/old.so")
    assert old is not None and (old.mode, old.uid) == (0o644, 0)


def test_set_perm_recursive_rules(tmp_path: Path) -> None:
    body = 'set_perm_recursive(0, 3, 0750, 0640, "/system/lib", "/system/missing");'
    result, dev = run(tmp_path, body)
    assert result.code == 0
    entries = dev.entries()
    assert (entries["lib"].mode, entries["lib/olddir"].mode) == (0o750, 0o750)
    assert (entries["lib/old.so"].mode, entries["lib/olddir/x"].gid) == (0o640, 3)
    assert entries["lib/link.so"].gid == 0
    assert result.steps == 4


def test_set_metadata_and_recursive(tmp_path: Path) -> None:
    body = ('set_metadata("/system/bin/app", "uid", "7", "gid", "8", "mode", "0700");\n'
            'set_metadata_recursive("/system/lib", "uid", "0", "gid", "9", "dmode", "0711",'
            ' "fmode", "0600", "selabel", "u:object_r:system_file:s0");\n'
            'set_metadata("/system/missing", "mode", "0700");')
    result, dev = run(tmp_path, body)
    assert result.code == 0
    entries = dev.entries()
    assert (entries["bin/app"].mode, entries["bin/app"].uid, entries["bin/app"].gid) == \
        (0o700, 7, 8)
    assert (entries["lib/olddir"].mode, entries["lib/olddir/x"].mode) == (0o711, 0o600)
    assert entries["lib/old.so"].gid == 9


# --- the rest of the functions -------------------------------------------------------------


def test_small_functions(tmp_path: Path) -> None:
    dev = device(properties={"ro.build.id": "R01"})
    dev.put("/system/build.prop", FILE, 0o644, 0, 0,
            b"# comment\n  ro.a = one \nro.b=two\nnot a prop\n")
    body = f"""
    getprop("ro.build.id") == "R01" || abort("getprop");
    file_getprop("/system/build.prop", "ro.a") == "one" || abort("file_getprop a");
    file_getprop("/system/build.prop", "ro.none") == "" || abort("file_getprop none");
    sha1_check(read_file("/system/data/conf")) == "{sha1(b"keep me")}" || abort("sha1 1");
    sha1_check(read_file("/system/data/conf"), "{"0" * 40}", "{sha1(b"keep me")}")
        == "{sha1(b"keep me")}" || abort("sha1 2");
    sha1_check(read_file("/system/none"), "{sha1(b"")}") == "" || abort("sha1 3");
    concat("a", "b", "c") == "abc" || abort("concat");
    "a" + "b" == "ab" || abort("plus");
    is_substring("lo w", "hello world") || abort("is_substring");
    less_than_int("-3", "2") || abort("lt");
    greater_than_int("10", "9") || abort("gt");
    !greater_than_int("1x", "0") || abort("not an int");
    ifelse(is_mounted("/system"), "m", "u") == "m" || abort("ifelse");
    if "" then abort("if") else ui_print("else") endif;
    sleep("5") == "5" || abort("sleep");
    stdout("to stdout");
    """
    result, _ = run(tmp_path, body, dev=dev)
    assert result.code == 0, result.message
    assert "stdout: to stdout" in result.log


def test_mounts_are_tracked_and_reset_at_each_start(tmp_path: Path) -> None:
    check = f'apply_patch_check("/system/bin/app", "{sha1(APP1)}") || abort("not visible");'
    dev = device()
    unmounted = apply_package(package(tmp_path, check), dev)
    assert unmounted.message == "not visible"
    body = (check + '\nunmount("/system") || abort("u");\n'
            'is_mounted("/system") && abort("still");\nunmount("/system") && abort("twice");')
    assert run(tmp_path, body, dev=dev)[0].code == 0
    assert run(tmp_path, 'mount("ubifs", "MTD", "x", "/nowhere") && abort("m");')[0].code == 0


def test_progress_is_reported_in_percent(tmp_path: Path) -> None:
    body = ('show_progress(0.2, 0); set_progress(0.5); set_progress(1);'
            ' show_progress(0.8, 10); set_progress(0.25);')
    result, _ = run(tmp_path, body)
    assert result.progress == (0.0, 10.0, 20.0, 20.0, 40.0)


def test_write_raw_image_from_a_blob_or_a_file(tmp_path: Path) -> None:
    body = ('write_raw_image(package_extract_file("boot.img"), "boot") || abort("blob");\n'
            'package_extract_file("abl.elf", "/tmp/abl.elf");\n'
            'write_raw_image("/tmp/abl.elf", "abl") || abort("file");\n'
            'write_raw_image("/tmp/abl.elf", "nowhere") && abort("unknown");')
    dev = Device.from_system(SOURCE, {"boot": BOOT1, "abl": Partition(b"a", 4096)})
    result, dev = run(tmp_path, body, {"boot.img": BOOT2, "abl.elf": b"abl2"}, dev=dev)
    assert result.code == 0, result.message
    assert dev.state().partitions == {"abl": sha1(b"abl2"), "boot": sha1(BOOT2)}
    too_big = Device.from_system(SOURCE, {"boot": Partition(BOOT1, 9000)})
    big, _ = run(tmp_path, 'write_raw_image(package_extract_file("b"), "boot") || abort("x");',
                 {"b": b"z" * 9001}, dev=too_big)
    assert big.message == "x"


# --- the result codes of whole updates -----------------------------------------------------


def full_package(tmp: Path) -> Path:
    """A package shaped like a real one: every kind of change, in the usual order."""
    spec = f"MTD:boot:{len(BOOT1)}:{sha1(BOOT1)}:{len(BOOT2)}:{sha1(BOOT2)}"
    script = f"""{MOUNT}
sha1_check(read_file("/system/etc/quectel-project-version"), "{sha1(V1)}", "{sha1(V2)}")
    || abort("E505: project version differs");
show_progress(0.1, 0);
ui_print("Verifying current system...");
assert(apply_patch_check("/system/bin/app", "{sha1(APP2)}", "{sha1(APP1)}"));
set_progress(0.5);
assert(apply_patch_check("/system/bin/tool", "{sha1(TOOL2)}", "{sha1(TOOL1)}"));
assert(apply_patch_check("{spec}"));
set_progress(1);
assert(apply_patch_space({len(APP1)}));
show_progress(0.8, 10);
delete("/system/lib/old.so", "/system/lib/link.so");
delete_recursive("/system/lib/olddir");
{patch_call("bin/app", APP1, APP2, "patch/system/bin/app.p")}
    || abort("E510: /system/bin/app does not match the source version");
set_progress(0.5);
{patch_call("bin/tool", TOOL1, TOOL2, "patch/system/bin/tool.p")}
    || abort("E510: /system/bin/tool does not match the source version");
write_raw_image(package_extract_file("boot.img"), "boot");
package_extract_dir("system", "/system");
symlink("new.so", "/system/lib/link.so");
symlink("busybox", "/system/sbin/sh");
set_perm_recursive(0, 0, 0755, 0644, "/system/lib");
set_perm(0, 0, 0755, "/system/bin/app", "/system/bin/tool", "/system/sbin",
         "/system/sbin/busybox");
set_progress(1);
show_progress(0.1, 0);
unmount("/system");
"""
    files = {
        "patch/system/bin/app.p": bsdiff4.diff(APP1, APP2),
        "patch/system/bin/tool.p": bsdiff4.diff(TOOL1, TOOL2),
        "boot.img": BOOT2,
        "system/etc/quectel-project-version": V2,
        "system/lib/new.so": b"new library",
        "system/lib/sub/deep/f": b"deep file",
        "system/sbin/busybox": noise(9, 5000),
    }
    return package(tmp, script, files)


TARGET: dict[str, EntrySpec] = {
    "etc": (DIR, 0o755, 0, 0, b""),
    "etc/quectel-project-version": (FILE, 0o644, 0, 0, V2),
    "bin": (DIR, 0o755, 0, 0, b""),
    "bin/app": (FILE, 0o755, 0, 0, APP2),
    "bin/tool": (FILE, 0o755, 0, 0, TOOL2),
    "lib": (DIR, 0o755, 0, 0, b""),
    "lib/new.so": (FILE, 0o644, 0, 0, b"new library"),
    "lib/link.so": (SYMLINK, 0o777, 0, 0, "new.so"),
    "lib/sub": (DIR, 0o755, 0, 0, b""),
    "lib/sub/deep": (DIR, 0o755, 0, 0, b""),
    "lib/sub/deep/f": (FILE, 0o644, 0, 0, b"deep file"),
    "data": (DIR, 0o755, 0, 0, b""),
    "data/conf": (FILE, 0o600, 0, 0, b"keep me"),
    "sbin": (DIR, 0o755, 0, 0, b""),
    "sbin/busybox": (FILE, 0o755, 0, 0, noise(9, 5000)),
    "sbin/sh": (SYMLINK, 0o777, 0, 0, "busybox"),
}


def test_a_full_package_reaches_the_target(tmp_path: Path) -> None:
    pkg = full_package(tmp_path)
    dev = device()
    assert precheck(pkg, dev) is None
    result = apply_package(pkg, dev)
    assert (result.code, result.updater_exit) == (0, 0), result.message
    assert dev.state() == Device.from_system(TARGET, {"boot": BOOT2}).state()
    assert result.steps == count_mutating_steps(pkg, device()) > 20
    assert result.progress == (0.0, 5.0, 10.0, 10.0, 50.0, 90.0, 90.0)
    assert not dev.is_mounted("/system")


def test_a_source_file_changed_by_hand_stops_the_verify_phase_with_510(tmp_path: Path) -> None:
    dev = device()
    dev.put("/system/bin/tool", FILE, 0o750, 1000, 1001, TOOL1[:-1] + b"?")
    before = dev.state()
    result = apply_package(full_package(tmp_path), dev)
    assert (result.updater_exit, result.code, result.steps) == (7, 510, 0)
    assert "apply_patch_check(\"/system/bin/tool\"" in result.message
    assert dev.state() == before


def test_running_out_of_space_is_511(tmp_path: Path) -> None:
    used = source_file_bytes()
    dev = device(system_capacity=used + 4000)
    body = 'package_extract_dir("system", "/system");'
    result, dev = run(tmp_path, body, {"system/big": noise(10, 10000)}, dev=dev)
    assert (result.updater_exit, result.code) == (0, 511)
    assert "no space left" in result.message
    big = dev.host_read("/system/big")
    assert big is not None and len(big) == 4000


@pytest.mark.parametrize("tight", [False, True], ids=["roomy", "tight-system"])
def test_power_loss_at_every_step_then_a_rerun_reaches_the_same_state(
        tmp_path: Path, tight: bool) -> None:
    base = roomy_or_tight(tight)
    pkg = load_package(full_package(tmp_path))
    reference = base.copy()
    assert apply_package(pkg, reference).code == 0
    expected = reference.state()
    assert expected == Device.from_system(TARGET, {"boot": BOOT2}).state()
    total = count_mutating_steps(pkg, base)
    assert total > 20
    for step in range(1, total + 1):
        interrupted = base.copy()
        with pytest.raises(PowerLoss) as lost:
            apply_package(pkg, interrupted, power_loss_at=step)
        assert lost.value.step == step
        result, finished = resume_after_power_loss(pkg, base, step)
        assert result.code == 0, f"step {step} ({lost.value.what}): {result.message}"
        assert finished.state() == expected, f"step {step} ({lost.value.what})"


@pytest.mark.parametrize("tight", [False, True], ids=["roomy", "tight-system"])
def test_re_runs_tried_during_one_run_equal_one_copy_per_power_loss(
        tmp_path: Path, tight: bool) -> None:
    base = roomy_or_tight(tight)
    pkg = load_package(full_package(tmp_path))
    total = count_mutating_steps(pkg, base)
    steps = [*range(1, total + 1), total + 5]  # the last one is never reached
    seen: list[int] = []

    def check(step: int, result: UpdateResult, after: Device) -> None:
        seen.append(step)
        alone, finished = resume_after_power_loss(pkg, base, step)
        assert (result.code, result.message) == (alone.code, alone.message), step
        assert after.state() == finished.state(), step
        assert after.keys() == {p: entry_key(e) for p, e in finished.entries().items()}
        assert after.free_space("/system") == finished.free_space("/system"), step

    for_each_power_loss(pkg, base, steps, check)
    assert seen == steps
    assert base.state() == device().state()  # the device given is left as it was


@pytest.mark.parametrize("tight", [False, True], ids=["roomy", "tight-system"])
def test_a_trial_leaves_the_device_as_it_was(tmp_path: Path, tight: bool) -> None:
    dev = roomy_or_tight(tight)
    pkg = load_package(full_package(tmp_path))
    for step in (3, count_mutating_steps(pkg, dev) // 2):  # part-way, as after a power loss
        with contextlib.suppress(PowerLoss):
            apply_package(pkg, dev, power_loss_at=step)
        before = (dev.state(), dev.keys(), dev.free_space("/system"),
                  dev.free_space("/cache"), {p: m.active for p, m in dev.mounts.items()},
                  dev.listdir("/tmp"), {n: p.data for n, p in dev.partitions.items()})
        with dev.trial():
            assert apply_package(pkg, dev).code == 0
            assert dev.state() != before[0]
        after = (dev.state(), dev.keys(), dev.free_space("/system"),
                 dev.free_space("/cache"), {p: m.active for p, m in dev.mounts.items()},
                 dev.listdir("/tmp"), {n: p.data for n, p in dev.partitions.items()})
        assert after == before, step
        assert dev.hook is None


def test_the_quick_comparison_sees_what_the_full_one_sees() -> None:
    dev = device()
    dev.mount("/system")
    keys = dev.keys()
    for change in ("content", "mode", "owner", "link", "kind", "gone"):
        twin = dev.copy()
        if change == "content":
            twin.write_file("/system/bin/app", b"other", new_mode=0o755)
        elif change == "mode":
            twin.set_owner_mode(twin.lstat("/system/bin/app"), None, None, 0o700, "x")
        elif change == "owner":
            twin.set_owner_mode(twin.lstat("/system/etc"), 5, None, None, "x")
        elif change == "link":
            twin.unlink("/system/lib/link.so")
            twin.symlink("other", "/system/lib/link.so")
        elif change == "kind":
            twin.unlink("/system/lib/link.so")
            twin.mkdir("/system/lib/link.so", 0o755)
        else:
            twin.unlink("/system/bin/app")
        assert twin.keys() != keys, change
    twin = dev.copy()  # a link's own mode and owner are not compared (the updater cannot set them)
    twin.set_owner_mode(twin.lstat("/system/lib/link.so"), 7, 7, 0o700, "x")
    assert twin.keys() == keys


def fresh_digest(dev: Device) -> tuple[object, ...]:
    """`Device.digest` computed from nothing: every cached node digest, and every folder's
    children's shares of it, forgotten on a copy."""
    twin = dev.copy()
    stack = [twin.root]
    while stack:
        node = stack.pop()
        node._digest = node._shares = node._stale = None
        stack += node.children.values()
        if node.mount is not None:
            stack.append(node.mount.fs.root)
    return twin.digest()


@pytest.mark.parametrize("tight", [False, True], ids=["roomy", "tight-system"])
def test_the_kept_digest_follows_every_step_and_every_undo(tmp_path: Path, tight: bool) -> None:
    base = roomy_or_tight(tight)
    pkg = load_package(full_package(tmp_path))
    total = count_mutating_steps(pkg, base)
    dev = base.copy()
    dev.digest()
    seen: list[tuple[object, ...]] = []

    def after_step(step: int) -> None:
        digest = dev.digest()
        assert digest == fresh_digest(dev), step
        seen.append(digest)
        if step % 3 == 0:  # a re-run tried and undone at every third step
            with dev.trial():
                assert apply_package(pkg, dev).code == 0
                assert dev.digest() == fresh_digest(dev), step
            assert dev.digest() == digest == fresh_digest(dev), step

    assert apply_package(pkg, dev, after_step=after_step).code == 0
    assert len(seen) == total and len(set(seen)) > total // 2  # the steps are told apart
    assert dev.digest() == fresh_digest(dev) == Device.from_system(
        TARGET, {"boot": BOOT2}).copy().digest() != base.digest()


def test_the_digest_sees_everything_the_updater_can() -> None:
    dev = device()
    dev.mount("/system")
    digest = dev.digest()
    changes = {
        "content": lambda d: d.write_file("/system/bin/app", b"other", new_mode=0o755),
        "mode": lambda d: d.set_owner_mode(d.lstat("/system/bin/app"), None, None, 0o700, "x"),
        "owner": lambda d: d.set_owner_mode(d.lstat("/system/etc"), 5, None, None, "x"),
        "link": lambda d: (d.unlink("/system/lib/link.so"),
                           d.symlink("other", "/system/lib/link.so")),
        "link owner": lambda d: d.set_owner_mode(d.lstat("/system/lib/link.so"), 7, 7, None,
                                                 "x"),
        "kind": lambda d: (d.unlink("/system/lib/link.so"),
                           d.mkdir("/system/lib/link.so", 0o755)),
        "gone": lambda d: d.unlink("/system/bin/app"),
        "renamed": lambda d: d.rename("/system/bin/app", "/system/bin/ap"),
        "moved, then changed": lambda d: (
            d.rename("/system/bin/app", "/system/lib/app"), d.digest(),
            d.set_owner_mode(d.lstat("/system/lib/app"), None, None, 0o700, "x")),
        "cache file": lambda d: d.write_file("/cache/saved.file", b"x", new_mode=0o600),
        "tmp file": lambda d: d.write_file("/tmp/x", b"", new_mode=0o600),
        "unmounted": lambda d: d.unmount("/system"),
        "partition": lambda d: d.write_partition("boot", BOOT2),
    }
    for name, change in changes.items():
        twin = dev.copy()
        change(twin)
        assert twin.digest() != digest, name
        assert twin.digest() == fresh_digest(twin), name
        with twin.trial():  # and back
            twin.reboot()
            twin.mount("/system")
        assert twin.digest() == fresh_digest(twin), name


_FOLDERS = ["/system/a", "/system/a/b", "/system/c", "/system/lib", "/cache/d", "/tmp/t"]
_LEAVES = [f"{folder}/{name}" for folder in _FOLDERS for name in ("x", "y", "b")]


def _random_change(dev: Device, rng: random.Random) -> bool:
    """One change the updater can make, on paths that often exist; False when it fails as
    the system call would."""
    path, other = rng.choice(_FOLDERS + _LEAVES), rng.choice(_FOLDERS + _LEAVES)
    what = rng.randrange(9)
    try:
        if what == 0:
            dev.write_file(path, rng.choice([b"", b"one", b"two", APP1]), new_mode=0o644)
        elif what == 1:
            dev.mkdir(path, rng.choice([0o755, 0o2750]))
        elif what == 2:
            dev.unlink(path)
        elif what == 3:
            dev.rmdir(path)
        elif what == 4:
            dev.symlink(rng.choice(["x", "../c", "/system/lib/old.so"]), path)
        elif what == 5:
            dev.rename(path, other)
        elif what == 6:
            dev.set_owner_mode(dev.lstat(path), rng.choice([None, 0, 7]),
                               rng.choice([None, 0, 9]), rng.choice([None, 0o700, 0o4755]),
                               path)
        elif what == 7:
            dev.reboot()
            dev.mount("/system")
        else:
            dev.write_partition("boot", rng.choice([BOOT1, BOOT2]))
    except FsError:
        return False
    return True


@pytest.mark.parametrize("seed", range(4))
def test_the_kept_digest_follows_any_changes_in_and_out_of_trials(seed: int) -> None:
    """Random changes (moves between folders, /tmp dropped whole, links, modes, a folder of
    500 entries among them) inside trials opened and undone at random: after each, the kept
    digest is the one computed afresh, and an undone trial gives its digest back."""
    rng = random.Random(seed)
    dev = device({**SOURCE, **{f"lib/many{i}.so": (FILE, 0o644, 0, 0, f"{i}".encode())
                               for i in range(500)}})
    dev.mount("/system")
    trials: list[tuple[contextlib.ExitStack, tuple[object, ...]]] = []
    made = 0
    try:
        for _ in range(150):
            roll = rng.random()
            if roll < 0.08:
                trial = contextlib.ExitStack()
                trials.append((trial, dev.digest()))
                trial.enter_context(dev.trial())
            elif roll < 0.16 and trials:
                trial, before = trials.pop()
                trial.close()
                assert dev.digest() == before == fresh_digest(dev)
            else:
                made += _random_change(dev, rng)
                assert dev.digest() == fresh_digest(dev)
    finally:
        for trial, _ in reversed(trials):
            trial.close()
    assert made > 40  # most changes were made, not refused


def test_the_same_bytes_or_owner_and_mode_again_change_nothing_but_are_a_step() -> None:
    """A re-run rewrites what is there: nothing to undo and no digest forgotten for that."""
    dev = device()
    dev.mount("/system")
    before = dev.digest()
    steps: list[str] = []
    with dev.trial():
        dev.hook = steps.append
        node = dev.lstat("/system/bin/app")
        dev.write_file("/system/bin/app", bytes(whole(dev.load("/system/bin/app").data)),
                       new_mode=0o600, meta=(node.mode, node.uid, node.gid))
        dev.set_owner_mode(node, node.uid, node.gid, node.mode, "/system/bin/app")
        assert dev._journal == [] and node._digest is not None
        dev.write_file("/system/bin/app", b"other", new_mode=0o600)
        assert dev._journal and node._digest is None
    assert steps == ["write /system/bin/app", "chmod /system/bin/app", "write /system/bin/app"]
    assert dev.digest() == before == fresh_digest(dev)


@pytest.mark.parametrize("tight", [False, True], ids=["roomy", "tight-system"])
def test_a_re_run_that_rejoins_the_whole_run_would_have_ended_as_it(
        tmp_path: Path, tight: bool) -> None:
    base = roomy_or_tight(tight)
    pkg = load_package(full_package(tmp_path))
    whole, marks = base.copy(), Marks()
    assert apply_package(pkg, whole, units=MarkRecorder(marks)).code == 0
    total = count_mutating_steps(pkg, base)
    rejoined: list[int] = []

    def check(step: int, result: UpdateResult, after: Device) -> None:
        alone, finished = resume_after_power_loss(pkg, base, step)
        assert result.code == alone.code == 0, step
        if result.rejoined is None:
            assert after.state() == finished.state(), step
        else:
            rejoined.append(step)
            assert result.steps <= alone.steps
            # what the re-run would have done from there on brings it to the whole run's end
            assert finished.state() == whole.state(), step

    for_each_power_loss(pkg, base, range(1, total + 1), check, follow=marks)
    assert len(rejoined) >= total * 3 // 4, (len(rejoined), total)
