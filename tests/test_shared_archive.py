"""One archive, many runs: real processes racing on one archive folder, on the disk's own file
system and on a second one (a tmpfs, standing in for a network folder)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import multiprocessing
import os
import queue
import random
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import pytest

from dfota.build.archive import Archive
from dfota.build.assemble import remove_staging_leftovers
from dfota.core import owner
from dfota.core.errors import DfotaError
from tests.test_catalogue import refused, small_disk, unchanged
from tests.workspace import PROJECT, Workspace

RACES = 200  # the same version, the same bytes, archived by two processes at once
CONFLICTS = 40  # the same version with other bytes
NEIGHBOURS = 40  # two versions at once
ZIP_SIZE = 128 << 10  # big enough that a copy takes a while
PER_ARCHIVE = 40  # races on one archive folder before the next (each run reads every version)

FORK = multiprocessing.get_context("fork")


def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("mounting a file system needs root")


@contextlib.contextmanager
def tmpfs(size_kib: int) -> Iterator[Path]:
    """A tmpfs of `size_kib` KiB mounted on a fresh folder, unmounted and removed after."""
    as_root()
    point = Path(tempfile.mkdtemp(prefix="dfota-tmpfs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs",
                    str(point)], check=True)
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], check=True)
        point.rmdir()


@pytest.fixture(params=["disk", "tmpfs"])
def archive_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A folder for the archive on the test's own file system, or on a tmpfs."""
    if request.param == "disk":
        yield tmp_path
    else:
        with tmpfs(256 << 10) as point:
            yield point


def manifest(time: str) -> dict[str, object]:
    return {"version": {"package_time": time}, "origin": "test", "source": None}


def racer(root: Path, key: str, zip_path: Path, time: str, start: Barrier,
          results: multiprocessing.Queue[tuple[str, str]]) -> None:
    start.wait()
    try:
        Archive(root).add(key, zip_path, manifest(time))
        results.put((str(zip_path), "ok"))
    except DfotaError as exc:
        results.put((str(zip_path), str(exc)))


def current(base: Path) -> list[Path]:
    """The archive folder the races are on (the earlier ones no longer change)."""
    return sorted(base.glob("archive*"))[-1:]


def cleaner(base: Path, stop: Event, passes: Synchronized[int]) -> None:
    """What every `doit targetfiles` does first, again and again."""
    while not stop.is_set():
        for root in current(base):
            with contextlib.suppress(DfotaError):
                Archive(root).clean_staging()
        with passes.get_lock():
            passes.value += 1
        time.sleep(0.005)  # two cores: the racers need them too


def settled(passes: Synchronized[int]) -> None:
    """Wait until the cleaner has made a whole pass that started after now (its index, like
    any run's, agrees with the folders it saw last)."""
    until = passes.value + 2
    while passes.value < until:
        time.sleep(0.001)


def reader(base: Path, stop: Event, seen: multiprocessing.Queue[str]) -> None:
    """Reads what a reader sees, again and again: every version folder whole when it appears
    (its zip is the one its manifest names), the index naming only folders that are there,
    with their bytes."""
    checks, whole = 0, set()
    while not stop.is_set():
        for root in current(base):
            index = json.loads((root / "index.json").read_text()) \
                if (root / "index.json").exists() else {"versions": []}
            for folder in sorted(root.iterdir()):
                if folder.name.startswith(".") or not folder.is_dir() or folder in whole:
                    continue
                listed = json.loads((folder / "manifest.json").read_text())
                if hashlib.sha256((folder / "targetfiles.zip").read_bytes()).hexdigest() \
                        != listed["sha256"]:
                    seen.put(f"half version {folder.name}")
                whole.add(folder)
            for entry in index["versions"]:
                folder = root / entry["key"]
                if not folder.is_dir():
                    seen.put(f"index names {entry['key']}, which is not there")
                elif json.loads((folder / "manifest.json").read_text())["sha256"] \
                        != entry["sha256"]:
                    seen.put(f"index has other bytes for {entry['key']}")
        checks += 1
        time.sleep(0.005)
    seen.put(f"checks {checks}")


