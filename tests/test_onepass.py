"""`doit targetfiles` writes each byte once: the target straight into the archive, out/ a hard
link to it (a copy on another file system), a one-file change rewriting only what changed."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from dfota.formats.zipio import ZipSource
from tests.workspace import Run, Workspace

pytestmark = pytest.mark.slow  # every case runs `doit targetfiles` on a copy of the sample

BASE_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001@20220622T1550"
NEXT_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220715A_01.002@20220715T0930"
BUMPED_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220715A_01.002@20220716T0930"
EDITED = "etc/ql_manager.conf"
VERSION = "etc/quectel-project-version"


def _bump(ws: Workspace) -> None:
    """Edit one rootfs file and bump Package Time: a new version."""
    edited = ws.rootfs / EDITED
    edited.write_bytes(edited.read_bytes() + b"# one more line\n")
    version = ws.rootfs / VERSION
    version.write_text(version.read_text().replace("2022-07-15,09:30", "2022-07-16,09:30"))


@dataclass(frozen=True)
class Logged:
    """What the last `targetfiles` wrote, as its log says."""

    read: int
    hashed: int
    wrote: int
    copied: int
    entries: int
    written: set[str]


def _traffic(ws: Workspace) -> Logged:
    log = sorted((ws.root / "state/logs").glob("*-targetfiles.log"))[-1].read_text()
    line = next(li for li in log.splitlines() if "entries read" in li)
    numbers = re.search(r"read (\d+) bytes, hashed (\d+), wrote (\d+), copied by the kernel "
                        r"(\d+) \((\d+) entries\); written: (.*)$", line)
    assert numbers is not None, line
    read, hashed, wrote, copied, entries = (int(n) for n in numbers.groups()[:5])
    return Logged(read, hashed, wrote, copied, entries, set(numbers.group(6).split(", ")))


def _folders(root: Path) -> list[str]:
    return ["--out", str(root / "out"), "--archive", str(root / "archive"),
            "--state", str(root / "state")]


def _from_scratch(ws: Workspace, where: Path) -> bytes:
    """The same target built in a workspace and archive of its own, from nothing."""
    run = ws.run("targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source),
                 *_folders(where))
    assert run.returncode == 0, run.stdout + run.stderr
    return (where / "out/targetfiles.zip").read_bytes()


def test_out_is_a_link_and_a_one_file_change_rewrites_only_what_changed(
        ws: Workspace, tmp_path: Path) -> None:
    time.sleep(2.1)  # the rootfs settled: its hashes are kept by the first build
    ws.build()
    out, archived = ws.out / "targetfiles.zip", ws.archive / NEXT_KEY / "targetfiles.zip"
    assert out.samefile(archived) and out.stat().st_nlink == 2
    assert oct(out.stat().st_mode & 0o777) == "0o440"  # the archive's: read-only
    members = json.loads((ws.archive / NEXT_KEY / "members.json").read_text())["sha1s"]
    with ZipSource(out) as zf:
        assert members == {n: zf.sha1(n) for n, m in zf.members.items() if m.kind == "file"}
    first = _traffic(ws)
    assert first.copied == 0 and first.wrote == out.stat().st_size

    _bump(ws)
    run = ws.build()
    inputs_log = sorted((ws.root / "state/logs").glob("*-_targetfiles_inputs.log"))[-1]
    assert "hashing ql-ol-rootfs: 2 to do" in inputs_log.read_text()
    assert f"from {NEXT_KEY} by the kernel" in run.stdout
    traffic = _traffic(ws)
    changed = {f"SYSTEM/{EDITED}", f"SYSTEM/{VERSION}"}
    assert traffic.written == changed | {"META/system_manifest.json"}
    sizes = sum((ws.rootfs / p.removeprefix("SYSTEM/")).stat().st_size for p in changed)
    assert traffic.read == sizes and traffic.hashed == sizes
    new = ws.archive / BUMPED_KEY / "targetfiles.zip"
    assert traffic.copied > 0.9 * new.stat().st_size
    assert (ws.out / "targetfiles.zip").samefile(new)
    # reproducible: the zip made incrementally is the zip made from nothing
    assert new.read_bytes() == _from_scratch(ws, tmp_path / "scratch")
    manifest = json.loads((ws.archive / BUMPED_KEY / "manifest.json").read_text())
    assert manifest["sha256"] == json.loads(
        (tmp_path / "scratch/archive" / BUMPED_KEY / "manifest.json").read_text())["sha256"]


def test_an_archived_zip_changed_on_disk_is_caught_before_it_is_used(
        ws: Workspace, tmp_path: Path) -> None:
    ws.build()
    archived = ws.archive / NEXT_KEY / "targetfiles.zip"
    # out/ is the archived zip: writing into it alters the archive (same size, same times)
    stamp = archived.stat()
    with ZipSource(archived) as zf:
        at = zf.data_offset(f"SYSTEM/{EDITED}")
    with open(ws.out / "targetfiles.zip", "r+b") as f:
        f.seek(at)
        f.write(b"X")
    os.utime(archived, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    # delta (after targetfiles, not up to date with it) stops naming the archive
    delta = ws.run("delta", *ws.folders)
    assert delta.returncode == 1 and "up to date" not in delta.stdout
    assert f"archived version {NEXT_KEY} does not match its manifest's sha256: the archive was " \
        "altered" in delta.stderr
    # and delta alone will not take it as the target
    alone = ws.run("-s", "delta", *ws.folders)
    assert alone.returncode != 0 and "is not the target this workspace built" in alone.stderr
    # nor the next build as its source, nor as the zip it copies members from
    _bump(ws)
    as_source = ws.doit(default_source=True)
    assert as_source.returncode != 0
    assert f"archived version {NEXT_KEY} does not match its manifest's sha256" in \
        as_source.stderr
    run = ws.build()
    assert any(line.startswith("warning: ") and f"archived version {NEXT_KEY} does not match"
               in line and line.endswith("not used to copy members from")
               for line in run.stdout.splitlines()), run.stdout
    assert _traffic(ws).copied == 0
    new = ws.archive / BUMPED_KEY / "targetfiles.zip"
    assert new.read_bytes() == _from_scratch(ws, tmp_path / "scratch")


def _prune(ws: Workspace, folders: list[str], *args: str) -> Run:
    run = ws.run("prune", "--keep", "1", *args, *folders, "--sdk", str(ws.sdk))
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def test_prune_keeps_the_version_out_is_by_inode_or_by_its_copys_digest(
        ws: Workspace, tmp_path: Path) -> None:
    shm = Path(tempfile.mkdtemp(prefix="dfota-out-", dir="/dev/shm"))
    try:
        # workspace A: out/ on tmpfs, another file system than the archive: a copy
        a_folders = ["--out", str(shm / "out"), "--archive", str(ws.archive),
                     "--state", str(tmp_path / "a-state")]
        a = ws.run("targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *a_folders)
        assert a.returncode == 0, a.stdout + a.stderr
        copy, archived = shm / "out/targetfiles.zip", ws.archive / NEXT_KEY / "targetfiles.zip"
        assert os.stat(copy).st_dev != os.stat(archived).st_dev
        assert not copy.samefile(archived) and archived.stat().st_nlink == 1
        assert copy.read_bytes() == archived.read_bytes()
        assert oct(copy.stat().st_mode & 0o777) == "0o440"
        # workspace B (the test's own): a newer version, out/ a hard link to it
        _bump(ws)
        ws.build()
        assert (ws.out / "targetfiles.zip").samefile(ws.archive / BUMPED_KEY / "targetfiles.zip")
        # A's record lost: its out/ still points to NEXT_KEY, by the copy's digest
        (tmp_path / "a-state/workspace.json").unlink()
        run = _prune(ws, a_folders, "--force")
        assert f"prune: kept {NEXT_KEY}: out/ points to it" in run.stdout
        assert f"prune: removed {BASE_KEY}" in run.stdout
        # from A's side with B's record lost, B's out/ is a hard link: that version stays
        (ws.root / "state/workspace.json").unlink()
        shutil.rmtree(shm / "out")
        run = _prune(ws, a_folders, "--force")
        assert f"prune: removed {NEXT_KEY}" in run.stdout
        versions = json.loads((ws.archive / "index.json").read_text())["versions"]
        assert [v["key"] for v in versions] == [BUMPED_KEY]
    finally:
        shutil.rmtree(shm, ignore_errors=True)


def test_a_version_another_workspaces_out_links_is_kept(ws: Workspace, tmp_path: Path
                                                        ) -> None:
    ws.build()  # out/ links NEXT_KEY
    other = tmp_path / "other"
    _bump(ws)
    folders = ["--out", str(other / "out"), "--archive", str(ws.archive), "--state",
               str(other / "state")]
    run = ws.run("targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *folders)
    assert run.returncode == 0, run.stdout + run.stderr
    # pruned from the other workspace, whose out/ and record name only its own versions
    pruned = _prune(ws, folders, "--force")
    assert f"prune: kept {NEXT_KEY}: its zip has other hard links" in pruned.stdout
    (ws.out / "targetfiles.zip").unlink()  # that workspace's out/ gone: so is the version
    pruned = _prune(ws, folders, "--force")
    assert f"prune: removed {NEXT_KEY}" in pruned.stdout


def test_built_on_the_previous_target_it_is_both_source_and_layout(
        ws: Workspace, tmp_path: Path) -> None:
    time.sleep(2.1)
    ws.build()
    _bump(ws)
    run = ws.build(default_source=True)
    assert f"built on {NEXT_KEY}" in run.stdout
    assert _traffic(ws).written == {f"SYSTEM/{EDITED}", f"SYSTEM/{VERSION}",
                                    "META/system_manifest.json"}
    previous = tmp_path / "previous.zip"
    shutil.copyfile(ws.archive / NEXT_KEY / "targetfiles.zip", previous)
    scratch = ws.run("targetfiles", "--sdk", str(ws.sdk), "--source", str(previous),
                     *_folders(tmp_path / "scratch"))
    assert scratch.returncode == 0, scratch.stdout + scratch.stderr
    assert (ws.archive / BUMPED_KEY / "targetfiles.zip").read_bytes() == \
        (tmp_path / "scratch/out/targetfiles.zip").read_bytes()
