"""Every package proven on the host: clean apply, power loss, 510, bspatch, broken packages."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import shutil
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from dfota.build.targetfiles import SYSTEM_MANIFEST
from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.core.tree import FILE
from dfota.device.contents import Stored
from dfota.device.updater import apply_package, load_package
from dfota.formats.filelists import lists_in
from dfota.formats.zipio import ZipSource
from dfota.package.delta import build_delta
from dfota.package.mode import parse_mode
from dfota.package.writer import SCRIPT_ENTRY
from dfota.proof import debian_checks, host_device, replays
from dfota.proof import verify as verify_module
from dfota.proof.publish import verify_delta
from dfota.proof.published import verify_needed
from dfota.proof.verify import VerifyInputs, VerifyReport, verify_package
from dfota.settings import DeltaSettings, VerifySettings
from dfota.state.store import Records
from tests.builders import base_system, f, next_system
from tests.test_delta import pair, quiet
from tests.workspace import Workspace

CHECKS = ["unzip -tq", "project version and format (module pre-check)", "apply to the source",
          "result equals the target", "power loss at every step, then a re-run",
          "a source changed by hand stops with 510, nothing written",
          "Debian bspatch gives the target's bytes"]


def verify(settings: DeltaSettings) -> VerifyReport:
    return verify_package(VerifyInputs(settings.workspace.pending_zip, Path(settings.base),
                                       settings.workspace.target_zip, parse_mode(settings.mode),
                                       lists_in(settings.config_dir)), quiet())


@pytest.mark.parametrize("mode", ["all", "rootfs", "modem", "kernel"])
def test_every_change_kind_applies_and_survives_power_loss_in_each_mode(
        tmp_path: Path, mode: str) -> None:
    settings = pair(tmp_path, mode=mode)
    build_delta(settings, quiet())
    report = verify(settings)
    failed = [c for c in report.checks if not c.ok]
    assert not failed, failed
    names = [c.name for c in report.checks]
    expected = CHECKS if mode != "kernel" else [c for c in CHECKS if "510" not in c]
    assert names == expected
    assert report.steps > 0 and report.replays == report.steps


def test_a_source_changed_by_hand_stops_with_510(tmp_path: Path) -> None:
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    check = next(c for c in verify(settings).checks if "510" in c.name)
    assert check.ok and "510, nothing written" in check.detail


def rewrite(package: Path, change: dict[str, bytes | None]) -> None:
    """Replace (bytes) or drop (None) entries of a package, keeping the others."""
    with zipfile.ZipFile(package) as zf:
        kept = [(info, zf.read(info)) for info in zf.infolist()]
    with zipfile.ZipFile(package, "w") as out:
        for info, data in kept:
            if info.filename in change:
                new = change[info.filename]
                if new is None:
                    continue
                data = new
            out.writestr(info, data)


def script_of(package: Path) -> bytes:
    with zipfile.ZipFile(package) as zf:
        return zf.read(SCRIPT_ENTRY)


def _wrong_sha1(package: Path) -> None:
    script = script_of(package)
    start = script.index(b'apply_patch("/system/bin/busybox", "-", "') + 41
    rewrite(package, {SCRIPT_ENTRY: script[:start] + b"0" * 40 + script[start + 40:]})


def _missing_patch(package: Path) -> None:
    rewrite(package, {"patch/system/bin/busybox.p": None})


def _truncated(package: Path) -> None:
    package.write_bytes(package.read_bytes()[:-200])


def _syntax_error(package: Path) -> None:
    rewrite(package, {SCRIPT_ENTRY: script_of(package).replace(b"\n", b"\r\n", 3)})


def _unknown_function(package: Path) -> None:
    rewrite(package, {SCRIPT_ENTRY: script_of(package) + b'format_everything("/system");\n'})


def _not_resumable(package: Path) -> None:
    """Moves a file away and back at the end: a clean run ends right, a power loss between the
    two leaves a module whose next run cannot find the file."""
    script = script_of(package)
    end = script.rindex(b'unmount("/system");')
    rewrite(package, {SCRIPT_ENTRY: script[:end] + (
        b'rename("/system/bin/busybox", "/system/bin/busybox.away");\n'
        b'rename("/system/bin/busybox.away", "/system/bin/busybox");\n') + script[end:]})


@pytest.mark.parametrize(("damage", "check", "detail"), [
    (_not_resumable, "power loss at every step, then a re-run", "power loss after step"),
    (_wrong_sha1, "apply to the source", "result 510"),
    (_missing_patch, "apply to the source", "result 510"),
    (_truncated, "unzip -tq", "unzip -tq"),
    (_syntax_error, "apply to the source", "result 502"),
    (_unknown_function, "apply to the source", "result 502"),
])
def test_a_hand_broken_package_is_caught_with_the_right_code(
        tmp_path: Path, damage, check: str, detail: str) -> None:
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    damage(settings.workspace.pending_zip)
    report = verify(settings)
    assert not report.ok
    failed = next(c for c in report.checks if not c.ok)
    assert failed.name == check and detail in failed.detail, failed


@pytest.mark.parametrize("damage", [None, _not_resumable], ids=["good", "not-resumable"])
def test_re_runs_that_rejoin_the_whole_run_find_what_full_re_runs_find(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage) -> None:
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    if damage is not None:
        damage(settings.workspace.pending_zip)
    quick = verify(settings)
    replay = replays.replay_power_losses
    monkeypatch.setattr(verify_module, "replay_power_losses",
                        lambda *args, whole_run: replay(*args))  # every re-run to its end
    full = verify(settings)
    assert [(c.name, c.ok, c.detail) for c in quick.checks] == \
        [(c.name, c.ok, c.detail) for c in full.checks]
    assert quick.ok == (damage is None) and quick.replays == full.replays > 10


@pytest.mark.parametrize("which", ["patched", "untouched"])
def test_a_wrong_record_of_the_target_can_fail_verify_never_pass_it(
        tmp_path: Path, which: str) -> None:
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    report = verify_package(VerifyInputs(settings.workspace.pending_zip, Path(settings.base),
                                         settings.workspace.target_zip, parse_mode(settings.mode),
                                         lists_in(settings.config_dir),
                                         target_recorded=True), quiet())
    assert report.ok, report.checks
    with zipfile.ZipFile(settings.workspace.target_zip) as zf:
        manifest = json.loads(zf.read(SYSTEM_MANIFEST))
    patched = {n[len("patch/system/"):-2] for n in zipfile.ZipFile(settings.workspace.pending_zip)
               .namelist() if n.startswith("patch/system/")}
    entry = next(e for e in manifest["entries"] if e["kind"] == "file"
                 and (e["path"] in patched) == (which == "patched"))
    entry["sha1"] = "0" * 40
    rewrite(settings.workspace.target_zip, {SYSTEM_MANIFEST: json.dumps(manifest).encode()})
    report = verify_package(VerifyInputs(settings.workspace.pending_zip, Path(settings.base),
                                         settings.workspace.target_zip, parse_mode(settings.mode),
                                         lists_in(settings.config_dir),
                                         target_recorded=True), quiet())
    failed = next(c for c in report.checks if not c.ok)
    assert failed.name == "result equals the target" and entry["path"] in failed.detail


@pytest.mark.parametrize("which", ["patched", "untouched"])
def test_the_source_sha1s_an_earlier_verify_kept_can_fail_it_never_pass_it(
        tmp_path: Path, which: str) -> None:
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    records = Records(tmp_path / "records", "tool")
    base = Path(settings.base)
    inputs = VerifyInputs(settings.workspace.pending_zip, base, settings.workspace.target_zip,
                          parse_mode(settings.mode), lists_in(settings.config_dir),
                          base_sha256=hashlib.sha256(base.read_bytes()).hexdigest())
    assert verify_package(inputs, quiet(), records=records).ok
    kept = records.get(verify_module.SOURCE_SHA1S, inputs.base_sha256)
    patched = {"SYSTEM/" + n[len("patch/system/"):-len(".p")] for n in
               zipfile.ZipFile(settings.workspace.pending_zip).namelist()
               if n.startswith("patch/system/")}
    with ZipSource(base) as src, ZipSource(settings.workspace.target_zip) as target:
        # what verify kept is what the bytes give
        assert kept == {n: src.sha1(n) for n in kept} and patched <= kept.keys()
        name = next(n for n in sorted(kept) if n.startswith("SYSTEM/") and (
            n in patched if which == "patched" else
            n in target.members and target.sha1(n) == kept[n]))
    assert verify_package(inputs, quiet(), records=records).ok  # taken again: the same
    records.put(verify_module.SOURCE_SHA1S, inputs.base_sha256, {**kept, name: "0" * 40})
    try:
        failed = next(c for c in verify_package(inputs, quiet(), records=records).checks
                      if not c.ok)
    except DfotaError as exc:  # the bytes of a file the package reads, checked as read
        assert "changed while it was being verified" in str(exc) and which == "patched"
    else:
        assert name[len("SYSTEM/"):] in failed.detail
    # kept by the zip's sha256: another zip's record is not taken
    other = dataclasses.replace(inputs, base_sha256="f" * 64)
    assert verify_package(other, quiet(), records=records).ok


def test_a_failing_package_is_moved_aside_with_its_report(tmp_path: Path) -> None:
    settings = pair(tmp_path)
    made = build_delta(settings, quiet())
    _wrong_sha1(settings.workspace.pending_zip)
    with pytest.raises(DfotaError, match=r"package failed verification \(apply to the source"):
        verify_delta(VerifySettings(settings.workspace), quiet(), made.inputs)
    ws = settings.workspace
    assert not ws.pending_zip.exists() and not ws.update_summary.exists()
    (rejected,) = (settings.workspace.out_dir / "rejected").iterdir()
    report = json.loads((rejected / "update.json").read_text())
    assert report["verify"]["ok"] is False
    assert (rejected / "update.zip").is_file()


def test_a_good_package_gets_its_report_and_time_in_the_summary(tmp_path: Path) -> None:
    settings = pair(tmp_path)
    made = build_delta(settings, quiet())
    verify_delta(VerifySettings(settings.workspace), quiet(), made.inputs)
    summary = json.loads(settings.workspace.update_summary.read_text())
    assert summary["verify"]["ok"] is True and summary["verify"]["seconds"] > 0
    assert [c["name"] for c in summary["verify"]["checks"]] == CHECKS


def test_a_summary_that_is_not_a_json_object_stops_verify_with_one_line(tmp_path: Path) -> None:
    settings = pair(tmp_path)
    made = build_delta(settings, quiet())
    settings.workspace.update_summary.write_text("[]\n", "utf-8")  # JSON, yet no summary
    refusal = r"update\.json: not a package summary: not a JSON object$"
    with pytest.raises(DfotaError, match=refusal):
        verify_needed(settings.workspace)
    with pytest.raises(DfotaError, match=refusal):
        verify_delta(VerifySettings(settings.workspace), quiet(), made.inputs)
    assert settings.workspace.pending_zip.is_file()  # left where it was


@pytest.mark.slow
def test_the_default_chain_verifies_the_sample_package(ws: Workspace) -> None:
    chain = ["targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *ws.folders,
             "delta", *ws.folders, "verify", *ws.folders]
    run = ws.run(*chain)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "verify: ok  power loss at every step" in run.stdout
    summary = json.loads((ws.out / "update.json").read_text())
    assert summary["verify"]["ok"] and summary["verify"]["power_loss_replays"] > 10
    assert "up to date: nothing changed" in ws.run(*chain).stdout


def test_power_losses_skip_only_permission_steps_beyond_the_budget() -> None:
    from dfota.proof.replays import replay_points

    log = ["write a", "chmod 1", "chmod 2", "unlink b", *[f"chmod {i}" for i in range(3, 11)],
           "write partition boot"]
    assert replay_points(log, None) == list(range(1, len(log) + 1))
    picked = replay_points(log, 3)
    chmods = [i for i in picked if log[i - 1].startswith("chmod")]
    assert [i for i in picked if not log[i - 1].startswith("chmod")] == [1, 4, 13]
    assert len(chmods) == 3 and chmods[0] == 2 and chmods[-1] == 12


def test_bspatch_proofs_are_kept_by_the_bytes_and_a_failed_one_is_not(tmp_path: Path) -> None:
    """A patch Debian's bspatch proved (source, patch and target bytes the same, the same
    bspatch) is not applied again; one it failed is never kept, and is failed again."""
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    records = Records(tmp_path / "records", "tool")
    bspatch = debian_checks._bspatch_tool()
    record = records.path(debian_checks.BSPATCH_RECORD, bspatch)

    def check(kept: Records = records) -> tuple[list[str], int, int]:
        with ZipSource(Path(settings.base)) as base, \
                ZipSource(settings.workspace.target_zip) as target:
            return debian_checks.bspatch_check(settings.workspace.pending_zip, base, target,
                                               kept)

    problems, count, earlier = check()
    assert problems == [] and count > 2 and earlier == 0
    saved = records.get(debian_checks.BSPATCH_RECORD, bspatch)
    assert len(saved) == count and len(bspatch) == 40
    assert check() == ([], count, count)
    # another bspatch proves nothing that this one did
    records.put(debian_checks.BSPATCH_RECORD, "0" * 40, saved, alone=True)
    assert not record.exists()
    assert check() == ([], count, 0)
    # nor does this one in another version of the tool
    assert check(Records(records.folder, "another version")) == ([], count, 0)
    # a patch damaged: bspatch fails it, it is not kept, and it fails again next time
    with zipfile.ZipFile(settings.workspace.pending_zip) as zf:
        name = sorted(n for n in zf.namelist() if n.startswith("patch/system/"))[0]
        data = bytearray(zf.read(name))
    data[24] ^= 1  # the new file's size in the BSDIFF40 header
    rewrite(settings.workspace.pending_zip, {name: bytes(data)})
    records.put(debian_checks.BSPATCH_RECORD, bspatch, saved, alone=True)
    for _ in range(2):
        problems, again, earlier = check()
        assert again == count and earlier == count - 1
        assert len(problems) == 1 and problems[0].startswith(f"{name}: bspatch")
        assert len(json.loads(record.read_text())["value"]) == count  # the old one, kept


def test_progress_rises_to_100_when_nothing_the_package_writes_weighs(tmp_path: Path) -> None:
    # found by tests/test_property_trees.py: a modem-only package whose files are all empty
    # weighed nothing, so its progress stayed at 0 and verify refused it
    source = {**base_system(), "firmware/image/empty.bin": f("")}
    target = {**next_system(), "firmware/image/empty.bin": f("", 0o600),
              "firmware/image/new.bin": f(""),
              "firmware/image/modem.b00": base_system()["firmware/image/modem.b00"]}
    settings = pair(tmp_path, source=source, target=target, mode="modem",
                    boot_changed=False, abl_changed=False)
    build_delta(settings, quiet())
    report = verify_package(VerifyInputs(settings.workspace.pending_zip, Path(settings.base),
                                         settings.workspace.target_zip, parse_mode("modem"),
                                         lists_in(settings.config_dir)), quiet())
    assert report.ok, [c for c in report.checks if not c.ok]


def test_replays_in_forked_workers_find_what_replays_here_find(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    _not_resumable(settings.workspace.pending_zip)
    here = verify(settings)
    monkeypatch.setattr(replays, "_STEPS_PER_FORK", 0)  # every package in workers
    forked = verify(settings)
    assert [(c.name, c.ok, c.detail) for c in here.checks] == \
        [(c.name, c.ok, c.detail) for c in forked.checks]
    assert not here.ok and here.replays == forked.replays > 10


def test_the_source_is_hashed_whole_and_its_files_read_again_only_when_used(
        tmp_path: Path) -> None:
    """verify hashes every file of the source as it reads it and keeps none: the modeled
    module reads a file again when the package first uses it, and ends as a module that held
    every file does; an entry changed on disk since it was hashed stops with the zip named."""
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    pkg = load_package(settings.workspace.pending_zip)
    with ZipSource(Path(settings.base)) as base, \
            ZipSource(settings.workspace.target_zip) as target:
        minor = host_device.minor_partitions(target, lists_in(settings.config_dir))
        held, tree = host_device.device_from_targetfiles(base, minor)
        stored: dict[str, Stored] = {}
        lazy, same_tree = host_device.device_from_targetfiles(base, minor, stored=stored)
        files = {name: s for name, s in stored.items() if name.startswith("SYSTEM/")}
        assert same_tree == tree and len(files) == sum(e.kind == FILE for e in tree.values())
        assert lazy.digest() == held.digest() and lazy.state() == held.state()
        assert not any(s._data is not None for s in files.values())  # none read again yet
        assert apply_package(pkg, lazy).code == apply_package(pkg, held).code == 0
        assert lazy.digest() == held.digest() and lazy.state() == held.state()
        read = {name for name, s in files.items() if s._data is not None}
        with zipfile.ZipFile(settings.workspace.pending_zip) as zf:
            patched = {"SYSTEM/" + n[len("patch/system/"):-2] for n in zf.namelist()
                       if n.startswith("patch/system/")}
        assert patched and patched <= read < set(files)  # the sources patched, not all
        # an entry changed in the zip after it was hashed, before the module reads it
        fresh, _ = host_device.device_from_targetfiles(base, minor, stored={})
        name = next(n for n, s in files.items() if s.size > 0)
        info = base.members[name].info
        with open(settings.base, "r+b") as raw:
            raw.seek(info.header_offset + 26)
            name_len, extra_len = struct.unpack("<HH", raw.read(4))
            raw.seek(info.header_offset + 30 + name_len + extra_len)
            first = raw.read(1)
            raw.seek(-1, 1)
            raw.write(bytes([first[0] ^ 0xFF]))
        with pytest.raises(DfotaError, match=f"{re.escape(name)}.*corrupt") as caught:
            fresh.host_read("/" + name.replace("SYSTEM/", "system/", 1))
        assert str(caught.value).startswith(f"{settings.base}: entry ")


def test_without_bspatch_verify_stops_where_that_check_comes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bspatch starts before the whole run; a missing one stops verify where its check comes,
    after the others, as when it started last."""
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "unzip").symlink_to(shutil.which("unzip") or "/usr/bin/unzip")
    monkeypatch.setenv("PATH", str(tools))
    said = io.StringIO()
    log = RunLog(None, "test", said)
    with pytest.raises(DfotaError, match="install Debian's bsdiff package"):
        verify_package(VerifyInputs(settings.workspace.pending_zip, Path(settings.base),
                                    settings.workspace.target_zip, parse_mode(settings.mode),
                                    lists_in(settings.config_dir)), log)
    assert "verify: power loss at each step" in said.getvalue()


def test_a_package_the_module_reads_but_the_tool_refuses_stops_after_the_replays(
        tmp_path: Path) -> None:
    """A package with an entry twice: the module's reader keeps the first and the package
    applies, but the tool's zip reader refuses it where it first needs its entries (the
    tampered source), after the whole run and the replays, as before bspatch started early."""
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    package = settings.workspace.pending_zip
    with zipfile.ZipFile(package) as zf:
        first = zf.infolist()[0]
        data = zf.read(first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it writes
        with zipfile.ZipFile(package, "a") as zf:
            zf.writestr(first, data)
    said = io.StringIO()
    log = RunLog(None, "test", said)
    with pytest.raises(DfotaError, match="appears twice"):
        verify_package(VerifyInputs(package, Path(settings.base), settings.workspace.target_zip,
                                    parse_mode(settings.mode), lists_in(settings.config_dir)), log)
    assert "verify: power loss at each step" in said.getvalue()
