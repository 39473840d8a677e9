"""`doit targetfiles` end to end on the sample SDK, run through doit as a user runs it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from dfota.build.archive import Archive
from dfota.build.targetfiles import system_tree
from dfota.core.runlog import RunLog
from dfota.core.tree import FolderScan, scan_folder
from dfota.formats.bootimg import build_boot_image
from dfota.formats.zipio import ZipSource
from dfota.package.ahead import MEMBER_SHA1S
from dfota.settings import EMPTY_BY_NATURE, DeltaSettings, TargetfilesSettings, tool_digest
from dfota.settings import Workspace as WorkspaceFolders
from dfota.state.store import Records, file_stamp
from dfota.tools.bench.alternatives import SHELL_PROCEDURE
from tests.workspace import Run, Workspace, snapshot

pytestmark = pytest.mark.slow  # every case runs `doit targetfiles` on a copy of the sample


def versions(ws: Workspace) -> list[str]:
    index = json.loads((ws.archive / "index.json").read_text())
    return [v["key"] for v in index["versions"]]


BASE_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001@20220622T1550"
NEXT_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220715A_01.002@20220715T0930"


def test_builds_checks_with_info_zip_and_archives_both_versions(ws: Workspace) -> None:
    run = ws.build()
    target = ws.out / "targetfiles.zip"
    test = subprocess.run(["unzip", "-tq", target], capture_output=True, text=True)
    assert test.returncode == 0 and "No errors" in test.stdout
    assert versions(ws) == [BASE_KEY, NEXT_KEY]
    manifest = json.loads((ws.archive / NEXT_KEY / "manifest.json").read_text())
    assert manifest["source"] == BASE_KEY
    assert manifest["sha256"] == hashlib.sha256(target.read_bytes()).hexdigest()
    assert manifest["inputs"]["rootfs_tree_sha1"]
    assert (ws.archive / NEXT_KEY / "targetfiles.zip").read_bytes() == target.read_bytes()
    assert (ws.archive / BASE_KEY / "targetfiles.zip").read_bytes() == ws.source.read_bytes()
    assert f"version {NEXT_KEY} built on {BASE_KEY}" in run.stdout


def test_recorded_sha1s_serve_only_for_a_zip_built_and_archived_here(ws: Workspace) -> None:
    ws.build()
    target = ws.out / "targetfiles.zip"
    archive = Archive(ws.archive)
    assert archive.built_here(NEXT_KEY, target)
    assert not archive.built_here(BASE_KEY, ws.source)  # imported, not built here
    with ZipSource(target) as src:
        assert system_tree(src, recorded_sha1s=True) == system_tree(src)
    # one file edited by hand, same size, the manifest left as it was
    altered = ws.root / "altered.zip"
    name = "SYSTEM/etc/ql_manager.conf"
    with zipfile.ZipFile(target) as zin, zipfile.ZipFile(altered, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info)
            zout.writestr(info, data.upper() if info.filename == name else data)
    assert not archive.built_here(NEXT_KEY, altered)
    with ZipSource(altered) as src:
        trusting, hashing = system_tree(src, recorded_sha1s=True), system_tree(src)
        rel = name.removeprefix("SYSTEM/")
        assert hashing[rel].sha1 == hashlib.sha1(src.read(name)).hexdigest()
        assert trusting[rel].sha1 != hashing[rel].sha1  # why only zips built here are trusted


def test_target_has_the_sdk_images_the_rootfs_and_the_source_firmware(ws: Workspace) -> None:
    ws.build()
    with ZipSource(ws.out / "targetfiles.zip") as tgt, ZipSource(ws.source) as src:
        assert tgt.read("BOOTABLE_IMAGES/boot.img") == (
            ws.sdk / "target/sdxlemur-boot.img").read_bytes()
        assert tgt.read("MULTIFOTA/abl.elf") == (ws.sdk / "target/abl.elf").read_bytes()
        for name in src.names():
            if name.startswith(("SYSTEM/firmware", "SYSTEM/dev", "OTA/", "RADIO/", "RECOVERY/")):
                assert name in tgt.members, name
                assert tgt.members[name].kind == src.members[name].kind
                if tgt.members[name].kind == "file":
                    assert tgt.sha1(name) == src.sha1(name)
        rootfs = scan_folder(ws.rootfs, skip_top=("firmware", "dev")).entries
        system = {n[len("SYSTEM/"):]: m for n, m in tgt.members.items()
                  if n.startswith("SYSTEM/") and not n.startswith(("SYSTEM/firmware",
                                                                   "SYSTEM/dev"))}
        assert set(system) == set(rootfs)
        for rel, entry in rootfs.items():
            assert system[rel].kind == entry.kind and system[rel].mode == entry.mode, rel
        stale = [n for n in tgt.names("SYSTEM/firmware") if n not in src.members]
        assert stale == []  # the rootfs's own firmware/ never reaches the target
        meta = json.loads(tgt.read("META/system_manifest.json"))
        owners = {e["path"]: (e["uid"], e["gid"]) for e in meta["entries"]}
        assert set(owners.values()) == {(0, 0)}  # the build user's files are root's
        assert set(owners) == {n[len("SYSTEM/"):] for n in tgt.names("SYSTEM/")}


def test_info_zip_extraction_equals_the_notes_shell_procedure(ws: Workspace, tmp_path: Path
                                                              ) -> None:
    """Section 2.2.2 run with the real commands, compared entry for entry with the tool's zip."""
    ws.build()
    shell = tmp_path / "v2"
    shell.mkdir()
    subprocess.run(["bash", "-c", SHELL_PROCEDURE], cwd=shell, check=True,
                   env={**os.environ, "SOURCE": str(ws.source), "SDK": str(ws.sdk)})
    trees = {}
    for label, archive in (("shell", shell / "targetfiles.zip"),
                           ("tool", ws.out / "targetfiles.zip")):
        dest = tmp_path / label
        dest.mkdir()
        subprocess.run(["unzip", "-qK", archive, "-d", dest], check=True)
        shutil.rmtree(dest / "META", ignore_errors=True)  # the tool's own sidecars
        trees[label] = scan_folder(dest).entries
    assert trees["tool"].keys() == trees["shell"].keys()
    for path, entry in trees["shell"].items():
        mine = trees["tool"][path]
        assert (mine.kind, mine.mode, mine.link, mine.sha1) == (
            entry.kind, entry.mode, entry.link, entry.sha1), path


