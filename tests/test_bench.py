"""The benchmark's generator and table, at a tiny scale (the benchmark itself is not run here)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import subprocess
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest

from dfota.core.errors import DfotaError
from dfota.core.tree import DIR, FILE, SYMLINK, digest_tree, scan_folder
from dfota.settings import PROJECT_DIR
from dfota.tools.bench.alternatives import loop_inputs
from dfota.tools.bench.cli import main as bench_main
from dfota.tools.bench.codes import BEFORE, Code, revision_checkout
from dfota.tools.bench.compare import Comparison, format_comparisons, spread, verdict
from dfota.tools.bench.findings import PackageRun, folder_counts, verify_goals
from dfota.tools.bench.machine import disk_sync_rate, parallel_throughput
from dfota.tools.bench.means import MEANS
from dfota.tools.bench.measure import Measure, combine, measure
from dfota.tools.bench.options import CROSS_STEPS, ON_RAM_DISK, STEPS, BenchOptions
from dfota.tools.bench.pair import bench_is_current, bench_rootfs_pair, generate_bench, tree_changes
from dfota.tools.bench.plan import MB, MODIFIED_BIG, bench_plan, cross_baseline_new
from dfota.tools.bench.report import (
    Goal,
    Table,
    format_goals,
    format_measures,
    format_table,
    render_report,
)
from dfota.tools.bench.run import run_benchmark
from dfota.tools.sample.nodes import under_kept
from dfota.tools.sample.rootfs import base_rootfs
from dfota.tools.sample.versions import CHANGES

TINY = 0.02


def test_full_scale_plan_has_the_size_and_mix_of_a_production_build() -> None:
    plan = bench_plan(1.0)
    base_paths = len(plan.files) + len(plan.links)
    assert base_paths >= 4000
    planned = sum(f.size for f in plan.files if f.kind != "doc")  # doc: size before gzip
    assert 130 * MB < planned < 170 * MB
    assert 55 * MB < sum(plan.modem_segments) + sum(s for _p, s in plan.modem_extra) < 65 * MB
    assert plan.boot_size == 8 * MB
    files = len(plan.files)
    changes = plan.changes
    assert 0.015 < len(changes.modified) / files < 0.03
    added_files = len(plan.added_files)
    removed_files = sum(1 for p in changes.removed if p in {f.path for f in plan.files})
    assert 0.007 < added_files / files < 0.015
    assert 0.007 < removed_files / files < 0.015
    assert changes.mode_changed and changes.retargeted and changes.replaced
    assert MODIFIED_BIG in changes.modified and changes.one_file in changes.modified
    kinds = {f.kind for f in plan.files if f.path in set(changes.modified)}
    assert {"library", "program", "python"} <= kinds


def test_generator_is_deterministic_and_declares_exactly_its_changes() -> None:
    plan = bench_plan.__wrapped__(TINY)
    assert plan == bench_plan.__wrapped__(TINY)
    base, nxt = bench_rootfs_pair(plan)
    again = bench_rootfs_pair(plan)
    assert (base, nxt) == again
    actual = tree_changes(base, nxt)
    declared = plan.changes
    for kind, paths in actual.items():
        assert tuple(paths) == getattr(declared, kind), kind
        assert paths, f"no change of kind {kind} at scale {TINY}"
    # the sample core's changes are part of the mix, the generated ones too
    assert set(CHANGES.modified) < set(declared.modified)
    assert any(p.startswith("usr/lib/ql_next_pkg/") for p in declared.added)
    assert base[declared.one_file].kind == FILE
    assert base[declared.one_file].data != nxt[declared.one_file].data
    # the compressed files are real gzip streams, the programs ELF files
    kinds = {f.path: f.kind for f in plan.files}
    assert all(base[p].data[:2] == b"\x1f\x8b" for p, k in kinds.items() if k == "doc")
    assert all(base[p].data[:4] == b"\x7fELF" for p, k in kinds.items()
               if k in ("program", "library", "module"))


@pytest.mark.slow  # generates the pair twice
def test_generated_pair_on_disk_is_reproducible(tmp_path: Path) -> None:
    digests = []
    for name in ("one", "two"):
        root = tmp_path / name
        generate_bench(root, 0.01)
        assert bench_is_current(root, 0.01) and not bench_is_current(root, 0.02)
        zip_path = root / "firmware/upgrade/targetfiles.zip"
        with zipfile.ZipFile(zip_path) as zf:
            names = set(zf.namelist())
        assert {"BOOTABLE_IMAGES/boot.img", "MULTIFOTA/abl.elf", "OTA/bin/updater",
                "SYSTEM/firmware/image/modem.mdt", "SYSTEM/etc/quectel-project-version",
                f"SYSTEM/{MODIFIED_BIG}"} <= names
        sdk = root / "ql-ol-extsdk"
        assert (sdk / "target/sdxlemur-boot.img").is_file() and (sdk / "target/abl.elf").is_file()
        rootfs = sdk / "ql-ol-rootfs"
        entries, files, links, dirs, _size = folder_counts(rootfs)
        assert entries == files + links + dirs and links > 0 and dirs > 0
        digests.append((hashlib.sha256(zip_path.read_bytes()).hexdigest(),
                        digest_tree(scan_folder(rootfs).entries)))
    assert digests[0] == digests[1]


def test_loop_inputs_diff_changed_files_and_ship_new_ones_whole(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    files = {
        "old": {"SYSTEM/a": b"same", "SYSTEM/b": b"before", "SYSTEM/c": b"same size 1",
                "BOOTABLE_IMAGES/boot.img": b"kernel 1", "MULTIFOTA/abl.elf": b"abl 1"},
        "new": {"SYSTEM/a": b"same", "SYSTEM/b": b"after, longer", "SYSTEM/c": b"same size 2",
                "SYSTEM/d/new": b"new file", "BOOTABLE_IMAGES/boot.img": b"kernel 2",
                "MULTIFOTA/abl.elf": b"abl 2", "SYSTEM/link_became_file": b"x"},
    }
    for side, tree in (("old", old), ("new", new)):
        for rel, data in files[side].items():
            (tree / rel).parent.mkdir(parents=True, exist_ok=True)
            (tree / rel).write_bytes(data)
    os.symlink("a", old / "SYSTEM/link_became_file")
    os.symlink("a", new / "SYSTEM/only_a_link")
    diffs, whole = loop_inputs(old, new)
    assert diffs == ["BOOTABLE_IMAGES/boot.img", "SYSTEM/b", "SYSTEM/c"]
    assert whole == ["MULTIFOTA/abl.elf", "SYSTEM/d/new", "SYSTEM/link_became_file"]


def test_measure_reports_the_largest_process_and_fails_loudly(tmp_path: Path) -> None:
    hold = ("import time; x = bytearray(80 * 1024 * 1024); x[::4096] = b'1' * len(x[::4096]); "
            "time.sleep(0.5)")
    m = measure("hold 80 MB", [sys.executable, "-c", hold], tmp_path / "hold.log")
    assert m.process_kb >= 80 * 1024 and m.peak_kb >= m.process_kb
    assert m.returncode == 0 and m.seconds > 0
    assert m.system_s > 0  # touching 80 MB of new pages is the kernel's work
    spin = measure("spin", [sys.executable, "-c", "x = 0\nfor i in range(3_000_000): x += i"],
                   tmp_path / "spin.log")
    assert spin.user_s > 0.05 and spin.user_s + spin.system_s <= spin.seconds * 1.2
    with pytest.raises(DfotaError, match=r"broken failed \(exit 3\): boom"):
        measure("broken", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"],
                tmp_path / "broken.log")


def _table() -> Table:
    return Table(
        1.0, (("CPU", "Test CPU"), ("cores (nproc)", "2")), (("rootfs", "5,000 entries"),),
        (Measure("shell procedure", 10.04, 2048, 14 * 1024, user_s=2.04, system_s=7.5,
                 written_kb=18 * 1024),
         combine([Measure("doit delta", 3.25, 100 * 1024, 300 * 1024, user_s=4.0, system_s=0.3,
                          written_kb=1024),
                  Measure("doit delta", 3.1, 600 * 1024, 200 * 1024, user_s=3.5, system_s=0.2),
                  Measure("doit delta", 9.0, 500 * 1024, 100 * 1024, user_s=9.0,
                          system_s=0.6, written_kb=3 * 1024)])),
        (Goal("1", "doit targetfiles / shell procedure", 0.5, 0.5, "x"),
         Goal("1", "doit targetfiles / shell procedure", 1.2, 1.0, "x", ON_RAM_DISK),
         Goal("3", "second chain / first chain", 0.0612, 0.03, "x"),
         Goal("5", "peak memory of the chain (MB)", 312.4, 400, "MB"),
         Goal("5b", "peak memory of doit verify (MB)", 312.4, 400, "MB", failed=True)),
        ("a note",))


def test_table_lists_steps_and_ratios_against_their_goals() -> None:
    table = _table()
    goals = format_goals(table.goals).splitlines()
    assert goals[0] == "| # | ratio | where | measured | goal | result |"
    assert goals[2] == ("| 1 | doit targetfiles / shell procedure | on disk | 0.50x | <= 0.50x "
                        "| PASS |")
    assert goals[3] == ("| 1 | doit targetfiles / shell procedure | RAM disk | 1.20x | <= 1.00x "
                        "| MISS |")
    assert goals[4] == "| 3 | second chain / first chain | on disk | 0.061x | <= 0.030x | MISS |"
    assert goals[5] == ("| 5 | peak memory of the chain (MB) | on disk | 312 MB | <= 400 MB "
                        "| PASS |")
    # a step that failed misses its goal whatever its figure
    assert goals[6] == ("| 5b | peak memory of doit verify (MB) | on disk | 312 MB | <= 400 MB "
                        "| MISS (it failed) |")
    steps = format_measures(table.measures).splitlines()
    assert steps[0].endswith("| written MB | tree peak MB | largest process MB |")
    assert steps[2] == "| shell procedure | 10.0 | 1 | 2.0 | 7.5 | 18 | 2 | 14 |"
    assert steps[3] == "| doit delta | 3.2 | 3.2, 3.1, 9.0 | 4.0 | 0.3 | 1 | 600 | 300 |"
    assert format_table(table) == "\n".join(steps) + "\n\n" + "\n".join(goals) + "\n"
    report = render_report(table)
    assert "2 of 5 goals met" in report
    for part in ("## Machine", "| CPU | Test CPU |", "## Data set", "## Steps", "## Goals",
                 "- a note"):
        assert part in report


def test_parallel_throughput_is_a_ratio_of_two_timed_runs() -> None:
    """A measure of the machine, which the benchmark reports: a busy machine moves it either
    way (a second core taken during the lone run gives more than the cores), so only that
    it is a positive number is asserted here."""
    found = parallel_throughput(loops=300_000, repeat=1)
    assert math.isfinite(found) and found > 0


def test_disk_sync_rate_writes_syncs_and_leaves_nothing(tmp_path: Path) -> None:
    assert disk_sync_rate(tmp_path, size=4 * MB) > 0
    assert list(tmp_path.iterdir()) == []


def test_cross_baseline_package_at_full_scale_has_over_4000_steps() -> None:
    new = cross_baseline_new(bench_plan(1.0))
    # every new file and symlink is a mutating step of its own (the small-scale run below
    # checks that against the package verify replays)
    assert new.least_steps >= CROSS_STEPS
    assert new.folders > 0


def test_cross_baseline_plan_counts_the_generated_trees_entries() -> None:
    plan = bench_plan.__wrapped__(TINY)
    _base, nxt = bench_rootfs_pair(plan)
    source = base_rootfs()
    new = [node.kind for path, node in nxt.items() if path not in source
           and not under_kept(path)]
    found = cross_baseline_new(plan)
    assert (found.files, found.symlinks, found.folders) == (
        new.count(FILE), new.count(SYMLINK), new.count(DIR))
    assert found.files and found.symlinks and found.folders


def _cross(delta_s: float, verify_s: float, steps: int) -> PackageRun:
    return PackageRun(Measure("doit targetfiles, cross-baseline", 9.0, 1024, 1024),
                      Measure("doit delta, cross-baseline", delta_s, 1024, 1024),
                      Measure("doit verify, cross-baseline", verify_s, 1024, 1024),
                      {"verify": {"steps": steps, "power_loss_replays": 5270}})


def test_verify_goals_are_the_measured_ratios_against_1x_and_2x() -> None:
    pair, cross = verify_goals(Measure("doit delta", 2.5, 0, 0), Measure("doit verify", 2.5, 0, 0),
                               _cross(10.0, 20.5, 9839))
    assert (pair.number, pair.value, pair.limit, pair.passed) == ("6", 1.0, 1.0, True)
    assert (cross.number, cross.value, cross.limit, cross.passed) == ("6b", 2.05, 2.0, False)
    lines = format_goals((pair, cross)).splitlines()
    assert lines[2] == "| 6 | doit verify / doit delta | on disk | 1.00x | <= 1.00x | PASS |"
    assert lines[3] == ("| 6b | doit verify / doit delta, cross-baseline package (9,839 steps) "
                        "| on disk | 2.05x | <= 2.00x | MISS |")
    report = render_report(Table(1.0, (), (), (), (pair, cross), (), "verify"))
    assert "scale 1 (`--cases verify` only): 1 of 2 goals met" in report
    assert lines[3] in report


@pytest.mark.slow
def test_cross_baseline_case_at_small_scale(tmp_path: Path) -> None:
    said: list[str] = []
    report = tmp_path / "BENCHMARKS.md"
    table = run_benchmark(tmp_path / "bench", BenchOptions(TINY, report, repeat=1,
                                                           cases="verify"), said.append)
    steps = {m.step: m for m in table.measures}
    assert list(steps) == ["doit targetfiles", "doit delta (fresh state but for targetfiles')",
                           "doit verify", "doit targetfiles delta verify, one command",
                           "doit targetfiles, cross-baseline",
                           "doit delta, cross-baseline (fresh state but for targetfiles')",
                           "doit verify, cross-baseline"]
    summary = json.loads((tmp_path / "bench/run/cross/trial0/out/update.json").read_text())
    new = cross_baseline_new(bench_plan(TINY))
    counts = summary["counts"]
    assert (counts["new"], counts["symlink_created"], counts["new_dir"]) == (
        new.files, new.symlinks, new.folders)
    assert summary["verify"]["ok"] and summary["verify"]["steps"] >= new.least_steps
    pair, cross = table.goals
    assert pair.value == (steps["doit verify"].seconds
                          / steps["doit delta (fresh state but for targetfiles')"].seconds)
    assert cross.value == (steps["doit verify, cross-baseline"].seconds / steps[
        "doit delta, cross-baseline (fresh state but for targetfiles')"].seconds)
    assert (pair.limit, cross.limit) == (1.0, 2.0)
    assert f"({summary['verify']['steps']:,} steps)" in cross.what
    written = report.read_text()
    for line in format_goals(table.goals).splitlines():
        assert line in written
    assert (f"| cross-baseline verify | {summary['verify']['steps']:,} steps, "
            f"{summary['verify']['power_loss_replays']:,} power-loss replays |") in written
    assert "| bsdiff loop |" not in written  # the other steps did not run


def test_the_report_carries_what_keeps_the_steps_fast_and_the_readme_points_there() -> None:
    assert MEANS.startswith("## What keeps the steps fast\n") and MEANS in render_report(_table())
    readme = (PROJECT_DIR / "README.md").read_text()
    performance = readme[readme.index("## Performance\n"):]
    performance = performance[:performance.index("\n## ")]
    assert "BENCHMARKS.md" in performance and "--before REV" in performance
    openings = [line[2:50] for line in MEANS.splitlines() if line.startswith("- ")]
    assert len(openings) > 10
    assert [o for o in openings if o in readme] == []  # said once, in BENCHMARKS.md
    assert "## What keeps the steps fast" in (PROJECT_DIR / "BENCHMARKS.md").read_text()


def _runs(step: str, seconds: Sequence[float], cpu: float) -> Measure:
    return combine([Measure(step, s, 1024, 1024, user_s=cpu, system_s=0.0) for s in seconds])


def test_each_step_before_and_after_is_set_against_the_noise_of_its_repeats() -> None:
    before = _runs("doit delta", (4.0, 4.4, 3.6), 2.0)  # median 4.0, noise 20 %
    within = Comparison(before, _runs("doit delta", (4.6, 4.5, 4.7), 2.4))
    beyond = Comparison(_runs("doit verify", (2.0, 2.1, 1.9), 1.0),
                        _runs("doit verify", (2.5, 2.5, 2.6), 1.5))
    assert spread(before) == pytest.approx(0.2) and spread(Measure("once", 3.0, 0, 0)) == 0
    assert (within.ratio, within.noise, within.slower) == (pytest.approx(1.15), pytest.approx(0.2),
                                                           False)
    assert (beyond.ratio, beyond.noise, beyond.slower) == (pytest.approx(1.25), pytest.approx(0.1),
                                                           True)
    assert verdict([within]) == "No step is slower by more than its noise."
    assert verdict([within, beyond]) == ("Slower by more than the noise: doit verify (1.25x, "
                                         "noise 10%).")
    rows = format_comparisons([within, beyond]).splitlines()
    assert rows[2] == ("| doit delta | 4.0 | 4.0, 4.4, 3.6 | 4.6 | 4.6, 4.5, 4.7 | 1.15x | 20% "
                       "| 1.20x | no |")
    assert rows[3].endswith("| 1.25x | 10% | 1.50x | YES |")
    table = Table(1.0, (), (), (within.after, beyond.after), (), (), "all", (within, beyond),
                  ("abc1234 \"before\"", "def5678"))
    report = render_report(table)
    assert "## Before and after" in report and rows[3] in report
    # a code that failed did other work: its time is not compared
    refused = Comparison(dataclasses.replace(beyond.before, returncode=1), beyond.after)
    assert refused.failed == "before" and not refused.slower
    assert format_comparisons([refused]).splitlines()[2].endswith(
        "| 1.25x | 10% | 1.50x | not compared: before failed |")
    assert verdict([within, refused]) == ("No step is slower by more than its noise. Not "
                                          "compared: doit verify (before failed).")
    assert ("Before (abc1234 \"before\") and after (def5678): Slower by more than the noise: "
            "doit verify") in report
    assert "## Before and after" not in render_report(_table())
    assert "\n".join(rows) in format_table(table)


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(PROJECT_DIR), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def _imported_from(code: Code, module: str) -> Path:
    probe = "import importlib, sys; print(importlib.import_module(sys.argv[1]).__file__)"
    done = subprocess.run([sys.executable, "-c", probe, module], cwd=code.root,
                          env={**os.environ, **code.env}, capture_output=True, text=True,
                          check=True)
    return Path(done.stdout.strip()).resolve()


def test_a_revision_runs_from_a_worktree_of_its_own_that_goes_afterwards(tmp_path: Path) -> None:
    try:
        layout = _git("rev-list", "-1", "HEAD", "--", "tasks/dodo_tasks.py")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    revisions = {"HEAD": "dfota."}
    if layout:  # the commit that laid the package out: its parent imports as `tasks`
        revisions[f"{layout}^"] = "tasks."
    where = tmp_path / "code"
    for revision, package in revisions.items():
        with revision_checkout(revision, where) as code:
            assert (code.name, code.root, code.env["PYTHONPATH"]) == (BEFORE, where, str(where))
            assert code.ubi_module.startswith(package)
            assert _imported_from(code, code.ubi_module).is_relative_to(where.resolve())
            if package == "dfota.":  # its templates too, not this checkout's
                assert _imported_from(code, "dfota.templates").is_relative_to(where.resolve())
        assert not where.exists() and str(where) not in _git("worktree", "list")
    wrong = "--before no-such-revision: not a commit of this checkout"
    with pytest.raises(DfotaError, match=wrong), revision_checkout("no-such-revision", where):
        pass


def test_before_needs_repeats_for_its_noise(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--work", str(tmp_path), "--before", "HEAD", "--repeat", "1"])
    assert exit_info.value.code == 2
    assert "--before needs --repeat 2 or more" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # every step on disk with two codes, twice each (about 45 s)
def test_before_and_after_at_small_scale(tmp_path: Path) -> None:
    said: list[str] = []
    report = tmp_path / "BENCHMARKS.md"
    table = run_benchmark(tmp_path / "bench", BenchOptions(TINY, report, repeat=2,
                                                           before="HEAD", ram_disk=None),
                          said.append)
    tool_steps = [name for key, name in STEPS.items() if key not in ("shell", "bsdiff")]
    assert [c.step for c in table.comparisons] == tool_steps
    for c in table.comparisons:
        assert len(c.before.runs) == len(c.after.runs) == 2, c.step
    assert [m.step for m in table.measures] == list(STEPS.values())
    run = tmp_path / "bench" / "run"
    for workspace in ("trial0", "trial1", "before/trial0", "before/trial1", "cross/trial1",
                      "before/cross/trial0"):
        assert json.loads((run / workspace / "out/update.json").read_text())["verify"]["ok"]
    for workspace in ("big0", "big1", "before/big0", "before/big1"):
        assert (run / workspace / "out/update.json").is_file()
    before_logs = {p.name for p in (run / "logs").glob("before-*.log")}
    assert {"before-ubi.log", "before-verify-1.log", "before-one-file-1.log",
            "before-cross-verify.log", "before-chain-1.log", "before-big-verify-1.log"} <= \
        before_logs
    assert not (tmp_path / "bench" / "before-code").exists()
    assert str(tmp_path / "bench" / "before-code") not in _git("worktree", "list")
    written = report.read_text()
    assert "## Before and after" in written and verdict(table.comparisons) in written
    for row in format_comparisons(table.comparisons).splitlines():
        assert row in written
    assert any(line.startswith("bench: doit delta (fresh state but for targetfiles') [before: ")
               for line in said)
