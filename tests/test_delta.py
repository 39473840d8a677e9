"""The delta package: every change kind, each mode, hostile names, Debian's bspatch, the grammar."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.formats.edify_parse import DEVICE_FUNCTIONS, Call, Literal, calls, parse
from dfota.formats.elf import build_abl_elf
from dfota.formats.filelists import REQUIRED_LISTS
from dfota.formats.zipdeflate import EarlierStreams
from dfota.formats.zipio import ZipSource
from dfota.package import writer
from dfota.package.ahead import MEMBER_SHA1S
from dfota.package.delta import build_delta
from dfota.package.writer import PLACEHOLDER, SCRIPT_ENTRY, earlier_streams
from dfota.settings import DeltaSettings
from dfota.settings import Workspace as Folders
from tests.builders import (
    EXPECTED_KINDS,
    HOSTILE,
    base_system,
    binary,
    boot_image,
    edited,
    f,
    next_system,
    write_targetfiles,
)
from tests.workspace import Workspace

LISTS = {
    "quectel_fullota_filelist.txt": "SYSTEM/usr/bin/ql_fullota_demo\n",
    "quectel_noota_filelist.txt": "SYSTEM/etc/webui/test.cfg\n",
    "quectel_chmod_filelist.txt": "/usr/bin/ql_secret_tool 0700 0 0\n"
                                  "/etc/ql_secret/ 0600 0 0 0700\n",
    "quectel_multifota_filelist.txt": "abl.elf abl\n",
}
MUTATING = {"delete", "delete_recursive", "apply_patch", "package_extract_dir", "symlink",
            "set_perm", "set_perm_recursive", "write_raw_image"}

Pair = tuple[DeltaSettings, dict]


def pair(tmp: Path, *, source: dict | None = None, target: dict | None = None,
         boot_changed: bool = True,
         abl_changed: bool = True, lists: dict[str, str] | None = None, **options: Any
         ) -> DeltaSettings:
    base = write_targetfiles(tmp / "base.zip", source or base_system(), boot=boot_image(1),
                             abl=build_abl_elf(b"a" * 900), meta=False)
    (tmp / "out").mkdir(exist_ok=True)
    write_targetfiles(tmp / "out/targetfiles.zip", target or next_system(),
                      boot=boot_image(2 if boot_changed else 1),
                      abl=build_abl_elf(b"b" * 900 if abl_changed else b"a" * 900))
    config = tmp / "config"
    config.mkdir(exist_ok=True)
    for name in REQUIRED_LISTS:  # the lists a test leaves out are empty
        (config / name).touch()
    for name, text in (LISTS if lists is None else lists).items():
        (config / name).write_text(text)
    settings = DeltaSettings(Folders(tmp / "out", tmp / "state", tmp / "archive"),
                             config_dir=config, base=str(base))
    return dataclasses.replace(settings, **options) if options else settings


def quiet() -> RunLog:
    return RunLog(None, "test", io.StringIO())


def script_calls(package: Path) -> tuple[bytes, list[Call]]:
    with zipfile.ZipFile(package) as zf:
        script = zf.read(SCRIPT_ENTRY)
    return script, list(calls(parse(script, DEVICE_FUNCTIONS)))


def args(call: Call) -> list[str]:
    return [a.value.decode() if isinstance(a, Literal) else "" for a in call.args]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Pair:
    tmp = tmp_path_factory.mktemp("delta")
    settings = pair(tmp)
    result = build_delta(settings, quiet())
    assert result.package == settings.workspace.pending_zip
    return settings, dict(result.summary)


def test_every_change_kind_is_classified_and_counted(full: Pair) -> None:
    settings, summary = full
    expected: dict[str, int] = {}
    for kind in EXPECTED_KINDS.values():
        expected[kind] = expected.get(kind, 0) + 1
    assert summary["counts"] == dict(sorted(expected.items()))
    on_disk = json.loads(settings.workspace.update_summary.read_text())
    assert on_disk["counts"] == summary["counts"]
    assert on_disk["package_size"] == settings.workspace.pending_zip.stat().st_size


def test_package_layout_binary_version_and_no_bootable_images(full: Pair
                                                              ) -> None:
    settings, _ = full
    with zipfile.ZipFile(settings.workspace.pending_zip) as zf, \
            zipfile.ZipFile(settings.workspace.target_zip) as tgt, \
            zipfile.ZipFile(settings.base) as src:
        names = zf.namelist()
        assert not any(n.startswith("BOOTABLE_IMAGES/") for n in names)
        assert zf.read("META-INF/com/google/android/update-binary") == tgt.read(
            "OTA/bin/updater")
        assert zf.read("quectel-project-version") == src.read(
            "SYSTEM/etc/quectel-project-version")
        assert zf.read("multifota/abl.elf") == tgt.read("MULTIFOTA/abl.elf")
        # whole files are the target's bytes; no symlink and no directory is an entry
        for name in names:
            info = zf.getinfo(name)
            assert not name.endswith("/")
            assert (info.external_attr >> 16) & 0o170000 != 0o120000
            if name.startswith("system/") and not name.endswith(PLACEHOLDER):
                assert zf.read(name) == tgt.read("SYSTEM/" + name[len("system/"):])
        assert "system/etc/webui/test.cfg" not in names  # noota: left alone
        assert "system/usr/bin/ql_fullota_demo" in names  # fullota: whole though unchanged
    test = subprocess.run(["unzip", "-tq", settings.workspace.pending_zip], capture_output=True,
                          text=True)
    assert test.returncode == 0 and "No errors" in test.stdout


def test_every_patch_applied_by_debian_bspatch_gives_the_target(
        full: Pair, tmp_path: Path) -> None:
    settings, summary = full
    checked = 0
    with zipfile.ZipFile(settings.workspace.pending_zip) as zf, \
            zipfile.ZipFile(settings.workspace.target_zip) as tgt, \
            zipfile.ZipFile(settings.base) as src:
        for name in zf.namelist():
            if not name.startswith("patch/"):
                continue
            member = ("BOOTABLE_IMAGES/boot.img" if name == "patch/boot.img.p"
                      else "SYSTEM/" + name[len("patch/system/"):-len(".p")])
            old, new, patch = tmp_path / "old", tmp_path / "new", tmp_path / "p"
            old.write_bytes(src.read(member))
            patch.write_bytes(zf.read(name))
            subprocess.run(["bspatch", old, new, patch], check=True)
            assert new.read_bytes() == tgt.read(member), name
            checked += 1
    assert checked == summary["counts"]["patched"] + 1  # and the boot image


def test_script_parses_verifies_first_and_quotes_every_name(full: Pair) -> None:
    settings, _ = full
    script, found = script_calls(settings.workspace.pending_zip)
    assert b"\r" not in script and script.endswith(b"\n")
    names = [c.name for c in found]
    first_write = min(i for i, n in enumerate(names) if n in MUTATING)
    checks = [i for i, n in enumerate(names) if n == "apply_patch_check"]
    assert checks and max(checks) < first_write
    patched = {args(c)[0] for c in found if c.name == "apply_patch"}
    checked = {args(c)[0] for c in found if c.name == "apply_patch_check"}
    assert patched == checked
    for name in HOSTILE:  # each hostile name reaches the script exactly, as one argument
        assert f"/system/odd/{name}" in patched
    # no name added a call: every abort is one of the writer's own
    assert all(args(c)[0].startswith(("E505: ", "E510: ", "E511: ", "E502: "))
               for c in found if c.name == "abort")
    # modes are written octal with a leading 0
    for c in found:
        if c.name in ("set_perm", "set_perm_recursive"):
            modes = args(c)[2:4] if c.name == "set_perm_recursive" else args(c)[2:3]
            assert all(m.startswith("0") for m in modes), c


def test_symlinks_are_made_by_the_script_after_stale_ones_go(full: Pair) -> None:
    settings, _ = full
    _, found = script_calls(settings.workspace.pending_zip)
    made = {a for c in found if c.name == "symlink" for a in args(c)[1:]}
    assert made == {"/system/bin/retarget", "/system/bin/file_to_link"}
    order = [(c.name, args(c)) for c in found]
    extract = next(i for i, (n, _) in enumerate(order) if n == "package_extract_dir")
    stale = next(i for i, (n, a) in enumerate(order)
                 if n == "delete" and a == ["/system/bin/link_to_file"])
    assert stale < extract  # else extraction would write through the old link
    assert ("delete_recursive", ["/system/usr/share"]) in order  # outermost only
    assert ("delete_recursive", ["/system/bin/dir_to_file"]) in order


def test_empty_new_dirs_travel_as_placeholders_and_get_their_modes(
        full: Pair) -> None:
    settings, _ = full
    with zipfile.ZipFile(settings.workspace.pending_zip) as zf:
        holders = sorted(n for n in zf.namelist() if n.endswith(PLACEHOLDER))
    assert holders == [f"system/new_empty/{PLACEHOLDER}",
                       f"system/usr/lib/newdir/empty/{PLACEHOLDER}"]
    _, found = script_calls(settings.workspace.pending_zip)
    deleted = {args(c)[0] for c in found if c.name == "delete"}
    assert {"/system/new_empty/" + PLACEHOLDER,
            "/system/usr/lib/newdir/empty/" + PLACEHOLDER} <= deleted
    perms = {args(c)[-1]: args(c) for c in found if c.name.startswith("set_perm")}
    assert perms["/system/new_empty"][:3] == ["0", "0", "0711"]
    assert perms["/system/usr/lib/newdir/empty"][:3] == ["0", "0", "0700"]


def test_permissions_cover_new_patched_and_metadata_and_end_with_the_chmod_list(
        full: Pair) -> None:
    settings, _ = full
    _, found = script_calls(settings.workspace.pending_zip)
    perms = [args(c) for c in found if c.name in ("set_perm", "set_perm_recursive")]
    by_path = {a[-1]: a for a in perms}
    assert by_path["/system/etc/mode_only.sh"] == ["0", "0", "0755", "/system/etc/mode_only.sh"]
    assert by_path["/system/etc/owner_only"][:3] == ["1000", "1000", "0644"]
    assert by_path["/system/bin/busybox"][2] == "0755"  # patched: the source's mode otherwise
    assert by_path["/system/etc/new.conf"][2] == "0600"  # extracted: 0644 otherwise
    assert perms[-2:] == [["0", "0", "0700", "0600", "/system/etc/ql_secret"],
                          ["0", "0", "0700", "/system/usr/bin/ql_secret_tool"]]


def test_same_inputs_give_the_same_package(full: Pair, tmp_path: Path) -> None:
    settings, _ = full
    first = settings.workspace.pending_zip.read_bytes()
    again = dataclasses.replace(settings, workspace=dataclasses.replace(
        settings.workspace, out_dir=tmp_path / "out", state_dir=tmp_path / "state"))
    (tmp_path / "out").mkdir()
    (tmp_path / "out/targetfiles.zip").write_bytes(settings.workspace.target_zip.read_bytes())
    build_delta(again, quiet())
    assert again.workspace.pending_zip.read_bytes() == first


@pytest.mark.parametrize(("mode", "prefixes"), [
    ("rootfs", {"system/", "patch/system/"}),
    ("m", {"patch/system/firmware/"}),
    ("kernel", {"patch/boot.img.p"}),
    ("l,o", {"system/", "patch/system/", "patch/boot.img.p"}),
])
def test_each_mode_covers_only_its_part(tmp_path: Path, mode: str, prefixes: set[str]) -> None:
    settings = pair(tmp_path, mode=mode)
    build_delta(settings, quiet())
    with zipfile.ZipFile(settings.workspace.pending_zip) as zf:
        payload = [n for n in zf.namelist()
                   if not n.startswith("META-INF/") and n != "quectel-project-version"]
    assert payload
    for name in payload:
        assert any(name.startswith(p) for p in prefixes), name
        in_modem = name.startswith(("system/firmware/", "patch/system/firmware/"))
        assert in_modem == (mode == "m") or not name.startswith(("system/", "patch/system/"))


def test_unknown_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DfotaError, match="unknown --mode 'x'"):
        build_delta(pair(tmp_path, mode="x"), quiet())


def test_same_version_is_refused(tmp_path: Path) -> None:
    target = next_system()
    target["etc/quectel-project-version"] = base_system()["etc/quectel-project-version"]
    with pytest.raises(DfotaError, match="same version"):
        build_delta(pair(tmp_path, target=target), quiet())


def test_changed_noota_file_tells_to_move_it_to_fullota(tmp_path: Path) -> None:
    target = next_system()
    target["etc/webui/test.cfg"] = f("changed settings\n")
    with pytest.raises(DfotaError, match="move it from the noota list to the fullota list"):
        build_delta(pair(tmp_path, target=target), quiet())


def test_nothing_changed_writes_no_package(tmp_path: Path) -> None:
    source = base_system()
    target = dict(source)
    target["etc/quectel-project-version"] = next_system()["etc/quectel-project-version"]
    settings = pair(tmp_path, source=source, target=target, boot_changed=False,
                    abl_changed=False, lists={}, mode="kernel")
    settings.workspace.update_zip.write_bytes(b"stale package of another pair")
    said = io.StringIO()
    result = build_delta(settings, RunLog(None, "test", said))
    assert result.package is None and not settings.workspace.update_zip.exists()
    assert json.loads(settings.workspace.update_summary.read_text())["changed"] is False
    assert "nothing changed" in said.getvalue()


def test_size_budget_and_usrdata_needs_are_warned_with_figures(tmp_path: Path) -> None:
    target = next_system()
    target["usr/lib/huge.bin"] = f(binary(9, 1_500_000))
    result = build_delta(pair(tmp_path, target=target, size_budget=1_000_000), quiet())
    assert any("MB, over the 1 MB budget" in w for w in result.warnings)


def test_changed_minor_image_without_a_partition_is_refused(tmp_path: Path) -> None:
    settings = pair(tmp_path, lists={})
    with zipfile.ZipFile(settings.workspace.target_zip) as zf:
        items = {i.filename: (i, zf.read(i)) for i in zf.infolist()}
    with zipfile.ZipFile(settings.workspace.target_zip, "w") as out:
        for name, (info, data) in items.items():
            out.writestr(info, b"" if name == "RADIO/filesmap" else data)
    with pytest.raises(DfotaError, match="no partition is known for it"):
        build_delta(settings, quiet())


def test_summary_bytes_match_the_package(full: Pair) -> None:
    settings, summary = full
    with zipfile.ZipFile(settings.workspace.pending_zip) as zf:
        patches = sum(i.file_size for i in zf.infolist()
                      if i.filename.startswith("patch/system/"))
        whole = sum(i.file_size for i in zf.infolist() if i.filename.startswith("system/"))
        script = zf.getinfo(SCRIPT_ENTRY).file_size
    assert summary["bytes"] == {"patches": patches, "whole_files": whole, "script": script}
    digest = hashlib.sha256(settings.workspace.pending_zip.read_bytes()).hexdigest()
    assert len(digest) == 64


@pytest.mark.slow
def test_doit_targetfiles_then_delta_on_the_sample(ws: Workspace) -> None:
    chain = ["targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *ws.folders,
             "delta", *ws.folders]
    first = ws.run(*chain)
    assert first.returncode == 0, first.stdout + first.stderr
    package = ws.out / ".unverified/update.zip"  # published at out/update.zip by verify only
    assert not (ws.out / "update.zip").exists()
    summary = json.loads((ws.out / "update.json").read_text())
    assert summary["package_size"] == package.stat().st_size
    assert summary["source"].startswith("RG520NNADAR01A01M4G_OCPU_BETA_20220622B")
    assert "delta: " in first.stdout and summary["counts"]["patched"] > 0
    with zipfile.ZipFile(package) as zf:
        parse(zf.read(SCRIPT_ENTRY), DEVICE_FUNCTIONS)
    again = ws.run(*chain)
    assert "up to date: nothing changed" in again.stdout
    rootfs_only = ws.run(*chain, "--mode", "l")
    assert rootfs_only.returncode == 0 and ".  delta\n" in rootfs_only.stdout
    assert json.loads((ws.out / "update.json").read_text())["mode"] == ["rootfs"]
    bad = ws.run(*chain, "--mode", "q")
    assert bad.returncode != 0 and "error: unknown --mode 'q'" in bad.stderr


def test_a_listed_path_that_does_not_exist_is_a_warning_and_never_a_set_perm(
        tmp_path: Path) -> None:
    lists = {**LISTS, "quectel_chmod_filelist.txt": LISTS["quectel_chmod_filelist.txt"]
             + "/usr/bin/not_there 0700 0 0\n"}
    settings = pair(tmp_path, lists=lists)
    result = build_delta(settings, quiet())
    assert any("not_there" in w for w in result.warnings)
    _, found = script_calls(settings.workspace.pending_zip)
    assert not any("/system/usr/bin/not_there" in args(c) for c in found)


def test_a_base_not_built_here_is_hashed_once_for_every_later_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pair(tmp_path)
    hashed: list[str] = []
    stored, streamed = ZipSource._stored_sha1, ZipSource._streamed_sha1

    Sha1 = Callable[[ZipSource, str], str | None]

    def counting(real: Sha1) -> Sha1:
        def sha1(self: ZipSource, name: str) -> str | None:
            if self.path == Path(settings.base):
                hashed.append(name)
            return real(self, name)
        return sha1

    monkeypatch.setattr(ZipSource, "_stored_sha1", counting(stored))
    monkeypatch.setattr(ZipSource, "_streamed_sha1", counting(streamed))
    build_delta(settings, quiet())
    first = settings.workspace.pending_zip.read_bytes()
    (kept,) = (settings.workspace.state_dir / "records" / MEMBER_SHA1S).iterdir()
    records = settings.workspace.open_state().records
    assert kept == records.path(MEMBER_SHA1S,
                                hashlib.sha256(Path(settings.base).read_bytes()).hexdigest())
    assert len(hashed) > 10
    hashed.clear()
    build_delta(settings, quiet())
    assert hashed == [] and settings.workspace.pending_zip.read_bytes() == first
    kept.write_text("{damaged")  # hashed again, and kept again
    build_delta(settings, quiet())
    assert len(hashed) > 10 and settings.workspace.pending_zip.read_bytes() == first
    assert json.loads(kept.read_text())["value"]


def test_a_file_the_updater_cannot_patch_in_place_is_shipped_whole(tmp_path: Path) -> None:
    name = "usr/share/" + "n" * 250  # <name>.patch would be 256 bytes
    data = binary(9, 20_000)
    settings = pair(tmp_path, source={**base_system(), name: f(data)},
                    target={**next_system(), name: f(data[:-1] + b"!")})
    changes = build_delta(settings, quiet()).summary["changes"]
    assert isinstance(changes, list)
    change = next(c for c in changes if c["path"] == name)
    assert (change["kind"], change["reason"]) == ("whole", "name too long for the updater's "
                                                  ".patch file")


def test_a_path_the_updater_cannot_create_is_refused_with_one_line(tmp_path: Path) -> None:
    deep = "/".join(["d" * 250] * 16) + "/" + "x" * 80  # 4,096 bytes; /system/ makes 4,104
    settings = pair(tmp_path, target={**next_system(), deep: f("deep")})
    with pytest.raises(DfotaError) as caught:
        build_delta(settings, quiet())
    assert str(caught.value).startswith("SYSTEM/dddd")
    assert "path on the module is 4104 bytes (the limit is 4095)" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_folder_of_a_kept_noota_file_is_not_removed(tmp_path: Path) -> None:
    target = {p: n for p, n in next_system().items() if not p.startswith("etc/webui")}
    settings = pair(tmp_path, target=target)  # a cross-baseline target without etc/webui/
    build_delta(settings, quiet())
    script, found = script_calls(settings.workspace.pending_zip)
    assert b"/system/etc/webui" not in script
    assert any(c.name == "delete_recursive" for c in found)  # other folders still go


def test_a_noota_folder_turned_into_a_file_is_refused(tmp_path: Path) -> None:
    target = {p: n for p, n in next_system().items() if not p.startswith("etc/webui")}
    settings = pair(tmp_path, target={**target, "etc/webui": f("now a file")})
    with pytest.raises(DfotaError, match=r"^SYSTEM/etc/webui: the target makes it a file"):
        build_delta(settings, quiet())


def test_the_last_packages_streams_are_offered_only_while_it_is_the_one_noted(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = pair(tmp_path)
    ws = settings.workspace

    def offered() -> Path | None:
        with ws.open_state() as state, earlier_streams(ws, state) as streams:
            return streams.zip.path if streams is not None else None

    assert offered() is None  # no package yet
    build_delta(settings, quiet())
    assert offered() == ws.pending_zip
    ws.pending_zip.replace(ws.update_zip)  # as `doit verify` publishes it
    assert offered() == ws.update_zip
    with monkeypatch.context() as m:
        m.setattr(writer, "DEFLATER", "another zlib")
        assert offered() is None
    with ws.update_zip.open("ab") as package:  # other bytes than the ones noted
        package.write(b"\0")
    assert offered() is None


def test_a_package_after_a_change_is_the_package_made_afresh(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    changed = next_system()
    changed["usr/lib/newdir/libnew.so"] = f(binary(9, 7000), 0o755)
    changed["bin/busybox"] = f(edited(changed["bin/busybox"].data, 7), 0o755)
    build_delta(pair(tmp_path / "a"), quiet())  # the package before the change
    taken: list[str] = []

    class Spied(EarlierStreams):
        def __init__(self, earlier: ZipSource) -> None:
            super().__init__(earlier)
            self.taken = taken

    monkeypatch.setattr(writer, "EarlierStreams", Spied)
    again = pair(tmp_path / "a", target=changed)
    build_delta(again, quiet())
    assert "system/usr/lib/newdir/libnew.so" not in taken
    assert "patch/system/bin/busybox.p" not in taken
    assert "multifota/abl.elf" in taken
    fresh = pair(tmp_path / "b", target=changed)
    build_delta(fresh, quiet())
    assert again.workspace.pending_zip.read_bytes() == fresh.workspace.pending_zip.read_bytes()
