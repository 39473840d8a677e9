"""Same inputs, same bytes: targetfiles.zip and update.zip do not depend on the machine's state.

Two runs of `doit targetfiles delta` from the same inputs, in two workspaces at different
paths, with a different clock (libfaketime, Debian package `faketime`), time zone, locale,
umask and temporary folder, and with every input's timestamps moved, must give byte-identical
`targetfiles.zip` and `update.zip` (and archive the target with the same bytes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.oracle import check_published
from tests.workspace import PROJECT, SAMPLE_LISTS, Workspace

pytestmark = pytest.mark.slow  # every case runs doit twice

# names whose bytes would change with the locale's encoding if a run depended on it
ODD_NAMES = ["ünï cödé", "new\nline", "日本語", 'quo"te and space']


def workspace(sample_sdk: Path, root: Path) -> Workspace:
    root.mkdir(parents=True)
    shutil.copytree(sample_sdk / "ql-ol-extsdk", root / "sdk", symlinks=True)
    shutil.copyfile(sample_sdk / "firmware/upgrade/targetfiles.zip", root / "source.zip")
    ws = Workspace(root, root / "sdk", root / "source.zip")
    odd = ws.rootfs / "usr/share/odd"
    odd.mkdir()
    for i, name in enumerate(ODD_NAMES):
        (odd / name).write_text(f"{i}\n")
    return ws


def build(ws: Workspace, *, env: dict[str, str], umask: int,
          wrapper: list[str]) -> subprocess.CompletedProcess[str]:
    argv = ["targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *ws.folders,
            "delta", *ws.folders, "--config", str(SAMPLE_LISTS)]
    command = [*wrapper, sys.executable, "-m", "doit", "--db-file", str(ws.root / "doit.db"),
               *argv]
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("LC_", "LANG", "TZ", "TMP", "FAKETIME"))}
    return subprocess.run(command, cwd=PROJECT, env={**clean, **env}, capture_output=True,
                          text=True, errors="replace", check=False,
                          preexec_fn=lambda: os.umask(umask))


def move_timestamps(folder: Path, seconds: int) -> None:
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, ns=(seconds * 10**9, seconds * 10**9), follow_symlinks=False)


def test_two_runs_on_different_machines_states_give_the_same_bytes(
        sample_sdk: Path, tmp_path: Path) -> None:
    faketime = shutil.which("faketime")
    if faketime is None:
        pytest.skip("libfaketime is needed to change the clock (Debian package faketime)")
    first = workspace(sample_sdk, tmp_path / "a")
    second = workspace(sample_sdk, tmp_path / "b" / "a longer path, with spaces")
    move_timestamps(second.sdk, 1_900_000_000)
    temp_a, temp_b = tmp_path / "tmp-a", tmp_path / "tmp-b"
    temp_a.mkdir()
    temp_b.mkdir()

    runs = [
        build(first, umask=0o022, wrapper=[],
              env={"TZ": "UTC", "LC_ALL": "C.UTF-8", "TMPDIR": str(temp_a)}),
        build(second, umask=0o077, wrapper=[faketime, "-f", "@2031-03-04 05:06:07"],
              env={"TZ": "Pacific/Chatham", "LANG": "C", "LC_ALL": "POSIX",
                   "TMPDIR": str(temp_b)}),
    ]
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    assert "2031" in next((second.root / "state/logs").iterdir()).name  # the clock was moved

    for name in ("targetfiles.zip", ".unverified/update.zip"):  # delta leaves it there
        assert (first.out / name).read_bytes() == (second.out / name).read_bytes(), name
    keys = sorted(p.name for p in first.archive.iterdir() if p.is_dir())
    assert keys == sorted(p.name for p in second.archive.iterdir() if p.is_dir())
    for key in keys:
        assert (first.archive / key / "targetfiles.zip").read_bytes() == (
            second.archive / key / "targetfiles.zip").read_bytes()
    with zipfile.ZipFile(first.out / "targetfiles.zip") as zf:
        names = set(zf.namelist())
    for name in ODD_NAMES:
        assert f"SYSTEM/usr/share/odd/{name}" in names
    check_published(first.out)  # the real updater too, when DFOTA_ORACLE names it


def test_a_latin1_locale_is_refused_for_non_ascii_names_and_utf8_mode_gives_the_same_bytes(
        sample_sdk: Path, tmp_path: Path) -> None:
    """Fed: the same inputs (non-ASCII names included) built under a Latin-1 locale, where
    Python reads file names as ISO-8859-1 (they would enter the zip as other characters).
    Outcome: exit 1, `error: <file>: file name is not ASCII and this locale reads names as
    iso8859-1: run under a UTF-8 locale (LC_ALL=C.UTF-8) or with PYTHONUTF8=1`, nothing
    written to out/ or the archive; with PYTHONUTF8=1 in the same locale the zips are
    byte-identical to a UTF-8 run's."""
    locales = tmp_path / "locales"
    locales.mkdir()
    made = subprocess.run(["localedef", "-i", "en_US", "-f", "ISO-8859-1",
                           str(locales / "en_US.ISO-8859-1")], capture_output=True, text=True)
    if made.returncode != 0 or not (locales / "en_US.ISO-8859-1").exists():
        pytest.skip(f"cannot make a Latin-1 locale (Debian package locales): {made.stderr}")
    latin1 = {"LOCPATH": str(locales), "LC_ALL": "en_US.ISO-8859-1"}
    reference = workspace(sample_sdk, tmp_path / "utf8")
    run = build(reference, umask=0o022, wrapper=[], env={"LC_ALL": "C.UTF-8"})
    assert run.returncode == 0, run.stdout + run.stderr

    refused = workspace(sample_sdk, tmp_path / "latin1")
    run = build(refused, umask=0o022, wrapper=[], env=latin1)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode == 1 and len(errors) == 1, run.stdout + run.stderr
    assert errors[0].startswith(f"error: {refused.rootfs}/usr/share/odd/")
    assert errors[0].endswith(": file name is not ASCII and this locale reads names as "
                              "iso8859-1: run under a UTF-8 locale (LC_ALL=C.UTF-8) or with "
                              "PYTHONUTF8=1")
    assert not refused.out.exists() and not refused.archive.exists()

    run = build(refused, umask=0o022, wrapper=[], env={**latin1, "PYTHONUTF8": "1"})
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("targetfiles.zip", ".unverified/update.zip"):  # delta leaves it there
        assert (refused.out / name).read_bytes() == (reference.out / name).read_bytes(), name
