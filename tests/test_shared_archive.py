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
import subprocess
import tempfile
import time
from collections.abc import Iterator
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import pytest

from tasks.archive import Archive
from tasks.errors import DfotaError
from tests.test_catalogue import refused, small_disk, unchanged
from tests.workspace import Workspace

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
        time.sleep(0.002)  # two cores: the racers need them too


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
        time.sleep(0.002)
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
            zips = []
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


def test_a_run_that_fills_the_archives_disk_archives_nothing(ws: Workspace) -> None:
    """Fed: a first `doit targetfiles` (both the source and the target new to the archive)
    with `archive/` on a tmpfs of every size at which one of its writes runs out of room:
    1 page; half the source; the source zip; its manifest; half the target; the target zip;
    its manifest; the index (all but one page of what the run needs); then exactly what it
    needs. Outcome wanted: below, exit 1 with the one line `error: <archive>: cannot write
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
    src, tgt = pages(source), pages(target)
    assert needed == src + tgt + 3  # two zips, two manifests, the index
    shutil.rmtree(ws.archive)
    ws.archive.mkdir()
    sizes = [1, src // 2, src, src + 1, src + 1 + tgt // 2, src + 1 + tgt, src + tgt + 2]
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
