"""Exit codes a nightly job can act on, progress on a terminal and off it, a log per run."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dfota.cli import (
    EXIT_CHECK,
    EXIT_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    EXIT_USAGE,
    exit_code,
    tasks_first,
)
from dfota.core.runlog import RunLog
from dfota.package.writer import SCRIPT_ENTRY
from tests.workspace import PROJECT, SAMPLE_LISTS, Workspace


@pytest.mark.parametrize(("doit_code", "failures", "expected"), [
    (0, [], EXIT_OK), (1, ["input"], EXIT_INPUT), (1, ["check"], EXIT_CHECK),
    (1, ["input", "check"], EXIT_CHECK), (2, [], EXIT_INTERNAL), (3, [], EXIT_USAGE),
])
def test_exit_codes_tell_failures_apart(doit_code: int, failures: list[str],
                                        expected: int) -> None:
    assert exit_code(doit_code, failures) == expected


@pytest.mark.parametrize(("argv", "expected"), [
    (["--wait", "600"], ["targetfiles", "delta", "verify", "--wait", "600"]),
    (["--db-file", "x.db", "--sdk=DIR"], ["--db-file", "x.db", "targetfiles", "delta",
                                          "verify", "--sdk=DIR"]),
    (["--archive-private"], ["targetfiles", "delta", "verify", "--archive-private"]),
    (["delta", "--wait", "600"], ["delta", "--wait", "600"]),
    (["-n", "1", "verify:x", "--out", "o"], ["-n", "1", "verify:x", "--out", "o"]),
    (["help", "--sdk"], ["help", "--sdk"]), ([], []), (["--version"], ["--version"]),
])
def test_chain_options_before_any_task_go_to_the_default_tasks(argv: list[str],
                                                                expected: list[str]) -> None:
    """README's nightly line, `dfota --wait 600`: doit takes options only after a task."""
    assert tasks_first(argv) == expected


def dfota(ws: Workspace, *argv: str) -> subprocess.CompletedProcess[str]:
    if "--config" not in argv and argv[0] != "no_such_task":
        argv = (*argv, "--config", str(SAMPLE_LISTS))
    return subprocess.run([sys.executable, "-m", "dfota.cli", "--db-file",
                           str(ws.root / "doit.db"), *argv], cwd=PROJECT, capture_output=True,
                          text=True, check=False)


def chain(ws: Workspace, *tasks: str) -> list[str]:
    argv = ["targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *ws.folders,
            "--config", str(SAMPLE_LISTS)]
    for task in tasks:
        argv += [task, *ws.folders]
    return argv


@pytest.mark.slow
def test_bad_input_usage_and_a_failed_check_exit_differently(ws: Workspace) -> None:
    assert dfota(ws, "targetfiles", "--sdk", str(ws.root / "nowhere"),
                 *ws.folders).returncode == EXIT_INPUT
    assert dfota(ws, "no_such_task").returncode == EXIT_USAGE
    done = dfota(ws, *chain(ws, "delta"))
    assert done.returncode == EXIT_OK, done.stdout + done.stderr
    package = ws.out / ".unverified/update.zip"
    with zipfile.ZipFile(package) as zf:
        kept = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(package, "w") as out:  # a patch whose target sha1 is wrong
        for info, data in kept:
            if info.filename == SCRIPT_ENTRY:
                data = data.replace(b'apply_patch("/system/bin/busybox", "-", "',
                                    b'apply_patch("/system/bin/busybox", "-", "0', 1)
            out.writestr(info, data)
    failed = dfota(ws, *chain(ws, "delta", "verify"))  # up to date but verify
    assert failed.returncode == EXIT_CHECK, failed.stdout + failed.stderr
    assert "error: " in failed.stderr and "package failed verification" in failed.stderr
    assert not package.exists() and any((ws.out / "rejected").iterdir())


@pytest.mark.slow
def test_a_failure_in_a_task_process_reaches_the_exit_code(ws: Workspace) -> None:
    """A command that runs delta runs its tasks in doit's task processes: the kind of a
    failure there still decides dfota's exit code."""
    (ws.sdk / "target/abl.elf").write_bytes(b"not an ELF file")
    failed = dfota(ws, *chain(ws, "delta"))
    assert failed.returncode == EXIT_INPUT, failed.stdout + failed.stderr
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "abl.elf" in errors[0], failed.stderr
    log = sorted((ws.root / "state" / "logs").glob("*-targetfiles.log"))[-1].read_text()
    assert errors[0] in log
    assert not (ws.out / ".unverified").exists()


