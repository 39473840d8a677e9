"""The benchmark's RAM-disk run, its big-file case, its goals by place and what its notes say
the time is spent on (the benchmark itself runs here at a tiny scale only)."""

from __future__ import annotations

import io
import os
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.tools.bench.bigfile import (
    BIG_PATH,
    GIB,
    big_sdk,
    big_size,
    drop_big_zips,
    system_size_mb,
    write_zeros,
)
from dfota.tools.bench.codes import AFTER
from dfota.tools.bench.findings import Figures, PackageRun, big_goal, place_goals
from dfota.tools.bench.measure import Measure, measure, measure_any
from dfota.tools.bench.options import (
    ON_DISK,
    ON_RAM_DISK,
    STEPS,
    BenchOptions,
    RunPaths,
    step_name,
)
from dfota.tools.bench.places import (
    TMPFS,
    check_ram_disk,
    file_system_type,
    keep_logs,
    ram_disk_folder,
    ram_disk_paths,
    temporary_folder,
)
from dfota.tools.bench.plan import MB
from dfota.tools.bench.report import format_goals, render_report
from dfota.tools.bench.run import run_benchmark
from dfota.tools.bench.spent import TRACE_TIMES, shell_line, shell_steps, task_times, tasks_line

SHM = Path("/dev/shm")
TINY = 0.02


def _need_tmpfs() -> None:
    if not SHM.is_dir() or file_system_type(SHM) != TMPFS:
        pytest.skip("no tmpfs at /dev/shm")


def _figures(tmp_path: Path, place: str, seconds: dict[str, float],
             peaks: dict[str, int]) -> Figures:
    measured = {(AFTER, key): [Measure(step_name(key, place), s, peaks.get(key, 100 * 1024),
                                       50 * 1024)] for key, s in seconds.items()}
    return Figures(BenchOptions(), RunPaths(tmp_path, tmp_path / "cross.zip"), measured,
                   ("this checkout",), None, (2.0, 2.0), 0.0, False, place)


def test_the_goals_of_each_place_are_the_issues_table(tmp_path: Path) -> None:
    seconds = {"shell": 10.0, "targetfiles": 4.0, "delta": 5.0, "verify": 1.0, "chain": 9.0,
               "bsdiff": 8.0, "again": 0.3, "one-file": 2.5}  # the first chain: 10 s
    disk = place_goals(_figures(tmp_path, ON_DISK, seconds, {"chain": 420 * 1024}))
    ram = place_goals(_figures(tmp_path, ON_RAM_DISK, {**seconds, "shell": 5.0}, {}))
    assert (disk["1"].value, disk["1"].limit, disk["1"].where, disk["1"].passed) == (
        0.4, 0.5, ON_DISK, True)
    # a RAM disk makes creating files cheap: there targetfiles need only match the shell
    assert (ram["1"].value, ram["1"].limit, ram["1"].where, ram["1"].passed) == (
        0.8, 1.0, ON_RAM_DISK, True)
    assert (disk["3"].value, disk["3"].limit) == (pytest.approx(0.03), 0.03)
    assert (disk["4"].value, disk["4"].limit) == (pytest.approx(0.25), 0.25)
    # the largest tree of the chain's steps, the chain as one command included
    assert (disk["5"].value, disk["5"].limit, disk["5"].passed) == (420, 400, False)
    assert (ram["5"].value, ram["5"].passed) == (100, True)
    assert (disk["6"].value, disk["2"].value) == (0.2, 5.0 / 8.0)


def test_verify_failing_on_the_big_file_misses_goal_5b_whatever_its_memory() -> None:
    def run(returncode: int) -> PackageRun:
        return PackageRun(Measure("targetfiles", 1.0, 0, 0), Measure("delta", 1.0, 0, 0),
                          Measure("verify", 1.0, 300 * 1024, 310 * 1024, returncode), {})

    passed, failed = big_goal(run(0), 2 * GIB), big_goal(run(2), 2 * GIB)
    assert (passed.number, passed.value, passed.limit, passed.passed) == ("5b", 310, 400, True)
    assert "a 2.0 GiB file of zeros shipped whole" in passed.what
    assert (failed.value, failed.passed, failed.result) == (310, False, "MISS (it failed)")
    assert format_goals([failed]).splitlines()[2].endswith("| 310 MB | <= 400 MB | MISS (it "
                                                           "failed) |")


