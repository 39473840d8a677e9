"""SIGKILL at many points of `doit targetfiles delta verify`, then again, until a run completes.

The job is run by a small runner that installs an audit hook (`sys.addaudithook`) counting the
file-system operations that change something under the workspace (an open for writing, a
rename, a removal, a new folder, a chmod, a copy) in doit's process and its task processes,
but for `_delta_ahead` (which runs beside targetfiles, in an order of its own) and the
workers; at the N-th one it sends SIGKILL to the whole job (its process group: doit's
processes and their workers), either at once or a few milliseconds later, in the middle of
the write that follows. N is drawn with a fixed seed.

Each sequence starts from a nightly's state (the base and version 2 archived and published,
the rootfs bumped to version 3) and kills the job again and again until a run completes. After
every kill: each archived version is whole (its zip matches its manifest) and the earlier ones
are byte for byte what they were; the index lists only versions whose folders exist; the
published `out/targetfiles.zip` and `out/update.zip` are each either the earlier file or the
complete new one, never a part. After the run that completes: the results are byte-identical
to an uninterrupted run's, the index agrees with the folders, and no temporary file is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.oracle import check_published
from tests.workspace import PROJECT, Workspace

pytestmark = pytest.mark.slow  # every case runs doit, killed at many points

SEED = 20240611
SEQUENCES = 9
PHASES = ("targetfiles", "archiving", "delta", "verify")
MAX_KILLS_PER_SEQUENCE = 5

# Runs doit with an audit hook that kills the job at the N-th mutating operation under ROOT.
RUNNER = r"""
import mmap, os, signal, struct, sys, threading
ROOT = os.environ["CRASH_ROOT"]
KILL_AT = int(os.environ.get("CRASH_KILL_AT", "0"))
DELAY = float(os.environ.get("CRASH_DELAY", "0"))
LOG = os.open(os.environ["CRASH_LOG"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
MAIN = os.getpid()
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.symlink",
          "os.link", "os.truncate", "shutil.copyfile", "shutil.rmtree", "shutil.move"}
COUNT = mmap.mmap(-1, 8)  # shared with doit's task processes (forks of this one)
TASKS = {}  # a task process's pid -> the task it runs (from the log file it opened)

def kill():
    os.killpg(os.getpgrp(), signal.SIGKILL)

def hook(event, args):
    if event != "open" and event not in EVENTS:
        return
    if event == "open":
        mode, flags = args[1], args[2]
        if not ((isinstance(mode, str) and any(c in mode for c in "wax+"))
                or (isinstance(flags, int) and flags & WRITING)):
            return
    path = args[0]
    if not isinstance(path, (str, bytes, os.PathLike)):
        return
    path = os.fsdecode(path)
    if not path.startswith(ROOT):
        return
    pid = os.getpid()
    if "/state/logs/" in path and path.endswith(".log"):
        TASKS[pid] = path.rsplit("-", 1)[-1][: -len(".log")]
    if (pid != MAIN and pid not in TASKS) or TASKS.get(pid) == "_delta_ahead":
        return  # a worker, or the work beside targetfiles
    count = struct.unpack("q", COUNT[:8])[0] + 1
    COUNT[:8] = struct.pack("q", count)
    os.write(LOG, f"{count}\t{event}\t{path[len(ROOT):]}\n".encode("utf-8", "replace"))
    if count == KILL_AT:
        if DELAY:
            threading.Timer(DELAY, kill).start()
        else:
            kill()

sys.addaudithook(hook)
from doit.doit_cmd import DoitMain
sys.exit(DoitMain().run(sys.argv[1:]))
"""

BUMPED = "2022-08-01,08:00"


@dataclass(frozen=True)
class Event:
    number: int
    name: str
    path: str  # relative to the workspace
    task: str  # the doit task running (from the log file it opened)

    @property
    def phase(self) -> str:
        if self.path.startswith("/archive/"):
            return "archiving"
        return self.task


def read_events(log: Path) -> list[Event]:
    events, task = [], "start"
    for line in log.read_text().splitlines():
        number, name, path = line.split("\t", 2)
        if "/state/logs/" in path and path.endswith(".log"):
            task = path.rsplit("-", 1)[-1][: -len(".log")]
        events.append(Event(int(number), name, path, task))
    return events


def run_job(ws: Workspace, log: Path, kill_at: int = 0, delay: float = 0.0
            ) -> subprocess.CompletedProcess[str]:
    argv = ["targetfiles", "--sdk", str(ws.sdk), *ws.folders,
            "delta", *ws.folders, "--config", str(ws.root / "config"),
            "verify", *ws.folders]
    env = {**os.environ, "CRASH_ROOT": str(ws.root), "CRASH_KILL_AT": str(kill_at),
           "CRASH_DELAY": str(delay), "CRASH_LOG": str(log)}
    job = subprocess.Popen([sys.executable, "-c", RUNNER, "--db-file", str(ws.root / "doit.db"),
                            *argv], cwd=PROJECT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, start_new_session=True)
    stdout, stderr = job.communicate()
    with contextlib.suppress(ProcessLookupError):  # a worker of the killed job, if any is left
        os.killpg(job.pid, signal.SIGKILL)
    # the next run starts once every process of this one is gone (a task process killed in
    # the middle of a sync may take a moment): what it left is then a leftover
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(job.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    return subprocess.CompletedProcess(job.args, job.returncode, stdout, stderr)


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


@pytest.fixture(scope="module")
def nightly(sample_sdk: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Version 2 built, archived, packaged and verified; the rootfs then bumped to version 3
    with one file changed: the state in which a nightly job starts."""
    root = tmp_path_factory.mktemp("crash") / "ws"
    root.mkdir()
    shutil.copytree(sample_sdk / "ql-ol-extsdk", root / "sdk", symlinks=True)
    shutil.copyfile(sample_sdk / "firmware/upgrade/targetfiles.zip", root / "source.zip")
    shutil.copytree(PROJECT / "sample_sdk/config", root / "config")
    ws = Workspace(root, root / "sdk", root / "source.zip")
    first = ws.run("targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *ws.folders,
                   "delta", *ws.folders, "--config", str(root / "config"),
                   "verify", *ws.folders)
    assert first.returncode == 0, first.stdout + first.stderr
    version = ws.rootfs / "etc/quectel-project-version"
    version.write_text(version.read_text().replace("2022-07-15,09:30", BUMPED))
    with (ws.rootfs / "etc/hosts").open("a") as f:
        f.write("10.0.0.3 nightly\n")
    return root


@dataclass(frozen=True)
class Reference:
    events: list[Event]
    targetfiles: str
    update: str
    archive: dict[str, str]  # key -> sha256 of its zip, after the run
    out_names: list[str]  # what out/ holds after the run
    before_targetfiles: str
    before_update: str
    before_archive: dict[str, str]
    # packages (sha256) the real updater already applied: every completed run makes the same
    oracle_checked: set[str] = field(default_factory=set)


def archive_zips(archive: Path) -> dict[str, str]:
    return {p.name: str(digest(p / "targetfiles.zip")) for p in sorted(archive.iterdir())
            if p.is_dir() and not p.name.startswith(".")}


def fresh(nightly: Path, dest: Path) -> Workspace:
    shutil.copytree(nightly, dest, symlinks=True)
    return Workspace(dest, dest / "sdk", dest / "source.zip")


@pytest.fixture(scope="module")
def reference(nightly: Path, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """An uninterrupted run from the nightly state, with its list of mutating operations."""
    ws = fresh(nightly, tmp_path_factory.mktemp("crash-reference") / "ws")
    before = (digest(ws.out / "targetfiles.zip"), digest(ws.out / "update.zip"),
              archive_zips(ws.archive))
    log = ws.root / "events.log"
    done = run_job(ws, log)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((ws.out / "update.json").read_text())["verify"]["ok"] is True
    return Reference(read_events(log), str(digest(ws.out / "targetfiles.zip")),
                     str(digest(ws.out / "update.zip")), archive_zips(ws.archive),
                     sorted(os.listdir(ws.out)), str(before[0]), str(before[1]), before[2])


def check_after_kill(ws: Workspace, ref: Reference) -> None:
    """What a kill may leave: only whole files where a reader looks."""
    versions = archive_zips(ws.archive)
    for key, sha in ref.before_archive.items():
        assert versions.get(key) == sha, f"archived {key} changed"
    for key, sha in versions.items():
        assert ref.archive.get(key) == sha, f"archived {key} is not a complete version"
        manifest = json.loads((ws.archive / key / "manifest.json").read_text())
        assert manifest["sha256"] == sha
    index = json.loads((ws.archive / "index.json").read_text())
    listed = {v["key"]: v["sha256"] for v in index["versions"]}
    assert set(listed) <= set(versions), "the index names a version that is not there"
    assert set(ref.before_archive) <= set(listed)
    for key, sha in listed.items():
        assert versions[key] == sha
    for name in os.listdir(ws.archive):
        assert name in versions or name == "index.json" or name.startswith(
            (".staging-", ".index.json.")), name
    assert digest(ws.out / "targetfiles.zip") in (ref.before_targetfiles, ref.targetfiles)
    assert digest(ws.out / "update.zip") in (None, ref.before_update, ref.update)
    if (ws.out / "update.zip").exists():
        with zipfile.ZipFile(ws.out / "update.zip") as zf:
            assert zf.testzip() is None
    for name in os.listdir(ws.out):
        assert name in ref.out_names or (name.startswith(".") and name.endswith(".tmp")), name
        if name.endswith(".json"):  # the reports are written whole too
            json.loads((ws.out / name).read_text())


def check_completed(ws: Workspace, ref: Reference, done: subprocess.CompletedProcess[str]
                    ) -> None:
    assert done.returncode == 0, done.stdout + done.stderr
    assert digest(ws.out / "targetfiles.zip") == ref.targetfiles
    assert digest(ws.out / "update.zip") == ref.update
    assert json.loads((ws.out / "update.json").read_text())["verify"]["ok"] is True
    check_published(ws.out, ref.oracle_checked)  # the real updater too (DFOTA_ORACLE)
    assert archive_zips(ws.archive) == ref.archive
    index = json.loads((ws.archive / "index.json").read_text())
    assert {v["key"]: v["sha256"] for v in index["versions"]} == ref.archive
    assert sorted(os.listdir(ws.out)) == ref.out_names
    assert sorted(os.listdir(ws.archive)) == sorted([*ref.archive, "index.json"])
    state = ws.root / "state"
    assert not [p for p in state.iterdir() if p.name.startswith("targetfiles.")
                and p.is_dir()], "a staging folder was left in the state folder"


def first_kills(ref: Reference, rng: random.Random) -> list[tuple[int, float]]:
    """Where each sequence's first kill falls: once in each phase of the run, inside verify's
    computation, in the two windows where two folders must agree (a version folder renamed
    into the archive but the index not yet rewritten; the new version archived but
    out/targetfiles.zip not yet renamed into place), then anywhere; some in mid-write."""
    phases: dict[str, list[Event]] = {}
    for event in ref.events:
        phases.setdefault(event.phase, []).append(event)
    for wanted in PHASES:
        assert phases.get(wanted), f"the run has no {wanted} phase: {sorted(phases)}"
    points = []
    for phase in PHASES:
        events = phases[phase]
        middle = events[len(events) // 5: len(events) - len(events) // 5] or events
        points.append((rng.choice(middle).number, 0.0))
    points.append((phases["verify"][0].number, rng.uniform(0.05, 0.5)))
    folder_renamed = next(e.number for e in ref.events if e.name == "os.rename"
                          and e.path.startswith("/archive/.staging-") and e.path.count("/") == 2)
    points.append((folder_renamed + 1, 0.0))
    out_renamed = next(e.number for e in ref.events if e.name == "os.rename"
                       and e.path.startswith("/out/.targetfiles.zip."))
    points.append((out_renamed - 1, 0.0))
    while len(points) < SEQUENCES:
        points.append((rng.randint(1, len(ref.events)), rng.choice([0.0, 0.002, 0.01])))
    return points


def test_sigkill_at_many_points_never_leaves_a_partial_result(
        nightly: Path, reference: Reference, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    landed: set[str] = set()
    total_kills = 0
    for sequence, (kill_at, delay) in enumerate(first_kills(reference, rng)):
        ws = fresh(nightly, tmp_path / f"seq{sequence}")
        for attempt in range(MAX_KILLS_PER_SEQUENCE + 1):
            log = ws.root / f"events-{attempt}.log"
            last = attempt == MAX_KILLS_PER_SEQUENCE
            done = run_job(ws, log, 0 if last else kill_at, delay)
            if done.returncode != -signal.SIGKILL:
                check_completed(ws, reference, done)
                break
            total_kills += 1
            events = read_events(log)
            where = events[-1] if events else Event(0, "-", "-", "start")
            if attempt == 0:
                landed.add(where.phase)
            try:
                check_after_kill(ws, reference)
            except AssertionError as exc:
                raise AssertionError(f"sequence {sequence}, kill {attempt} at operation "
                                     f"{where.number} ({where.name} {where.path} in "
                                     f"{where.phase}, delay {delay}): {exc}") from exc
            kill_at = rng.randint(1, len(reference.events))
            delay = rng.choice([0.0, 0.0, 0.003])
        shutil.rmtree(ws.root)
    assert set(PHASES) <= landed, landed
    assert total_kills >= SEQUENCES


def test_a_kill_during_verify_leaves_no_unproven_package_in_out(
        nightly: Path, reference: Reference, tmp_path: Path) -> None:
    """Fed: the nightly job killed as `verify` starts.
    Outcome wanted: out/update.zip is absent or a package whose verification passed."""
    ws = fresh(nightly, tmp_path / "ws")
    verify_start = next(e.number for e in reference.events if e.phase == "verify")
    done = run_job(ws, ws.root / "events.log", verify_start)
    assert done.returncode == -signal.SIGKILL
    summary = json.loads((ws.out / "update.json").read_text())
    if digest(ws.out / "update.zip") == reference.update:
        assert summary.get("verify", {}).get("ok") is True, "an unproven package is in out/"