def test_two_builds_are_byte_identical_whatever_clock_zone_umask_and_temp(
        ws: Workspace, tmp_path: Path) -> None:
    ws.build()
    first = (ws.out / "targetfiles.zip").read_bytes()
    other = tmp_path / "tmp"
    other.mkdir()
    shutil.rmtree(ws.out)
    shutil.rmtree(ws.root / "state")
    (ws.root / "doit.db").unlink()
    ws.build(env={"TZ": "America/St_Johns", "LC_ALL": "C.UTF-8", "TMPDIR": str(other)})
    assert (ws.out / "targetfiles.zip").read_bytes() == first
    # the archive took the second build as the same version: nothing new
    assert versions(ws) == [BASE_KEY, NEXT_KEY]


def test_second_run_does_nothing_and_any_change_rebuilds(ws: Workspace) -> None:
    ws.build()
    again = ws.build()
    assert "up to date: nothing changed" in again.stdout
    assert ".  targetfiles\n" not in again.stdout
    # the source left to the default (the archived copy, the same bytes) is another setting:
    # rebuilt, and the archive already holds that content
    archived = snapshot(ws.archive)
    default = ws.build(default_source=True)
    assert "already archived, same content" in default.stdout
    assert snapshot(ws.archive) == archived
    # a mode change without a version bump: rebuilt, and refused by the archive
    os.chmod(ws.rootfs / "etc/webui/test.cfg", 0o600)
    before = snapshot(ws.out, ws.archive)
    refused = ws.doit()
    assert refused.returncode != 0
    assert "already archived with other content; bump 'Package Time'" in refused.stderr
    assert snapshot(ws.out, ws.archive) == before
    # bump the version: rebuilt and archived as a third version, built on the newest other one
    version_file = ws.rootfs / "etc/quectel-project-version"
    version_file.write_text(version_file.read_text().replace("2022-07-15,09:30",
                                                             "2022-07-16,10:00"))
    ws.build(default_source=True)
    assert len(versions(ws)) == 3
    manifest = json.loads((ws.archive / versions(ws)[-1] / "manifest.json").read_text())
    assert manifest["source"] == NEXT_KEY
    # a symlink retargeted: rebuilt (and refused again, same version)
    link = next(p for p in ws.rootfs.rglob("*") if p.is_symlink())
    target = os.readlink(link)
    link.unlink()
    link.symlink_to(target + ".new")
    assert "already archived with other content" in ws.doit(default_source=True).stderr


