"""The host model against the module's real updater (`DFOTA_ORACLE`): the same packages give
the same outcome, tree, partitions and command pipe."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dfota.device.updater import SCRIPT_NAME
from dfota.formats.elf import build_abl_elf
from dfota.formats.filelists import lists_in
from dfota.formats.zipio import bytes_item, write_zip
from dfota.package import plan
from dfota.package.delta import build_delta
from dfota.package.mode import parse_mode
from dfota.proof.verify import VerifyInputs, verify_package
from dfota.settings import DeltaSettings
from tests.builders import (
    base_system,
    binary,
    boot_image,
    d,
    edited,
    f,
    ln,
    next_system,
    write_targetfiles,
)
from tests.oracle import agree
from tests.test_delta import pair, quiet

# every case runs the module's real updater (DFOTA_ORACLE) in a mount namespace of its own
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["all", "rootfs", "modem", "kernel"])
def test_every_change_kind_gives_the_same_result_on_both_updaters(
        oracle: Path, tmp_path: Path, mode: str) -> None:
    settings = pair(tmp_path, mode=mode)
    build_delta(settings, quiet())
    assert agree(oracle, Path(settings.base), settings.workspace.pending_zip).exit == 0


def script_package(tmp: Path, script: bytes) -> tuple[Path, Path]:
    """A tiny source and a package that only runs `script`."""
    source = write_targetfiles(tmp / "source.zip", {"etc/a": f("a\n"), "bin/b": f("b", 0o755)},
                               boot=boot_image(1), abl=build_abl_elf(b"a" * 900))
    package = tmp / "update.zip"
    mount = b'mount("ubifs", "UBI", "system", "/system");\n'  # recovery starts without it
    write_zip(package, [bytes_item(SCRIPT_NAME, mount + script)])
    return source, package


# each found to differ before the model was corrected
SCRIPTS = {
    # ui_print returns its text and a newline; each line goes to the pipe, then an empty one
    "ui_print's value and lines": b'ui_print("a\\n\\nb") == "a\\n\\nb\\n" || abort("E7: no");',
    "the script's value is printed raw": b'ui_print("a"); "x\\ny"',
    # an abort prints every non-empty line of its message, then an empty ui_print, then the
    # code of the last line that starts with E<num>
    "abort lines and code": b'abort("x\\n\\nE12: y\\nz");',
    "E0 is logged": b'abort("E0: zero");',
    "a negative code": b'abort("Efoo\\nE-3: a");',
    "abort without a message": b"abort();",
    "a failed check": b'assert(apply_patch_check("/system/etc/a", "' + b"1" * 40 + b'"));',
    # the pipe gets the fraction as read and the seconds only when they are wholly a number
    "progress values": b'show_progress(0.5, 10); set_progress(0.25); show_progress("abc", "7x");'
                       b'show_progress("1e-1", " 3"); set_progress(2);',
    # the kernel's limits: 255 bytes per name, 4,095 per path, 4,095 per link target
    "a 256-byte name": b'delete("/system/' + b"n" * 256 + b'"); symlink("a", "/system/'
                       + b"n" * 256 + b'");',
    "a 255-byte name": b'symlink("a", "/system/' + b"n" * 255 + b'");',
    "a path of 4,096 bytes": b'symlink("a", "/system/' + b"d" * 254 + b"/" + (b"e" * 254 + b"/")
                             * 14 + b"x" * 263 + b'");',
    "a path of 4,095 bytes": b'symlink("a", "/system/' + b"d" * 254 + b"/" + (b"e" * 254 + b"/")
                             * 14 + b"x" * 262 + b'");',
    "a link target of 4,096 bytes": b'symlink("' + b"t" * 4096 + b'", "/system/l");',
    "a link target of 4,095 bytes with a long name": b'symlink("' + b"t" * 4095
                                                      + b'", "/system/l");',
}


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_the_command_pipe_is_the_real_updaters(oracle: Path, tmp_path: Path,
                                               script: bytes) -> None:
    agree(oracle, *script_package(tmp_path, script))


def long_name_pair(tmp: Path, length: int) -> tuple[DeltaSettings, str]:
    """The sample pair plus a rootfs file with a `length`-byte name, changed a little."""
    name = "usr/share/" + "n" * length
    data = binary(9, 20_000)
    settings = pair(tmp, source={**base_system(), name: f(data)},
                    target={**next_system(), name: f(edited(data, 5, 10_000))})
    return settings, name


@pytest.mark.parametrize(("length", "kind"), [(249, "patched"), (250, "whole"), (252, "whole")])
def test_a_file_whose_patch_name_would_be_too_long_is_shipped_whole(
        oracle: Path, tmp_path: Path, length: int, kind: str) -> None:
    settings, name = long_name_pair(tmp_path, length)
    listed = build_delta(settings, quiet()).summary["changes"]
    assert isinstance(listed, list)
    changes = {c["path"]: c for c in listed}
    assert changes[name]["kind"] == kind
    assert agree(oracle, Path(settings.base), settings.workspace.pending_zip).exit == 0


def test_a_package_that_patches_a_252_byte_name_fails_verify_as_the_module_aborts(
        oracle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, _ = long_name_pair(tmp_path, 252)
    monkeypatch.setattr(plan, "patchable", lambda path, mount="/system": True)  # the old writer
    build_delta(settings, quiet())
    real = agree(oracle, Path(settings.base), settings.workspace.pending_zip)
    assert (real.exit, real.error) == (7, 510)
    report = verify_package(VerifyInputs(settings.workspace.pending_zip, Path(settings.base),
                                         settings.workspace.target_zip, parse_mode("all"),
                                         lists_in(settings.config_dir)), quiet())
    assert not report.ok
    assert "510" in next(c for c in report.checks if not c.ok).detail


def test_a_noota_file_keeps_its_folder_when_the_target_has_none(oracle: Path,
                                                                tmp_path: Path) -> None:
    target = {p: n for p, n in next_system().items() if not p.startswith("etc/webui")}
    settings = pair(tmp_path, target=target)  # the lists name SYSTEM/etc/webui/test.cfg
    build_delta(settings, quiet())
    real = agree(oracle, Path(settings.base), settings.workspace.pending_zip)
    assert real.exit == 0
    assert real.system[b"etc/webui/test.cfg"][4] == hashlib.sha1(b"user settings\n").hexdigest()
    assert real.system[b"etc/webui"][0] == "d"
    assert verify_package(VerifyInputs(settings.workspace.pending_zip, Path(settings.base),
                                       settings.workspace.target_zip, parse_mode("all"),
                                       lists_in(settings.config_dir)), quiet()).ok


def test_a_noota_path_absent_from_the_source_is_not_created(oracle: Path,
                                                            tmp_path: Path) -> None:
    source = {p: n for p, n in base_system().items() if not p.startswith("etc/webui")}
    target = {**{p: n for p, n in next_system().items() if not p.startswith("etc/webui")},
              "etc/webui/other.cfg": f("other\n")}  # a target with it is refused (fullota)
    settings = pair(tmp_path, source=source, target=target)
    build_delta(settings, quiet())
    real = agree(oracle, Path(settings.base), settings.workspace.pending_zip)
    assert real.exit == 0 and b"etc/webui/test.cfg" not in real.system
    assert verify_package(VerifyInputs(settings.workspace.pending_zip, Path(settings.base),
                                       settings.workspace.target_zip, parse_mode("all"),
                                       lists_in(settings.config_dir)), quiet()).ok


def test_entries_made_in_a_set_group_id_folder_take_its_group(oracle: Path,
                                                              tmp_path: Path) -> None:
    """The kernel's rule, which the real updater follows and the model now does too: a link,
    a file or a folder the package makes inside a set-group-ID folder gets the folder's group
    (a folder also keeps the set-group-ID bit). Found by the random pairs."""
    source = {**base_system(), "srv": d(0o2775, 0, 1000), "srv/old": f("x", gid=1000)}
    target = {**next_system(), "srv": d(0o2775, 0, 1000), "srv/old": f("x", gid=1000),
              "srv/link": ln("old"), "srv/new": f("new\n"), "srv/sub": d(),
              "srv/sub/file": f("in sub\n")}
    settings = pair(tmp_path, source=source, target=target)
    # the base records its owners (META/), as the real updater's /system then has them
    write_targetfiles(Path(settings.base), source, boot=boot_image(1),
                      abl=build_abl_elf(b"a" * 900), meta=True)
    build_delta(settings, quiet())
    real = agree(oracle, Path(settings.base), settings.workspace.pending_zip)
    assert real.exit == 0
    # the link keeps the folder's group (set_perm skips links); the file and the folder the
    # package makes get their target owners set after
    assert [real.system[name][3] for name in (b"srv/link", b"srv/new", b"srv/sub")] \
        == [1000, 0, 0]  # (type, mode, uid, gid, ...)
