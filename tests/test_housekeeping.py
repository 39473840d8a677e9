"""Many runs, one workspace: the lock, `doit clean`, `doit prune`, Ctrl-C and the messages a
nightly job reads. Run as a user runs them (doit in a project folder)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dfota.core.errors import EXIT_BUSY, EXIT_INTERRUPTED, EXIT_USAGE
from tests.test_configuration import BASE_KEY, NEXT_KEY, Project, own_sdk
from tests.workspace import PROJECT

pytestmark = pytest.mark.slow  # every case runs doit as a nightly job does

HOLD = """
import sys
from pathlib import Path
from dfota.state.lock import take
lock = take(Path(sys.argv[1]), ["doit", "nightly", "chain"])
print("held", flush=True)
sys.stdin.read()
lock.release()
"""


def hold_lock(state: Path) -> subprocess.Popen[str]:
    """Another run holding the workspace's lock until its stdin is closed (then it lets go)
    or it is killed (then it does not)."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(state)], cwd=PROJECT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def has_open(pid: int, path: Path) -> bool:
    """Process `pid` has `path` open."""
    with contextlib.suppress(FileNotFoundError):
        return any(os.readlink(fd) == str(path.resolve())
                   for fd in Path(f"/proc/{pid}/fd").iterdir())
    return False


def test_a_second_writer_is_told_who_holds_the_workspace(project: Project) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    published = (project.root / "out" / "update.zip").read_bytes()
    holder = hold_lock(project.root / "build")
    try:
        busy = project.doit()
        assert busy.returncode == EXIT_BUSY
        lines = busy.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"error: workspace busy: pid {holder.pid} since ")
        assert lines[0].endswith(": doit nightly chain")
        # reading is never locked out
        assert project.doit("versions").returncode == 0
    finally:
        holder.kill()
        holder.communicate()
    assert (project.root / "out" / "update.zip").read_bytes() == published
    # the holder died without letting go: taken over, with a word
    taken = project.ok("targetfiles")
    assert f"taken over from pid {holder.pid} since " in taken.stderr
    assert "ended without letting go" in taken.stderr


def test_wait_takes_the_workspace_when_the_other_run_ends(project: Project) -> None:
    """Seen, not timed: the run with `--wait` has the lock file open (it is taking the lock)
    and is still running while the holder holds it; once the holder lets go, it builds."""
    own_sdk(project)
    lock = project.root / "build" / "lock"
    holder = hold_lock(lock.parent)
    waiting = subprocess.Popen([sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"),
                                "-d", str(project.root), "targetfiles", "--source",
                                str(project.base), "--wait", "600"], cwd=project.root,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONPATH": str(PROJECT)})
    try:
        while waiting.poll() is None and not has_open(waiting.pid, lock):
            time.sleep(0.01)
        waited = waiting.poll() is None
        built_while_held = (project.root / "out" / "targetfiles.zip").exists()
    finally:
        holder.communicate("")  # closes its stdin: it lets go
        out, err = waiting.communicate()
    assert waited and not built_while_held, out + err
    assert waiting.returncode == 0, out + err
    assert "busy" not in err and "taken over" not in err
    assert (project.root / "out" / "targetfiles.zip").is_file()


def test_two_chains_at_once_in_one_workspace(project: Project) -> None:
    """One publishes, the other is told the workspace is busy; the published package is the
    one its run proved."""
    own_sdk(project)
    (project.sdk / "ql-ol-rootfs" / "usr" / "big.bin").write_bytes(os.urandom(20 << 20))
    runs = [subprocess.Popen([sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"),
                              "-d", str(project.root), "targetfiles", "--source",
                              str(project.base), "delta", "verify"], cwd=project.root,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(PROJECT)})
            for _ in range(2)]
    done = [(r.wait(), r.stderr.read() if r.stderr else "") for r in runs]
    codes = sorted(code for code, _ in done)
    assert codes in ([0, 0], [0, EXIT_BUSY]), done
    summary = project.summary()
    assert summary["published"] and summary["verify"]["ok"]
    assert (summary["source"], summary["target"]) == (BASE_KEY, NEXT_KEY)