def race(root: Path, entries: list[tuple[str, Path, str]]) -> list[tuple[str, str]]:
    """Each (key, zip, package time) archived by its own process, started at once."""
    start = FORK.Barrier(len(entries))
    results: multiprocessing.Queue[tuple[str, str]] = FORK.Queue()
    procs = [FORK.Process(target=racer, args=(root, key, zip_path, time, start, results))
             for key, zip_path, time in entries]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    return outcomes


def index_keys(root: Path) -> dict[str, str]:
    index = json.loads((root / "index.json").read_text())
    return {v["key"]: v["sha256"] for v in index["versions"]}


def folders(root: Path) -> dict[str, str]:
    return {p.name: json.loads((p / "manifest.json").read_text())["sha256"]
            for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}


@pytest.mark.slow
def test_runs_racing_on_one_archive_keep_one_whole_copy_and_agree(
        archive_fs: Path, tmp_path: Path) -> None:
    """Fed: two processes archiving the same version with the same bytes at once (RACES
    times), with other bytes (CONFLICTS times), or two versions at once (NEIGHBOURS times),
    while a third process cleans staging leftovers and a fourth reads the archive throughout.
    Outcome wanted: the same bytes: both succeed, one folder; other bytes: one succeeds, the
    other is refused with the conflict's line; two versions: both there. A reader never sees a
    half version, the index never names a missing folder and, once a race is over, lists
    exactly the folders; no staging folder or temporary file is left."""
    rng = random.Random(1717)
    stop, seen, passes = FORK.Event(), FORK.Queue(), FORK.Value("i", 0)
    helpers = [FORK.Process(target=cleaner, args=(archive_fs, stop, passes)),
               FORK.Process(target=reader, args=(archive_fs, stop, seen))]
    for proc in helpers:
        proc.start()
    try:
        kinds = ["same"] * RACES + ["conflict"] * CONFLICTS + ["neighbours"] * NEIGHBOURS
        rng.shuffle(kinds)
        for n, kind in enumerate(kinds):
            root = archive_fs / f"archive{n // PER_ARCHIVE:02d}"
            when = f"2022-01-01,{n // 60:02d}:{n % 60:02d}"
            key = f"R{n}@20220101T{n // 60:02d}{n % 60:02d}"
            zips: list[Path] = []
            for side in "ab":
                data = (rng.randbytes(ZIP_SIZE) if kind != "same" or side == "a"
                        else zips[0].read_bytes())
                path = tmp_path / f"{n}{side}.zip"
                path.write_bytes(data)
                zips.append(path)
            if kind == "neighbours":
                entries = [(key, zips[0], when), (key + "b", zips[1], when)]
            else:
                entries = [(key, zips[0], when), (key, zips[1], when)]
            outcomes = dict(race(root, entries))
            where = f"race {n} ({kind})"
            archived = folders(root)
            if kind == "conflict":
                ok, refused = sorted(outcomes.values(), key=lambda out: out != "ok")
                assert ok == "ok", (where, outcomes)
                assert refused.endswith(f"version {key} is already archived with other "
                                        "content; bump 'Package Time' or 'Project Rev' in "
                                        "etc/quectel-project-version of the new build"), where
                winner = next(Path(z) for z, out in outcomes.items() if out == "ok")
                assert archived[key] == hashlib.sha256(winner.read_bytes()).hexdigest()
            else:
                assert list(outcomes.values()) == ["ok", "ok"], (where, outcomes)
                for wanted_key, zip_path, _ in entries:
                    assert archived[wanted_key] == \
                        hashlib.sha256(zip_path.read_bytes()).hexdigest(), where
            settled(passes)
            assert index_keys(root) == archived, where
            for zip_path in zips:
                zip_path.unlink()
    finally:
        stop.set()
        for proc in helpers:
            proc.join(60)
    found = []
    with contextlib.suppress(queue.Empty):
        while True:
            found.append(seen.get(timeout=2))
    problems = [line for line in found if not line.startswith("checks ")]
    assert problems == []
    checks = [int(line.split()[1]) for line in found if line.startswith("checks ")]
    assert checks and checks[0] > len(kinds)  # the reader read throughout
    roots = sorted(archive_fs.glob("archive*"))
    assert sum(len(folders(root)) for root in roots) == RACES + CONFLICTS + 2 * NEIGHBOURS
    assert [p for root in roots for p in root.iterdir() if p.name.startswith(".")] == []