def test_empty_directories_are_warned_one_by_one_and_strict_fails(ws: Workspace) -> None:
    empty = sorted(p for p in ws.rootfs.rglob("*")
                   if p.is_dir() and not p.is_symlink() and not any(p.iterdir())
                   and p.relative_to(ws.rootfs).parts[0] not in ("firmware", "dev")
                   and p.relative_to(ws.rootfs).as_posix() not in EMPTY_BY_NATURE)
    assert empty, "the sample has empty directories"
    run = ws.build()
    warned = [line for line in run.stdout.splitlines() if "empty directory" in line]
    assert len(warned) == len(empty)
    for folder in empty:
        assert any(line.startswith(f"warning: {folder}: empty directory") for line in warned)
    shutil.rmtree(ws.out)
    strict = ws.doit("--strict")
    assert strict.returncode != 0 and "--strict is set" in strict.stderr
    assert not (ws.out / "targetfiles.zip").exists()



def test_a_strict_build_stopped_late_archives_nothing(ws: Workspace) -> None:
    """The rootfs against the SDK's image is compared once the zip is written, while the
    source is being copied into the archive: a --strict build stopped there drops that copy."""
    for folder in [p for p in ws.rootfs.rglob("*")
                   if p.is_dir() and not p.is_symlink() and not any(p.iterdir())]:
        (folder / "README").write_text("kept\n")  # no early warning; late ones: not in the image
    strict = ws.doit("--strict")
    assert strict.returncode != 0 and "--strict is set" in strict.stderr
    assert any(line.startswith("warning: ") and "sdxlemur-sysfs.ubi" in line
               for line in strict.stdout.splitlines()), strict.stdout
    assert not (ws.out / "targetfiles.zip").exists()
    assert not ws.archive.exists() or sorted(p.name for p in ws.archive.iterdir()) in (
        [], ["index.json"])


def _tasks_run(state: Path) -> list[str]:
    """The tasks that ran in the workspace, by their log files, oldest first."""
    return [p.stem.split("Z-", 1)[1] for p in sorted((state / "logs").glob("*.log"))]


def test_delta_makes_ahead_what_it_asks_for_and_targetfiles_alone_does_not(
        ws: Workspace) -> None:
    """`_delta_ahead`, which a command runs beside targetfiles when it runs delta, keeps the
    sha1s of a base not built here and the kernel's patch where delta looks: delta then
    hashes no base entry and diffs no kernel. `doit targetfiles` alone makes none of it."""
    state = ws.root / "state"
    ws.build()
    assert _tasks_run(state) == ["_targetfiles_inputs", "targetfiles"]
    assert not (state / "records" / MEMBER_SHA1S).exists()
    assert not list(state.glob("patch-cache/*.p")) and not (state / "delta-ahead.json").exists()

    config = Path(__file__).resolve().parent.parent / "sample_sdk/config"
    chain = ["targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *ws.folders,
             "delta", *ws.folders, "--config", str(config)]
    delta = ws.run(*chain)
    assert delta.returncode == 0, delta.stdout + delta.stderr
    assert _tasks_run(state)[2:] == ["_targetfiles_inputs", "_delta_ahead", "delta"]
    ahead = sorted((state / "logs").glob("*-_delta_ahead.log"))[-1].read_text()
    assert "made ahead for delta in " in ahead and ": the sha1s of the base's " in ahead
    assert ahead.rstrip().endswith(", the kernel's patch")
    records = Records(state / "records", tool_digest())
    source_sha256 = hashlib.sha256(ws.source.read_bytes()).hexdigest()
    (kept,) = (state / "records" / MEMBER_SHA1S).iterdir()
    assert kept == records.path(MEMBER_SHA1S, source_sha256)
    with zipfile.ZipFile(ws.source) as src:
        files = {i.filename: hashlib.sha1(src.read(i)).hexdigest() for i in src.infolist()
                 if stat.S_ISREG(i.external_attr >> 16)}
        source_boot = hashlib.sha1(src.read("BOOTABLE_IMAGES/boot.img")).hexdigest()
    assert records.get(MEMBER_SHA1S, source_sha256) == files
    target_boot = hashlib.sha1((ws.sdk / "target/sdxlemur-boot.img").read_bytes()).hexdigest()
    assert source_boot != target_boot, "the sample's kernel changes"
    assert list((state / "patch-cache").glob(f"{source_boot}-{target_boot}-*.p"))
    log = sorted((state / "logs").glob("*-delta.log"))[-1].read_text()
    assert "patches: 1 files, 1 from the cache, 0 whole by rule, 0 to diff" in log, log
    # the same inputs again: made already, nothing runs but the inputs step
    assert ws.run(*chain).returncode == 0
    assert _tasks_run(state)[5:] == ["_targetfiles_inputs"]

    # a one-file change on the same source: its sha1s and the kernel's patch are kept
    # already, the base is not even opened; delta still checks the patch it takes
    version_file = ws.rootfs / "etc/quectel-project-version"
    version_file.write_text(version_file.read_text().replace("2022-07-15,09:30",
                                                             "2022-07-15,09:45"))
    assert ws.run(*chain).returncode == 0
    ahead = sorted((state / "logs").glob("*-_delta_ahead.log"))[-1].read_text()
    assert ahead.rstrip().endswith(": nothing"), ahead
    log = sorted((state / "logs").glob("*-delta.log"))[-1].read_text()
    assert "patches: 1 files, 1 from the cache, 0 whole by rule, 0 to diff" in log, log
    assert len(_tasks_run(state)) == 10

    # the next build's source is this one, built here: its sha1s are in its manifest already,
    # and its kernel is the SDK's
    version_file.write_text(version_file.read_text().replace("2022-07-15,09:45",
                                                             "2022-07-16,10:00"))
    chain.remove("--source")
    chain.remove(str(ws.source))
    assert ws.run(*chain).returncode == 0
    ran = _tasks_run(state)[10:]  # the two in the middle side by side
    assert (ran[0], sorted(ran[1:3]), ran[3:]) == ("_targetfiles_inputs",
                                                   ["_delta_ahead", "targetfiles"], ["delta"])
    assert list((state / "records" / MEMBER_SHA1S).iterdir()) == [kept]
    ahead = sorted((state / "logs").glob("*-_delta_ahead.log"))[-1].read_text()
    assert ahead.rstrip().endswith(": nothing"), ahead


