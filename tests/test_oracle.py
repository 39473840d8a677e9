"""The host model against the module's real updater (`DFOTA_ORACLE`): the same packages give
the same outcome, tree, partitions and command pipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.delta import build_delta
from tasks.elf import build_abl_elf
from tasks.updater import SCRIPT_NAME
from tasks.zipio import bytes_item, write_zip
from tests.builders import boot_image, f, write_targetfiles
from tests.oracle import agree
from tests.test_delta import pair, quiet


@pytest.mark.parametrize("mode", ["all", "rootfs", "modem", "kernel"])
def test_every_change_kind_gives_the_same_result_on_both_updaters(
        oracle: Path, tmp_path: Path, mode: str) -> None:
    settings = pair(tmp_path, mode=mode)
    build_delta(settings, quiet())
    assert agree(oracle, Path(settings.base), settings.pending_zip).exit == 0


def script_package(tmp: Path, script: bytes) -> tuple[Path, Path]:
    """A tiny source and a package that only runs `script`."""
    source = write_targetfiles(tmp / "source.zip", {"etc/a": f("a\n"), "bin/b": f("b", 0o755)},
                               boot=boot_image(1), abl=build_abl_elf(b"a" * 900))
    package = tmp / "update.zip"
    write_zip(package, [bytes_item(SCRIPT_NAME, script)])
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
}


@pytest.mark.parametrize("script", SCRIPTS.values(), ids=SCRIPTS.keys())
def test_the_command_pipe_is_the_real_updaters(oracle: Path, tmp_path: Path,
                                               script: bytes) -> None:
    agree(oracle, *script_package(tmp_path, script))