PAGE = 4096


def pages(path: Path) -> int:
    return -(-path.stat().st_size // PAGE)


@pytest.mark.slow
def test_a_run_that_fills_the_archives_disk_archives_nothing(ws: Workspace) -> None:
    """Fed: a first `doit targetfiles` (both the source and the target new to the archive)
    with `archive/` on a tmpfs of every size at which one of its writes runs out of room:
    1 page; half the target (written straight into the archive); the target zip; half the
    source; the source zip; its manifest; the target's members.json; its manifest; the index
    (all but one page of what the run needs); then exactly what it needs. Outcome wanted:
    below, exit 1 with the one line `error: <archive>: cannot write
    the archive (No space left on device)`, out/ and archive/ as they were (no version, no
    index, no staging folder, no temporary file); at the size it needs, both versions
    archived and indexed. The needs are measured on a run with room to spare."""
    with small_disk(ws.archive, "64m"):
        ws.build()
        used = os.statvfs(ws.archive)
        needed = used.f_blocks - used.f_bfree
    index = json.loads((ws.archive / "index.json").read_text())
    source, target = (ws.archive / v["key"] / "targetfiles.zip" for v in index["versions"])
    assert (source.parent.name, target.parent.name) == tuple(
        v["key"] for v in index["versions"])
    src, tgt, members = pages(source), pages(target), pages(target.parent / "members.json")
    assert needed == src + tgt + members + 3  # two zips, their manifests, members, the index
    shutil.rmtree(ws.archive)
    ws.archive.mkdir()
    sizes = [1, tgt // 2, tgt, tgt + src // 2, tgt + src, tgt + src + 1,
             tgt + src + 1 + members, tgt + src + 2 + members]
    for size in sizes:
        with small_disk(ws.archive, f"{size * PAGE}"), unchanged(ws):
            line = refused(ws.doit())
        assert line == f"{ws.archive}: cannot write the archive (No space left on device)", \
            size
        assert list(ws.archive.iterdir()) == [], size
    with small_disk(ws.archive, f"{needed * PAGE}"):
        ws.build()
        assert sorted(v["key"] for v in json.loads(
            (ws.archive / "index.json").read_text())["versions"]) == sorted(
            [source.parent.name, target.parent.name])
        assert sorted(p.name for p in ws.archive.iterdir()) == sorted(
            [source.parent.name, target.parent.name, "index.json"])


TEAM, MEMBER, OUTSIDER = 4217, 4218, 4219  # a group, a user in it, a user not in it


def as_user(uid: int, gid: int, work: Callable[[], str],
            results: multiprocessing.Queue[str]) -> None:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    try:
        results.put(work())
    except DfotaError as exc:
        results.put(str(exc))


def seen_by(uid: int, gid: int, work: Callable[[], str]) -> str:
    """What `work` gives when run by another user (a forked child that drops root)."""
    results: multiprocessing.Queue[str] = FORK.Queue()
    child = FORK.Process(target=as_user, args=(uid, gid, work, results))
    child.start()
    outcome = results.get(timeout=30)
    child.join(30)
    return outcome


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *sorted(root.rglob("*"))]}