def test_clean_removes_outputs_and_state_never_the_archive(project: Project) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    archived = project.archived()
    clean = project.ok("clean")
    assert f"clean: removed {project.root / 'out'}" in clean.stdout
    assert not (project.root / "out").exists() and not (project.root / "build").exists()
    assert project.archived() == archived
    project.ok("targetfiles", "--source", BASE_KEY)  # builds again, on the archived base


def test_prune_keeps_the_newest_and_what_they_need(project: Project) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    third = project.bump("2022-08-01,08:00")
    project.ok()
    fourth = project.bump("2022-09-01,08:00")
    project.ok()
    assert project.archived() == sorted([BASE_KEY, NEXT_KEY, third, fourth])
    assert project.doit("prune").returncode == 1  # --keep is required
    run = project.ok("prune", "--keep", "1")
    assert f"prune: kept {third}: out/ points to it" in run.stdout
    assert f"prune: removed {BASE_KEY}" in run.stdout
    assert f"prune: removed {NEXT_KEY}" in run.stdout
    assert project.archived() == sorted([third, fourth])
    index = json.loads((project.root / "archive" / "index.json").read_text())
    assert [v["key"] for v in index["versions"]] == [third, fourth]


def test_prune_never_removes_the_source_of_a_kept_version_unless_forced(
        project: Project, sample_sdk: Path) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    third = project.bump("2022-08-01,08:00")
    project.ok()
    fourth = project.bump("2022-09-01,08:00")
    project.ok("targetfiles", "--source", NEXT_KEY, "delta", "verify")  # 4 built on 2
    # pruned from another workspace of the shared archive: its out/ points to none of them
    other = Project(project.root / "other", sample_sdk)
    other.configure(f'sdk = "{other.sdk}"\narchive = "{project.root / "archive"}"')
    run = other.ok("prune", "--keep", "1")
    assert f"prune: kept {NEXT_KEY}: a kept version was built on it (--force removes it)" \
        in run.stdout
    assert project.archived() == sorted([NEXT_KEY, fourth])
    forced = other.ok("prune", "--keep", "1", "--force")
    assert f"prune: removed {NEXT_KEY}" in forced.stdout
    assert project.archived() == [fourth]
    assert third not in project.archived()


def test_ctrl_c_says_one_line_and_exits_130(project: Project) -> None:
    own_sdk(project)
    (project.sdk / "ql-ol-rootfs" / "usr" / "big.bin").write_bytes(os.urandom(200 << 20))
    run = subprocess.Popen([sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"), "-d",
                            str(project.root), "targetfiles", "--source", str(project.base),
                            "delta", "verify"], cwd=project.root, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert run.stdout is not None and run.stderr is not None
    while "hashing" not in (line := run.stdout.readline()):
        assert line, "the run ended before it was interrupted"
    run.send_signal(signal.SIGINT)
    assert run.wait(60) == EXIT_INTERRUPTED
    errors = run.stderr.read()
    assert errors.splitlines()[-1] == "interrupted: nothing published", errors
    assert "Traceback" not in errors
    assert not (project.root / "out" / "update.zip").exists()
    assert project.archived() == []


def _processes_naming(text: str) -> list[int]:
    """The processes whose command line holds `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(
                    errors="replace"):
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def _stopped_task(body: str, first_line: str,
                  setup: str = "_stop_on_terminate()\n") -> None:
    """`body` run in a process set up as doit's task processes are (`_stop_on_terminate`;
    `setup` says otherwise), where a stop lands at a moment `body` arranges: it prints
    `first_line` once that moment is over, then the stop interrupts it, once, with no
    traceback."""
    script = ("import os, signal, sys, time\n"
              "from dfota.commands.action import _ctrl_c_after_starts, _stop_on_terminate\n"
              + setup + body
              + f"print({first_line!r}, flush=True)\n"
              "try:\n    time.sleep(10)\n"
              "except KeyboardInterrupt:\n    print('interrupted after it', flush=True)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, cwd=PROJECT)
    assert done.stdout.splitlines() == [first_line, "interrupted after it"], done
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr, done


def test_a_signal_inside_a_fork_hook_interrupts_the_task_just_after_it() -> None:
    """Raised inside Python's fork hooks, KeyboardInterrupt would only be printed (with a
    traceback) and lost: the task process takes the signal again once the hook returned."""
    _stopped_task("""