def test_the_ahead_work_opens_no_zip_when_an_earlier_run_made_it(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """`_delta_ahead` where a command ran delta without it (`doit -s delta`), with the base's
    sha1s and the kernel's patch kept by an earlier run: it plans nothing, and opens no zip
    to learn that (the base's sha256 comes from the digest cache)."""
    from dfota.formats import zipio
    from dfota.package import ahead

    config = Path(__file__).resolve().parent.parent / "sample_sdk/config"
    chain = ["targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *ws.folders,
             "delta", *ws.folders, "--config", str(config)]
    assert ws.run(*chain).returncode == 0
    folders = WorkspaceFolders(ws.out, ws.root / "state", ws.archive)
    settings = TargetfilesSettings(folders, ws.sdk, str(ws.source))

    def refused(path: Path, *_: object) -> None:
        raise AssertionError(f"opened {path}")

    monkeypatch.setattr(zipio, "ZipSource", refused)
    with folders.open_state() as state:
        work = ahead.plan(DeltaSettings(folders, config), settings, state)
    assert (work.base_zip, work.base_sha256, work.boot_image) == (ws.source, None, None)
    assert ahead.make(work).endswith(": nothing")


def test_the_build_takes_the_rootfs_scan_the_inputs_step_kept(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rootfs is walked once per command: the inputs step keeps its scan in a record by
    the inputs manifest (rewritten only when it changed), which the build takes when the
    inputs step ran before it in the same command (not under `doit -s targetfiles`)."""
    from dfota.build import assemble, inputs
    from dfota.build.manifest import scan_rootfs as walk

    walks: list[Path] = []

    def counted(rootfs: Path, *args: object) -> FolderScan:
        walks.append(rootfs)
        return walk(rootfs, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(assemble, "scan_rootfs", counted)
    monkeypatch.setattr(inputs, "scan_rootfs", counted)
    state = ws.root / "state"
    settings = TargetfilesSettings(WorkspaceFolders(ws.out, state, ws.archive), ws.sdk,
                                   str(ws.source))
    with settings.workspace.open_state() as opened:
        inputs.write_inputs_manifest(settings, [], opened)
    (record,) = (state / "records" / inputs.SCAN_RECORD).iterdir()
    written = file_stamp(record.stat())
    with settings.workspace.open_state() as opened:  # the same inputs: nothing written
        inputs.write_inputs_manifest(settings, [], opened)
    assert len(walks) == 2 and file_stamp(record.stat()) == written
    log = RunLog(None, "targetfiles", stream=io.StringIO())
    first = assemble.build_targetfiles(settings, log, [], inputs_recorded=True)
    assert len(walks) == 2, "the build walked the rootfs again"
    (ws.out / "targetfiles.zip").unlink()
    again = assemble.build_targetfiles(settings, log, [])  # not told: it walks
    assert len(walks) == 3
    assert (first.sha256, first.warnings) == (again.sha256, again.warnings)


def test_what_the_scan_says_beside_the_tree_is_an_input_of_the_target(ws: Workspace) -> None:
    """The kept scan is taken by its key alone (a run with nothing to do builds no JSON of
    it): a FIFO that cannot be packed, or a second name of a rootfs file made outside the
    rootfs, leaves the tree as it was yet changes what targetfiles warns of or refuses, so it
    changes the inputs manifest and the scan kept for it."""
    from dfota.build import inputs

    settings = TargetfilesSettings(WorkspaceFolders(ws.out, ws.root / "state", ws.archive),
                                   ws.sdk, str(ws.source))

    def manifest_and_scan() -> tuple[str, FolderScan | None]:
        with settings.workspace.open_state() as opened:
            inputs.write_inputs_manifest(settings, [], opened)
            return (settings.workspace.inputs_manifest.read_text(),
                    inputs.recorded_scan(settings, opened))

    first, _ = manifest_and_scan()
    assert manifest_and_scan()[0] == first
    os.mkfifo(ws.rootfs / "etc" / "fifo")
    with_fifo, scan = manifest_and_scan()
    assert with_fifo != first and scan is not None
    assert any("etc/fifo: FIFO cannot be packed" in w for w in scan.warnings), scan.warnings
    os.link(ws.rootfs / "etc" / "passwd", ws.root / "passwd-outside")
    with_link, scan = manifest_and_scan()
    assert with_link != with_fifo and scan is not None
    assert scan.outside_links == ((("etc/passwd",), 2),)


def error_line(run: Run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode != 0
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    return lines[0]


def _write_zip(path: Path, names: list[str]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), b"x")


def _abl_missing(ws: Workspace, target: Path) -> str:
    (target / "abl.elf").unlink()
    return f"{target / 'abl.elf'}: missing from the SDK output"


def _abl_not_elf(ws: Workspace, target: Path) -> str:
    (target / "abl.elf").write_text("not an elf\n")
    return f"{target / 'abl.elf'}: not an ELF file"


def _abl_truncated(ws: Workspace, target: Path) -> str:
    data = (target / "abl.elf").read_bytes()
    (target / "abl.elf").write_bytes(data[: len(data) - 100])
    return "beyond the file"


def _boot_bad_magic(ws: Workspace, target: Path) -> str:
    image = bytearray((target / "sdxlemur-boot.img").read_bytes())
    image[:8] = b"NOTANDRD"
    (target / "sdxlemur-boot.img").write_bytes(bytes(image))
    return f"{target / 'sdxlemur-boot.img'}: not an Android boot image"


def _boot_v3(ws: Workspace, target: Path) -> str:
    image = bytearray(build_boot_image(b"k" * 5000, cmdline="x"))
    image[40:44] = (3).to_bytes(4, "little")
    (target / "sdxlemur-boot.img").write_bytes(bytes(image))
    return "unsupported boot image header version 3"


def _source_not_zip(ws: Workspace, target: Path) -> str:
    ws.source.write_text("hello")
    return f"{ws.source}: not a usable zip file"


def _source_truncated(ws: Workspace, target: Path) -> str:
    ws.source.write_bytes(ws.source.read_bytes()[:5000])
    return f"{ws.source}: not a usable zip file"


def _source_dotdot(ws: Workspace, target: Path) -> str:
    _write_zip(ws.source, ["SYSTEM/", "SYSTEM/../../evil"])
    return "would escape its folder"


def _source_absolute(ws: Workspace, target: Path) -> str:
    _write_zip(ws.source, ["/etc/passwd"])
    return "absolute or empty name"


def _source_without_firmware(ws: Workspace, target: Path) -> str:
    with zipfile.ZipFile(ws.source) as zf, zipfile.ZipFile(ws.root / "cut.zip", "w") as out:
        for info in zf.infolist():
            if not info.filename.startswith("SYSTEM/firmware"):
                out.writestr(info, zf.read(info))
    shutil.move(ws.root / "cut.zip", ws.source)
    return "has no SYSTEM/firmware/"


def _version_file_missing(ws: Workspace, target: Path) -> str:
    (ws.rootfs / "etc/quectel-project-version").unlink()
    return "version file missing from the rootfs"


# each case damages one input and returns the text the error line must hold
BREAKERS: dict[str, Callable[[Workspace, Path], str]] = {
    "missing abl.elf": _abl_missing, "abl.elf not ELF": _abl_not_elf,
    "abl.elf truncated": _abl_truncated, "boot image bad magic": _boot_bad_magic,
    "boot image v3": _boot_v3, "source not a zip": _source_not_zip,
    "source truncated": _source_truncated, "source entry with ..": _source_dotdot,
    "source absolute entry": _source_absolute,
    "source without SYSTEM/firmware": _source_without_firmware,
    "rootfs version file missing": _version_file_missing,
}
BAD_INPUTS = list(BREAKERS)


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gives_one_line_and_changes_nothing(ws: Workspace, case: str) -> None:
    ws.build()  # out/ and archive/ hold a good earlier result that must survive
    before = snapshot(ws.out, ws.archive)
    expected = BREAKERS[case](ws, ws.sdk / "target")
    line = error_line(ws.doit())
    assert expected in line
    assert snapshot(ws.out, ws.archive) == before


def test_unreadable_rootfs_file_is_named(ws: Workspace) -> None:
    secret = ws.rootfs / "etc/webui/test.cfg"
    secret.chmod(0o000)
    line = error_line(ws.doit(without_dac_override=os.getuid() == 0))
    assert f"{secret}: cannot read file (Permission denied)" in line
    assert not (ws.out / "targetfiles.zip").exists()
    assert stat.S_IMODE(secret.stat().st_mode) == 0


def test_default_source_is_the_newest_other_archived_version(ws: Workspace) -> None:
    ws.build()
    version_file = ws.rootfs / "etc/quectel-project-version"
    version_file.write_text(version_file.read_text().replace("2022-07-15,09:30",
                                                             "2022-08-01,08:00"))
    run = ws.build(default_source=True)
    assert f"built on {NEXT_KEY}" in run.stdout
    run = ws.build("--source", BASE_KEY[:50], default_source=True)  # a unique key prefix
    assert "already archived" not in run.stderr


def test_the_rootfs_hashes_are_kept_for_the_next_run(ws: Workspace) -> None:
    time.sleep(2.1)  # a file changed within 2 s of a scan is never kept (it may change unseen)
    ws.build()
    kept = json.loads((ws.root / "state/digests.json").read_text())["files"]
    files = [p for p, e in scan_folder(ws.rootfs, skip_top=("firmware", "dev")).entries.items()
             if e.kind == "file"]
    assert len(files) > 50 and all(str(ws.rootfs.resolve() / p) in kept for p in files)


def test_drift_from_the_sdk_image_is_warned_and_the_image_can_give_the_metadata(
        ws: Workspace) -> None:
    """The SDK's sysfs image is what the module runs: a mode changed in the folder only is
    named; with --metadata-from-image the target takes the image's mode, recorded as such."""
    assert not any("the image" in line for line in ws.build().stdout.splitlines())
    tool = ws.rootfs / "usr/bin/ql_secret_tool"
    tool.chmod(0o777)
    version_file = ws.rootfs / "etc/quectel-project-version"
    version_file.write_text(version_file.read_text().replace("2022-07-15,09:30",
                                                             "2022-07-16,09:30"))
    drift = ws.build()
    assert any(line.startswith("warning: ") and "usr/bin/ql_secret_tool" in line
               and "mode" in line for line in drift.stdout.splitlines()), drift.stdout
    with ZipSource(ws.out / "targetfiles.zip") as tgt:
        assert tgt.members["SYSTEM/usr/bin/ql_secret_tool"].mode == 0o777
    version_file.write_text(version_file.read_text().replace("2022-07-16,09:30",
                                                             "2022-07-17,09:30"))
    ws.build("--metadata-from-image")
    with ZipSource(ws.out / "targetfiles.zip") as tgt:
        assert tgt.members["SYSTEM/usr/bin/ql_secret_tool"].mode == 0o755
    newest = versions(ws)[-1]
    manifest = json.loads((ws.archive / newest / "manifest.json").read_text())
    assert manifest["system_metadata"] == "sdxlemur-sysfs.ubi"