@pytest.fixture
def team_folder() -> Iterator[Path]:
    """A folder other users can reach (/tmp/dfota-modes-*; pytest's own are root's alone)."""
    as_root()
    base = Path(tempfile.mkdtemp(prefix="dfota-modes-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base)


@pytest.mark.parametrize("umask", [0o077, 0o022, 0o002])
def test_archived_files_are_the_groups_to_read_whatever_the_umask(
        team_folder: Path, umask: int) -> None:
    """Fed: versions archived under umask `umask`, by default and with group_readable off.
    Outcome wanted: by default folders 0750, archived files 0440, the index 0640 (the archive
    folder too when the tool makes it); off: 0700, 0400, 0600; the same whatever the umask."""
    zip_path = team_folder / "a.zip"
    zip_path.write_bytes(b"zip")
    old = os.umask(umask)
    try:
        for group_readable, folder, file, index in [(True, 0o750, 0o440, 0o640),
                                                    (False, 0o700, 0o400, 0o600)]:
            root = team_folder / f"archive-{group_readable}"
            Archive(root, group_readable=group_readable).add(
                "A@20220101T0000", zip_path, manifest("2022-01-01,00:00"))
            assert modes(root) == {".": folder, "A@20220101T0000": folder,
                                   "A@20220101T0000/targetfiles.zip": file,
                                   "A@20220101T0000/manifest.json": file,
                                   "index.json": index}, oct(umask)
    finally:
        os.umask(old)


def test_a_group_shares_an_archive_an_outsider_cannot_read_it(team_folder: Path) -> None:
    """Fed: a team's archive folder (group TEAM, mode 2770, as an administrator makes it) in
    which root archives a version; a user of TEAM then archives another, and a user outside
    TEAM tries to read it. Outcome wanted: the version folders take the group and keep the
    set-group-ID bit; the member reads root's version whole (intact against its manifest) and
    adds its own, which root reads; the outsider gets one line naming the archive folder."""
    root = team_folder / "archive"
    root.mkdir()
    os.chown(root, 0, TEAM)
    root.chmod(0o2770)
    for name in ("a.zip", "b.zip"):
        (team_folder / name).write_bytes(name.encode())
    Archive(root).add("A@20220101T0000", team_folder / "a.zip", manifest("2022-01-01,00:00"))
    folder = (root / "A@20220101T0000").stat()
    assert folder.st_gid == TEAM and folder.st_mode & stat.S_ISGID
    assert (root / "A@20220101T0000/targetfiles.zip").stat().st_gid == TEAM

    def read_and_add() -> str:
        archive = Archive(root)
        for version in archive.versions():
            archive.check_intact(version)
        archive.add("B@20220201T0000", team_folder / "b.zip", manifest("2022-02-01,00:00"))
        return ",".join(v.key for v in archive.versions())

    def read() -> str:
        return ",".join(v.key for v in Archive(root).versions())

    assert seen_by(MEMBER, TEAM, read_and_add) == "A@20220101T0000,B@20220201T0000"
    added = Archive(root).get("B@20220201T0000")
    assert added is not None and added.zip_path.read_bytes() == b"b.zip"
    assert added.zip_path.stat().st_uid == MEMBER
    assert seen_by(OUTSIDER, OUTSIDER, read) == \
        f"{root}: cannot read the archive (Permission denied)"


def test_the_state_folders_staging_of_a_live_run_is_kept(tmp_path: Path) -> None:
    """Fed: in a state folder, the staging folders (`targetfiles.*`) of this process (a run
    still going), of a process that exited and of an older tool (no tag). Outcome wanted: the
    clean-up at the start of `doit targetfiles` removes the last two only."""
    dead = subprocess.run([sys.executable, "-c",
                           "from dfota.core import owner; print(owner.run_tag())"], cwd=PROJECT,
                          capture_output=True, text=True, check=True).stdout.strip()
    live = tmp_path / f"targetfiles.abc{owner.suffix()}"
    for folder in (live, tmp_path / f"targetfiles.def.{dead}", tmp_path / "targetfiles.ghi"):
        folder.mkdir()
        (folder / "targetfiles.zip").write_bytes(b"zip")
    remove_staging_leftovers(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [live.name]