import logging
handler = signal.getsignal(signal.SIGTERM)

class Lock:  # logging's lock, released by its fork hook: the signal lands right there
    def acquire(self, *args): return True
    def release(self): handler(signal.SIGTERM, sys._getframe(1))

logging._lock = Lock()
(getattr(logging, "_releaseLock", None) or logging._afterFork)()
""", "the hook returned")


def test_a_stop_while_a_worker_starts_interrupts_the_task_once_it_is_recorded() -> None:
    """doit's SIGTERM between a worker's start and its recording would leave a worker that
    the task's unwinding does not end (it went on, and wrote into a removed folder): the
    stop comes again once the worker is recorded."""
    _stopped_task("""
from dfota.core.workers import starting
with starting():  # a worker started, not yet recorded by the one that ends it
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.2)
""", "recorded")


def test_ctrl_c_while_a_worker_starts_in_doits_own_process_waits_until_it_is_recorded(
        ) -> None:
    """A command without task processes (`-n 0`) runs its tasks in doit's own process: Ctrl-C
    between a worker's start and its recording comes again once the worker is recorded
    there too, and is Python's KeyboardInterrupt otherwise."""
    _stopped_task("""
from dfota.core.workers import starting
with starting():  # a worker started, not yet recorded by the one that ends it
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.2)
""", "recorded", setup="held = _ctrl_c_after_starts()\nheld.__enter__()\n")


def test_ctrl_c_beside_the_ahead_work_unwinds_every_task_process(project: Project) -> None:
    """Ctrl-C while targetfiles zips and `_delta_ahead` works beside it, each in a task
    process: doit ends them (SIGTERM), each unwinds like Ctrl-C (no staging folder or
    temporary file left), the command waits for them, and the workspace is free at once."""
    own_sdk(project)
    (project.sdk / "ql-ol-rootfs" / "usr" / "big.bin").write_bytes(os.urandom(200 << 20))
    run = subprocess.Popen([sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"), "-d",
                            str(project.root), "targetfiles", "--source", str(project.base),
                            "delta", "verify"], cwd=project.root, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONPATH": str(PROJECT)})
    assert run.stdout is not None and run.stderr is not None
    while "zipping targetfiles.zip" not in (line := run.stdout.readline()):
        assert line, "the run ended before it was interrupted"
    run.send_signal(signal.SIGINT)
    assert run.wait(60) == EXIT_INTERRUPTED
    errors = run.stderr.read()
    assert errors.splitlines()[-1] == "interrupted: nothing published", errors
    assert "Traceback" not in errors
    assert _processes_naming(str(project.root)) == []
    state = project.root / "build"
    assert [p.name for p in state.iterdir() if p.name.startswith("targetfiles.")] == []
    assert [p.name for p in (project.root / "out").iterdir()] == []
    assert project.archived() == []
    again = project.ok("targetfiles", "--source", str(project.base))
    assert "busy" not in again.stderr
    assert "taken over" not in again.stderr, "the interrupted command let go of its lock"


def test_option_errors_and_the_version(project: Project) -> None:
    run = project.doit("targetfiles", "--strikt")
    assert run.returncode == EXIT_USAGE
    assert run.stderr.splitlines() == [
        "error: targetfiles: unknown option --strikt (did you mean --strict?) "
        "(`doit help targetfiles` lists its options)"]
    version = subprocess.run([sys.executable, "-m", "dfota.cli", "--version"], cwd=PROJECT,
                             capture_output=True, text=True, check=True)
    import doit

    from dfota import __version__
    assert version.stdout == (f"dfota {__version__} "
                              f"(doit {'.'.join(map(str, doit.__version__))})\n")


@pytest.fixture
def project(sample_sdk: Path, tmp_path: Path) -> Project:
    return Project(tmp_path, sample_sdk)