def test_the_ram_disk_must_be_a_tmpfs_with_room(tmp_path: Path) -> None:
    _need_tmpfs()
    kind = file_system_type(tmp_path)
    if kind == TMPFS:
        pytest.skip("the temporary folder is on a tmpfs")
    with pytest.raises(DfotaError) as info:
        check_ram_disk(tmp_path, 0)
    assert str(info.value) == (f"{tmp_path}: --ram-disk: on a {kind} file system, not a tmpfs "
                               "(give a folder on a tmpfs, or none)")
    with pytest.raises(DfotaError, match=r"/missing: --ram-disk: no such folder$"):
        check_ram_disk(tmp_path / "missing", 0)
    with pytest.raises(DfotaError, match=r"^/dev/shm: --ram-disk: [\d,]+ MB free and [\d,]+ MB "
                                         r"of memory available; the run needs about [\d,]+ MB"):
        check_ram_disk(SHM, 1 << 60)
    check_ram_disk(SHM, 0)
    assert file_system_type(Path("/proc/self")) == "proc"


def test_the_ram_disk_folder_is_removed_however_the_run_ends(tmp_path: Path) -> None:
    _need_tmpfs()
    source = tmp_path / "data" / "firmware" / "upgrade" / "targetfiles.zip"
    source.parent.mkdir(parents=True)
    source.write_bytes(b"PK\x05\x06" + bytes(18))
    disk = RunPaths(tmp_path, tmp_path / "cross.zip")
    with ram_disk_folder(SHM, 0) as folder:
        assert folder.parent == SHM and file_system_type(folder) == TMPFS
        ram = ram_disk_paths(folder, disk)
        assert ram.source.read_bytes() == source.read_bytes()
        assert temporary_folder(ram) == {"TMPDIR": str(folder / "run" / "tmp")}
        ram.logs.mkdir(parents=True)
        (ram.logs / "shell-0.log").write_text("traced\n")
        (ram.first / "state" / "logs").mkdir(parents=True)
        (ram.first / "state" / "logs" / "x-targetfiles.log").write_text("zipped\n")
        kept = keep_logs(ram, disk)
    assert not folder.exists()
    assert (kept / "shell-0.log").read_text() == "traced\n"
    assert (kept / "trial0-state-logs" / "x-targetfiles.log").read_text() == "zipped\n"
    with pytest.raises(RuntimeError), ram_disk_folder(SHM, 0) as failed:
        (failed / "something").write_bytes(b"x")
        raise RuntimeError("a step failed")
    assert not failed.exists()


def test_the_big_file_is_sparse_zeros_added_to_a_copy_of_the_sdk(tmp_path: Path) -> None:
    zeros = tmp_path / "zeros.bin"
    write_zeros(zeros, 64 * MB)
    st = zeros.stat()
    assert st.st_size == 64 * MB and st.st_blocks * 512 < MB  # nothing written
    with open(zeros, "rb") as f:
        f.seek(40 * MB)
        assert f.read(MB) == bytes(MB)
    with pytest.raises(FileExistsError):
        write_zeros(zeros, 1)
    assert (big_size(1.0), big_size(0.1), big_size(1e-6)) == (2 * GIB, round(0.2 * GIB), MB)
    assert system_size_mb(2 * GIB) == 512 + 2048
    pair = tmp_path / "sdk"
    (pair / "ql-ol-rootfs" / "usr" / "bin").mkdir(parents=True)
    (pair / "ql-ol-rootfs" / "usr" / "bin" / "tool").write_bytes(b"\x7fELF")
    os.symlink("tool", pair / "ql-ol-rootfs" / "usr" / "bin" / "alias")
    sdk = big_sdk(pair, tmp_path / "big-sdk", 3 * MB)
    assert (sdk / "ql-ol-rootfs" / BIG_PATH).stat().st_size == 3 * MB
    assert os.readlink(sdk / "ql-ol-rootfs" / "usr" / "bin" / "alias") == "tool"
    assert not (pair / "ql-ol-rootfs" / BIG_PATH).exists()
    ws = tmp_path / "ws"
    (ws / "archive" / "v1").mkdir(parents=True)
    (ws / "out").mkdir()
    for name in ("targetfiles.zip", "update.zip", "update.json"):
        (ws / "out" / name).write_bytes(b"x")
    drop_big_zips(ws)
    assert sorted(p.name for p in ws.iterdir()) == ["out"]
    assert sorted(p.name for p in (ws / "out").iterdir()) == ["update.json", "update.zip"]