@pytest.mark.slow
def test_plain_lines_off_a_terminal_a_bar_on_one_and_a_log_per_run(ws: Workspace) -> None:
    plain = dfota(ws, *chain(ws, "delta", "verify"))
    assert plain.returncode == 0, plain.stderr
    assert "\r" not in plain.stdout
    assert "diffing: " in plain.stdout and " done in " in plain.stdout
    for step in ("hashing ql-ol-rootfs", "zipping targetfiles.zip", "zipping update.zip"):
        assert f"{step}: " in plain.stdout, step
    logs = sorted((ws.root / "state/logs").iterdir())
    assert {p.name.split("-", 1)[1] for p in logs} >= {"targetfiles.log", "delta.log",
                                                      "verify.log"}
    delta_log = next(p for p in logs if p.name.endswith("-delta.log")).read_text()
    assert "diff 1/" in delta_log  # the detail lines stdout does not get
    assert "diff 1/" not in plain.stdout
    # on a terminal (util-linux `script` gives the run a pty), the bar is drawn in place
    (ws.out / "update.json").unlink()
    command = shlex.join([sys.executable, "-m", "dfota.cli", "--db-file",
                          str(ws.root / "doit.db"), *chain(ws, "delta", "verify")])
    tty = subprocess.run(["script", "-qec", command, "/dev/null"], cwd=PROJECT,
                         capture_output=True, env={**os.environ, "TERM": "dumb"})
    assert tty.returncode == 0, tty.stdout
    assert b"\rverify: power loss at each step [" in tty.stdout
    assert b"\rzipping update.zip [" in tty.stdout


@pytest.mark.slow
def test_packages_from_several_bases_one_broken(ws: Workspace) -> None:
    assert dfota(ws, *chain(ws)).returncode == 0
    version_file = ws.rootfs / "etc/quectel-project-version"
    version_file.write_text(version_file.read_text().replace("2022-07-15,09:30",
                                                             "2022-08-01,08:00"))
    (ws.rootfs / "etc/ql_manager.conf").write_text("log_level=debug\n")
    third = ["targetfiles", "--sdk", str(ws.sdk), *ws.folders]
    assert dfota(ws, *third).returncode == 0
    index_of = json.loads((ws.archive / "index.json").read_text())
    keys = [v["key"] for v in index_of["versions"]]
    assert len(keys) == 3
    good = dfota(ws, *third, "delta", *ws.folders, "--bases", "2")
    assert good.returncode == EXIT_OK, good.stdout + good.stderr
    index = json.loads((ws.out / "deltas/index.json").read_text())
    assert [p["base"] for p in index["packages"]] == [keys[1], keys[0]]
    assert all(p["ok"] and p["result"] == "verified" for p in index["packages"])
    for package in index["packages"]:
        assert Path(package["folder"]).name == f"{package['base']}_to_{keys[2]}"
        assert zipfile.ZipFile(ws.root / package["package"]).testzip() is None
    # the oldest base's archived zip is damaged: that base fails, the other is still made
    broken = ws.archive / keys[0] / "targetfiles.zip"
    broken.chmod(0o644)
    broken.write_bytes(broken.read_bytes()[:-10])
    shutil.rmtree(ws.out / "deltas")
    bad = dfota(ws, *third, "delta", *ws.folders, "--bases", f"{keys[1]},{keys[0]}")
    assert bad.returncode == EXIT_CHECK, bad.stdout + bad.stderr
    index = json.loads((ws.out / "deltas/index.json").read_text())
    assert [(p["base"], p["ok"]) for p in index["packages"]] == [(keys[1], True),
                                                                  (keys[0], False)]
    assert "the archive was altered" in index["packages"][1]["result"]
    assert "1 of 2 bases failed" in bad.stderr


@pytest.mark.slow
def test_every_public_task_has_a_description_and_help_shows_parameters() -> None:
    def doit(*argv: str) -> str:
        return subprocess.run([sys.executable, "-m", "doit", *argv], cwd=PROJECT,
                              capture_output=True, text=True, check=True).stdout

    listed = dict(line.split(None, 1) for line in doit("list").splitlines())
    assert set(listed) == {"sample", "targetfiles", "delta", "verify", "versions",
                           "import_base", "bench", "prune", "twin", "upgrade", "serve"}
    assert all(len(text.strip()) > 20 for text in listed.values())
    help_delta = doit("help", "delta")
    for option in ("--base=", "--mode=", "--bases=", "--config=", "--out="):
        assert option in help_delta
    help_upgrade = doit("help", "upgrade")
    for option in ("--device=", "--transfer=", "--at=", "--unverified", "--kill-port-users"):
        assert option in help_upgrade
    assert "--sdk=" in doit("help", "targetfiles")


def test_a_file_dependency_changes_with_its_inode_size_or_time_not_by_reading_it(
        tmp_path: Path) -> None:
    from dfota.commands.loader import StatChecker

    checker, dep = StatChecker(), tmp_path / "targetfiles.zip"
    dep.write_bytes(b"first")
    state = checker.get_state(str(dep), None)
    assert state is not None and checker.get_state(str(dep), state) is None
    assert not checker.check_modified(str(dep), os.stat(dep), json.loads(json.dumps(state)))
    staged = tmp_path / "staged"
    staged.write_bytes(b"other")  # same size, renamed into place: a new inode
    os.utime(staged, ns=(dep.stat().st_atime_ns, dep.stat().st_mtime_ns))
    os.replace(staged, dep)
    assert checker.check_modified(str(dep), os.stat(dep), state)