def test_measure_counts_what_is_written_to_disk_and_keeps_a_failure(tmp_path: Path) -> None:
    write = "import os, sys\nwith open(sys.argv[1], 'wb') as f:\n    f.write(os.urandom(8 << 20))\n"
    before = time.time()
    m = measure("write", [sys.executable, "-c", write, str(tmp_path / "x")], tmp_path / "w.log")
    assert before <= m.started <= time.time()
    if file_system_type(tmp_path) != TMPFS:
        assert m.written_kb >= 8 * 1024
    if SHM.is_dir() and file_system_type(SHM) == TMPFS:
        with ram_disk_folder(SHM, 0) as folder:
            on_ram = measure("write", [sys.executable, "-c", write, str(folder / "x")],
                             tmp_path / "r.log")
        assert on_ram.written_kb < 1024  # a tmpfs's files are no disk's writes
    failed = measure_any("fails", [sys.executable, "-c", "print('gone'); raise SystemExit(3)"],
                         tmp_path / "f.log")
    assert failed.returncode == 3


def _log(folder: Path, at: float, task: str, text: str = "") -> Path:
    stamp = datetime.fromtimestamp(at, timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    path = folder / f"{stamp}-{task}.log"
    path.write_text(text)
    os.utime(path, (at, at))
    return path


def test_a_commands_tasks_and_their_phases_come_from_the_workspace_logs(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    log = RunLog(logs, "targetfiles", stream=io.StringIO())  # named as every task's log
    bar = log.progress("zipping targetfiles.zip", 3)
    bar.advance(3)
    bar.finish()
    log.say("targetfiles: built")
    log.close()
    assert log.path is not None
    now = datetime.strptime(log.path.name.split("Z-")[0], "%Y%m%dT%H%M%S.%f").replace(
        tzinfo=timezone.utc).timestamp()  # when it started, as its name says
    os.utime(log.path, (now + 1.5, now + 1.5))
    _log(logs, now - 5, "delta", "before the command\n")
    _log(logs, now + 10, "verify", "after it\n")
    m = Measure("doit targetfiles", 2.0, 0, 0, started=now - 0.2)
    tasks = task_times(logs, m)
    assert [(t.task, [label for label, _s in t.phases]) for t in tasks] == [
        ("targetfiles", ["zipping targetfiles.zip"])]
    assert tasks[0].end == pytest.approx(now + 1.5)
    assert re.fullmatch(r"doit's start and checks 0\.2 s, targetfiles 1\.5 s, after the last "
                        r"task's last line 0\.3 s", tasks_line(logs, m))
    assert tasks_line(logs, Measure("doit", 1.0, 0, 0, started=now + 20)) == (
        "no task of the tool ran: 1.0 s of doit's start and checks")


def test_the_shell_procedures_commands_are_timed_from_its_trace(tmp_path: Path) -> None:
    script = f"set -e\ncd {tmp_path}\ncp -p shell.log copy.log\nsleep 0.1\n"
    log = tmp_path / "shell.log"
    m = measure("traced", ["bash", "-c", TRACE_TIMES + script], log)
    steps = shell_steps(log, m)
    assert [name for name, _s in steps] == ["set -e", "cd", "cp -p", "sleep"]
    assert all(s >= 0 for _n, s in steps) and sum(s for _n, s in steps) <= m.seconds
    assert re.fullmatch(r"(set -e|cd|cp -p|sleep) .*the rest [\d.]+ s", shell_line(log, m))
    untraced = tmp_path / "untraced.log"
    untraced.write_text("no trace\n")
    assert shell_line(untraced, m) == "no trace of its commands in its log"


@pytest.mark.slow  # every step at a tiny scale, on disk and on the RAM disk (about 30 s)
def test_the_ram_disk_run_and_the_big_file_at_small_scale(tmp_path: Path) -> None:
    _need_tmpfs()
    said: list[str] = []
    report = tmp_path / "BENCHMARKS.md"
    table = run_benchmark(tmp_path / "bench", BenchOptions(TINY, report, repeat=1,
                                                           ram_disk=SHM), said.append)
    on_ram = ("shell", "targetfiles", "delta", "verify", "chain", "bsdiff", "again", "one-file")
    assert [m.step for m in table.measures] == [
        name for key in STEPS for name in (
            (STEPS[key], step_name(key, ON_RAM_DISK)) if key in on_ram else (STEPS[key],))]
    steps = {m.step: m for m in table.measures}
    # the RAM disk's steps wrote next to nothing to a disk
    ram_tf, disk_tf = steps[step_name("targetfiles", ON_RAM_DISK)], steps["doit targetfiles"]
    assert ram_tf.written_kb * 10 < disk_tf.written_kb
    assert [(g.number, g.where) for g in table.goals] == [
        ("1", ON_DISK), ("1", ON_RAM_DISK), ("2", ON_DISK), ("2", ON_RAM_DISK),
        ("2b", ON_DISK), ("3", ON_DISK), ("3", ON_RAM_DISK), ("4", ON_DISK),
        ("4", ON_RAM_DISK), ("5", ON_DISK), ("5", ON_RAM_DISK), ("5b", ON_DISK),
        ("6", ON_DISK), ("6", ON_RAM_DISK), ("6b", ON_DISK), ("U1", ON_DISK), ("U2", ON_DISK)]
    goal = {(g.number, g.where): g for g in table.goals}
    assert goal["1", ON_RAM_DISK].value == (ram_tf.seconds
                                            / steps[step_name("shell", ON_RAM_DISK)].seconds)
    big_verify = steps[STEPS["big-verify"]]
    assert goal["5b", ON_DISK].value == big_verify.peak_kb / 1024
    assert big_verify.returncode == 0
    folder = next(line.split(" in ", 1)[1].split(" (")[0] for line in said
                  if line.startswith("bench: the RAM disk's run in "))
    assert folder.startswith("/dev/shm/dfota-bench-") and not Path(folder).exists()
    run = tmp_path / "bench" / "run"
    assert (run / "logs" / "ram-disk" / "one-file.log").is_file()
    assert list((run / "logs" / "ram-disk" / "trial0-state-logs").glob("*-verify.log"))
    assert not (run / "big-sdk").exists() and not (run / "big0" / "archive").exists()
    written = report.read_text()
    assert written == render_report(table)
    for part in ("| RAM disk | a tmpfs at /dev/shm", "| big-file case | the pair's base; its "
                 f"next SDK with `{BIG_PATH}`", "- on a RAM disk: goal 1, where the time goes: "
                 "the shell procedure", "- goal 4: the chain after a one-file change",
                 "- goal 5b: doit targetfiles, the target adds a big file of zeros"):
        assert part in written, part
    # the procedure's trace was read: its commands of 0.05 s or more, then the rest (at this
    # scale unzip may take less)
    assert re.search(r"the shell procedure [\d.]+ s: ([a-z]+( -\w+)? [\d.]+ s, )*the rest "
                     r"[\d.]+ s; CPU", written)
    assert "no trace of its commands" not in written