@pytest.mark.slow
def test_doits_record_is_a_write_ahead_log_in_the_project_and_stock_sqlite3_elsewhere(
        tmp_path: Path) -> None:
    db = tmp_path / "doit.db"
    listing = subprocess.run([sys.executable, "-m", "doit", "list", "--db-file", str(db)],
                             cwd=PROJECT, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    import sqlite3

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    elsewhere = subprocess.run(
        [sys.executable, "-c", "import os, sys; sys.path.insert(0, sys.argv[1]); "
         "os.chdir(sys.argv[2]); from dfota.commands.loader import db_backend; print(db_backend())",
         str(PROJECT), str(tmp_path)], capture_output=True, text=True, check=True)
    assert elsewhere.stdout.strip() == "sqlite3"


def break_a_patch(package: Path, into: Path | None = None) -> None:
    """The package with a patch whose target sha1 is wrong (written to `into`, or in place)."""
    with zipfile.ZipFile(package) as zf:
        kept = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(into or package, "w") as out:
        for info, data in kept:
            if info.filename == SCRIPT_ENTRY:
                data = data.replace(b'apply_patch("/system/bin/busybox", "-", "',
                                    b'apply_patch("/system/bin/busybox", "-", "0', 1)
            out.writestr(info, data)


@pytest.mark.slow
def test_a_published_package_changed_after_verify_is_proven_again(ws: Workspace) -> None:
    assert dfota(ws, *chain(ws, "delta", "verify")).returncode == EXIT_OK
    published = ws.out / "update.zip"
    with zipfile.ZipFile(published, "a") as zf:  # other bytes, still a good package
        zf.comment = b"signed off"
    again = dfota(ws, *chain(ws, "delta", "verify"))
    assert again.returncode == EXIT_OK, again.stdout + again.stderr
    assert "changed after it was verified: proving it again" in again.stdout
    summary = json.loads((ws.out / "update.json").read_text())
    assert summary["package_sha256"] == hashlib.sha256(published.read_bytes()).hexdigest()
    assert "up to date" in dfota(ws, *chain(ws, "delta", "verify")).stdout
    # a package that no longer proves out is moved out of out/
    break_a_patch(published)
    failed = dfota(ws, *chain(ws, "delta", "verify"))
    assert failed.returncode == EXIT_CHECK, failed.stdout + failed.stderr
    line = failed.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {published}: changed after it was verified"), line
    assert not published.exists() and not (ws.out / "update.json").exists()
    assert len(list((ws.out / "rejected").glob("*/update.zip"))) == 1


@pytest.mark.slow
def test_verify_proves_a_package_named_without_moving_it(ws: Workspace) -> None:
    assert dfota(ws, *chain(ws, "delta", "verify")).returncode == EXIT_OK
    elsewhere = ws.root / "elsewhere"
    elsewhere.mkdir()
    package = elsewhere / "update.zip"
    shutil.copyfile(ws.out / "update.zip", package)
    shutil.copyfile(ws.out / "update.json", elsewhere / "update.json")
    target = json.loads((ws.out / "update.json").read_text())["target"]
    proven = dfota(ws, "verify", "--package", str(package), *ws.folders)
    assert proven.returncode == EXIT_OK, proven.stdout + proven.stderr
    assert f"{package} is proven" in proven.stdout
    digest = hashlib.sha256(package.read_bytes()).hexdigest()
    report = json.loads((ws.root / "state/proven-packages" / f"{digest}.json").read_text())
    assert report["verify"]["ok"] and report["package"] == str(package)
    assert package.is_file() and (ws.out / "update.zip").is_file()
    # a broken package, no summary beside it: the target must be named; never moved
    broken = ws.root / "broken.zip"
    break_a_patch(package, broken)
    bad_input = dfota(ws, "verify", "--package", str(broken), *ws.folders)
    assert bad_input.returncode == EXIT_INPUT, bad_input.stdout + bad_input.stderr
    assert bad_input.stderr.strip() == (f"error: {broken}: no update.json beside it names the "
                                        "target: give --target KEY|ZIP")
    failed = dfota(ws, "verify", "--package", str(broken), "--target", target, *ws.folders)
    assert failed.returncode == EXIT_CHECK, failed.stdout + failed.stderr
    assert f"error: {broken}: not proven (" in failed.stderr
    assert broken.is_file() and not (ws.out / "rejected").exists()
    missing = dfota(ws, "verify", "--package", str(ws.root / "none.zip"), *ws.folders)
    assert missing.returncode == EXIT_INPUT
    assert missing.stderr.strip() == f"error: {ws.root / 'none.zip'}: no such package"


def test_a_run_with_nothing_to_say_leaves_no_log_file(tmp_path: Path) -> None:
    """Each task's run has its log file; one that wrote nothing (an up-to-date check's
    always-run step, say) is removed when closed, so a nightly job does not pile them up."""
    said = RunLog(tmp_path, "delta", stream=io.StringIO())
    quiet = RunLog(tmp_path, "_targetfiles_inputs")
    said.say("delta: done")
    said.close()
    quiet.close()
    assert [p.name.split("-", 1)[1] for p in tmp_path.iterdir()] == ["delta.log"]
    assert quiet.path is None and said.path is not None
    assert said.path.read_text() == "delta: done\n"
