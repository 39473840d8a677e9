"""The catalogue of hostile inputs: one test per case.

Each test says in its docstring what is fed in and the exact outcome. Unless a case is accepted,
the outcome is one line `error: <file>: <problem>` on stderr, doit's exit code 1 (a task
failed, never 2: an internal error), no traceback, and `out/` and `archive/` exactly as the
earlier good run left them. Every case starts from that earlier result: a workspace where
`doit targetfiles delta verify` completed on the sample (the base and the next version are
archived, `out/` holds targetfiles.zip, update.zip and the reports). An accepted case that makes
a new version bumps the rootfs's Package Time, and the versions archived before stay as they
were. The UBI cases run `doit import_base` on a damaged copy of the sample firmware.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import resource
import shutil
import socket
import stat
import struct
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dfota.build.manifest import scan_rootfs
from dfota.build.sdk_image import image_volumes
from dfota.build.targetfiles import KEPT_FROM_SOURCE, locate_sdk, plan_target
from dfota.core.errors import DfotaError
from dfota.core.tree import check_outside_links, scan_folder
from dfota.device.updater import load_package
from dfota.formats.bootimg import build_boot_image
from dfota.formats.elf import build_abl_elf
from dfota.formats.ubi import list_volumes
from dfota.formats.zipio import ZipSource, path_item, write_zip
from dfota.formats.ziplimits import ZipLimits
from tests.test_volumes import replace_sdk_image, small_ubifs, ubinize
from tests.workspace import Run, Workspace, snapshot

BASE_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001@20220622T1550"
NEXT_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220715A_01.002@20220715T0930"
BUMPED_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220715A_01.002@20220801T0800"
VERSION_FILE = "etc/quectel-project-version"
SECRET = b"HOST-SECRET-7f3a9c: this must never reach a zip"


# --- the earlier good result, and how each case is run --------------------------------------

def _chain(ws: Workspace, config: Path, *tasks: str) -> list[str]:
    """Arguments for `doit targetfiles [delta [verify]]` kept inside the workspace."""
    argv = ["targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *ws.folders]
    if "delta" in tasks:
        argv += ["delta", *ws.folders, "--config", str(config)]
    if "verify" in tasks:
        argv += ["verify", *ws.folders]
    return argv


@pytest.fixture(scope="module")
def earlier(sample_sdk: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace after a complete `doit targetfiles delta verify`: the good earlier result."""
    root = tmp_path_factory.mktemp("catalogue") / "ws"
    root.mkdir()
    shutil.copytree(sample_sdk / "ql-ol-extsdk", root / "sdk", symlinks=True)
    shutil.copyfile(sample_sdk / "firmware/upgrade/targetfiles.zip", root / "source.zip")
    shutil.copytree(Path(__file__).resolve().parent.parent / "sample_sdk/config",
                    root / "config")
    ws = Workspace(root, root / "sdk", root / "source.zip")
    run = ws.run(*_chain(ws, root / "config", "delta", "verify"))
    assert run.returncode == 0, run.stdout + run.stderr
    return root


@pytest.fixture
def ws(earlier: Path, tmp_path: Path) -> Workspace:
    root = tmp_path / "ws"
    shutil.copytree(earlier, root, symlinks=True)
    return Workspace(root, root / "sdk", root / "source.zip")


def config_of(ws: Workspace) -> Path:
    return ws.root / "config"


def chain(ws: Workspace, *tasks: str, without_dac_override: bool = False) -> Run:
    return ws.run(*_chain(ws, config_of(ws), *tasks), without_dac_override=without_dac_override)


def refused(run: Run) -> str:
    """The one error line of a failed run (without `error: `), checked to be the only one."""
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert run.returncode == 1, run.stdout + run.stderr
    assert len(errors) == 1, run.stderr
    assert "Traceback" not in run.stdout + run.stderr
    return errors[0][len("error: "):]


def warnings_of(run: Run) -> list[str]:
    return [line[len("warning: "):] for line in (run.stdout + run.stderr).splitlines()
            if line.startswith("warning: ")]


@contextlib.contextmanager
def unchanged(ws: Workspace) -> Iterator[None]:
    """`out/` and `archive/` hold exactly what they held before (no new file, no leftover)."""
    before = snapshot(ws.out, ws.archive)
    yield
    assert snapshot(ws.out, ws.archive) == before


def bump(ws: Workspace, when: str = "2022-08-01,08:00") -> None:
    """A new version of the rootfs (the user's daily loop): another Package Time."""
    path = ws.rootfs / VERSION_FILE
    path.write_text(path.read_text().replace("2022-07-15,09:30", when))


def archived(ws: Workspace) -> list[str]:
    index = json.loads((ws.archive / "index.json").read_text())
    keys = [v["key"] for v in index["versions"]]
    folders = sorted(p.name for p in ws.archive.iterdir() if p.is_dir())
    assert sorted(keys) == folders  # the index agrees with the folders
    return keys


def earlier_versions_intact(ws: Workspace, before: dict[str, str]) -> None:
    """The versions archived before are byte for byte what they were."""
    now = snapshot(ws.archive)
    for path, digest in before.items():
        if not path.endswith("index.json"):
            assert now.get(path) == digest, path


def zip_members(path: Path) -> dict[str, tuple[int, bytes]]:
    """name -> (unix mode with type bits, data) of every entry."""
    with zipfile.ZipFile(path) as zf:
        return {i.filename: (i.external_attr >> 16, zf.read(i)) for i in zf.infolist()}


def assert_no_secret(*zips: Path) -> None:
    for path in zips:
        if path.exists():
            assert SECRET not in path.read_bytes(), path
            for name, (_, data) in zip_members(path).items():
                assert SECRET not in data, name


def host_secret(ws: Workspace) -> Path:
    """A host file outside the rootfs that a followed link would leak."""
    secret = ws.root / "host" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    return secret


def rewrite_zip(path: Path, *, drop: tuple[str, ...] = (),
                add: tuple[tuple[zipfile.ZipInfo, bytes], ...] = ()) -> None:
    """Rewrite a zip without the entries under `drop`, with `add` appended (duplicates kept)."""
    with zipfile.ZipFile(path) as zf:
        kept = [(info, zf.read(info)) for info in zf.infolist()
                if not info.filename.startswith(drop)]
    tmp = path.with_suffix(".new")
    with zipfile.ZipFile(tmp, "w") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Duplicate name": wanted here
        for info, data in [*kept, *add]:
            out.writestr(info, data)
    os.replace(tmp, path)


def central_records(data: bytes) -> dict[str, int]:
    """name -> offset of its central directory record, read from the end record."""
    end = data.rindex(b"PK\x05\x06")
    count, size, offset = struct.unpack("<HII", data[end + 10: end + 20])
    records, at = {}, offset
    for _ in range(count):
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[at + 28: at + 34])
        records[data[at + 46: at + 46 + name_len].decode()] = at
        at += 46 + name_len + extra_len + comment_len
    assert at == offset + size
    return records


def link_info(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name, (2022, 6, 22, 15, 50, 0))
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def file_info(name: str, data: bytes) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name, (2022, 6, 22, 15, 50, 0))
    info.create_system = 3
    info.external_attr = (stat.S_IFREG | 0o644) << 16
    return info, data


# --- rootfs ----------------------------------------------------------------------------------

NAMES = ["with space", 'quo"te', "single'quote", "back\\slash", "new\nline", "-leading-dash",
         "--rf", "tab\there", '"); abort("injected', "$(reboot)", "#hash", "ünï cödé"]


@pytest.mark.slow
def test_rootfs_names_with_spaces_quotes_backslashes_newlines_and_dashes(ws: Workspace) -> None:
    """Fed: rootfs files named with a space, quotes, a backslash, a newline, leading dashes,
    a tab, edify and shell syntax and non-ASCII letters (valid UTF-8), and a folder and a
    symlink named likewise; the version bumped.
    Outcome: accepted (exit 0) through targetfiles, delta and verify. Every name is carried
    exactly into targetfiles.zip and its JSON manifest; names holding whitespace are left out of
    filesystem_config.txt only; the package carries each new file under its exact name and its
    script parses with the device's grammar, with each name as one string."""
    before = snapshot(ws.archive)
    odd = ws.rootfs / "usr/share/odd names"
    odd.mkdir()
    for i, name in enumerate(NAMES):
        (odd / name).write_text(f"file {i}\n")
    (odd / "sub dir\n-x").mkdir()
    (odd / "sub dir\n-x" / 'in"side').write_text("inside\n")
    (odd / "link 'x'").symlink_to('quo"te')
    bump(ws)
    run = chain(ws, "delta", "verify")
    assert run.returncode == 0, run.stdout + run.stderr
    members = zip_members(ws.out / "targetfiles.zip")
    for i, name in enumerate(NAMES):
        assert members[f"SYSTEM/usr/share/odd names/{name}"][1] == f"file {i}\n".encode()
    assert members["SYSTEM/usr/share/odd names/sub dir\n-x/"][0] & 0o170000 == stat.S_IFDIR
    mode, text = members["SYSTEM/usr/share/odd names/link 'x'"]
    assert stat.S_ISLNK(mode) and text == b'quo"te'
    with ZipSource(ws.out / "targetfiles.zip") as tgt:
        manifest = {e["path"] for e in json.loads(tgt.read("META/system_manifest.json"))
                    ["entries"]}
        fs_config = tgt.read("META/filesystem_config.txt").decode()
    for name in NAMES:
        assert f"usr/share/odd names/{name}" in manifest
    assert "odd names" not in fs_config  # whitespace cannot be written in Android's format
    package = zip_members(ws.out / "update.zip")
    for i, name in enumerate(NAMES):
        assert package[f"system/usr/share/odd names/{name}"][1] == f"file {i}\n".encode()
    summary = json.loads((ws.out / "update.json").read_text())
    assert summary["verify"]["ok"] is True
    assert archived(ws) == [BASE_KEY, NEXT_KEY, BUMPED_KEY]
    earlier_versions_intact(ws, before)


@pytest.mark.slow
def test_rootfs_name_that_is_not_utf8_is_refused(ws: Workspace) -> None:
    """Fed: a rootfs file whose name holds the byte 0xff (not UTF-8).
    Outcome: exit 1, `error: <rootfs>/etc/bad\\xffname: file name is not valid UTF-8; rename
    it` (the byte shown escaped); out/ and archive/ unchanged."""
    os.close(os.open(os.fsencode(ws.rootfs / "etc") + b"/bad\xffname", os.O_CREAT | os.O_WRONLY))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.rootfs}/etc/bad\\xffname: file name is not valid UTF-8; rename it"


@pytest.mark.slow
def test_rootfs_symlink_target_that_is_not_utf8_is_refused(ws: Workspace) -> None:
    """Fed: a rootfs symlink whose target text holds the byte 0xfe.
    Outcome: exit 1, `error: <rootfs>/etc/badlink: file name is not valid UTF-8; rename it`;
    out/ and archive/ unchanged."""
    os.symlink(b"target\xfe", os.fsencode(ws.rootfs / "etc/badlink"))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.rootfs}/etc/badlink: file name is not valid UTF-8; rename it"


@pytest.mark.slow
def test_absolute_symlink_to_a_host_file_is_stored_as_a_link(ws: Workspace) -> None:
    """Fed: a rootfs symlink `etc/leak` whose target is the absolute path of a host file
    outside the rootfs (and one to /etc/shadow); the version bumped.
    Outcome: accepted (exit 0); each is a symlink entry whose data is the link text; the host
    file's bytes appear nowhere in targetfiles.zip, the archive or update.zip."""
    before = snapshot(ws.archive)
    secret = host_secret(ws)
    (ws.rootfs / "etc/leak").symlink_to(secret)
    (ws.rootfs / "etc/leak-shadow").symlink_to("/etc/shadow")
    bump(ws)
    run = chain(ws, "delta")
    assert run.returncode == 0, run.stdout + run.stderr
    members = zip_members(ws.out / "targetfiles.zip")
    mode, text = members["SYSTEM/etc/leak"]
    assert stat.S_ISLNK(mode) and text == str(secret).encode()
    mode, text = members["SYSTEM/etc/leak-shadow"]
    assert stat.S_ISLNK(mode) and text == b"/etc/shadow"
    assert_no_secret(ws.out / "targetfiles.zip", ws.out / "update.zip",
                     ws.archive / BUMPED_KEY / "targetfiles.zip")
    assert archived(ws) == [BASE_KEY, NEXT_KEY, BUMPED_KEY]
    earlier_versions_intact(ws, before)


@pytest.mark.slow
def test_relative_symlink_escaping_the_rootfs_is_stored_as_a_link(ws: Workspace) -> None:
    """Fed: a rootfs symlink `usr/escape` -> `../../../host/secret.txt`, which resolves to a
    host file outside the rootfs; the version bumped.
    Outcome: accepted (exit 0); a symlink entry holding exactly that text; the host file's
    bytes are in no zip."""
    host_secret(ws)
    (ws.rootfs / "usr/escape").symlink_to("../../../host/secret.txt")
    assert (ws.rootfs / "usr/escape").read_bytes() == SECRET  # it really points there
    bump(ws)
    run = chain(ws, "delta")
    assert run.returncode == 0, run.stdout + run.stderr
    mode, text = zip_members(ws.out / "targetfiles.zip")["SYSTEM/usr/escape"]
    assert stat.S_ISLNK(mode) and text == b"../../../host/secret.txt"
    assert_no_secret(ws.out / "targetfiles.zip", ws.out / "update.zip")


@pytest.mark.slow
def test_symlink_to_a_host_folder_is_not_walked(ws: Workspace) -> None:
    """Fed: a rootfs symlink `opt` -> a host folder holding a secret file; the version bumped.
    Outcome: accepted (exit 0); `SYSTEM/opt` is one symlink entry and no entry lies below it;
    the secret is in no zip."""
    secret = host_secret(ws)
    (ws.rootfs / "opt").symlink_to(secret.parent)
    bump(ws)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    members = zip_members(ws.out / "targetfiles.zip")
    assert stat.S_ISLNK(members["SYSTEM/opt"][0])
    assert not [n for n in members if n.startswith("SYSTEM/opt/")]
    assert_no_secret(ws.out / "targetfiles.zip")


@pytest.mark.slow
def test_symlink_loop_is_stored_as_links(ws: Workspace) -> None:
    """Fed: rootfs symlinks `loop/a` -> `b`, `loop/b` -> `a` and `loop/self` -> `self`; the
    version bumped.
    Outcome: accepted (exit 0), nothing hangs; three symlink entries with those texts, and
    delta and verify carry them as links."""
    loop = ws.rootfs / "loop"
    loop.mkdir()
    (loop / "a").symlink_to("b")
    (loop / "b").symlink_to("a")
    (loop / "self").symlink_to("self")
    bump(ws)
    run = chain(ws, "delta", "verify")
    assert run.returncode == 0, run.stdout + run.stderr
    members = zip_members(ws.out / "targetfiles.zip")
    for name, target in (("a", b"b"), ("b", b"a"), ("self", b"self")):
        mode, text = members[f"SYSTEM/loop/{name}"]
        assert stat.S_ISLNK(mode) and text == target


@pytest.mark.slow
def test_hard_links_are_stored_as_two_files(ws: Workspace) -> None:
    """Fed: `usr/bin/hard` hard-linked to `usr/bin/hard2` (a zip has no hard links); the
    version bumped.
    Outcome: accepted (exit 0), no warning about the link; two regular file entries with the same
    bytes and mode (what `zip -qry0` does)."""
    first = ws.rootfs / "usr/bin/hard"
    first.write_bytes(b"\x7fELF hard linked\n")
    first.chmod(0o755)
    os.link(first, ws.rootfs / "usr/bin/hard2")
    bump(ws)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    # (the SDK's sysfs image does not hold the new files: that drift is reported elsewhere)
    assert not [w for w in warnings_of(run) if "usr/bin/hard" in w
                and not w.startswith(str(ws.sdk / "target/sdxlemur-sysfs.ubi"))]
    members = zip_members(ws.out / "targetfiles.zip")
    assert members["SYSTEM/usr/bin/hard"] == members["SYSTEM/usr/bin/hard2"] == (
        stat.S_IFREG | 0o755, b"\x7fELF hard linked\n")


@pytest.mark.slow
def test_hard_link_to_a_file_outside_the_rootfs_is_refused(ws: Workspace) -> None:
    """Fed: `etc/x` hard-linked to a host file outside the rootfs (`ln /etc/shadow
    rootfs/etc/x`); the version bumped.
    Outcome: exit 1, `error: <rootfs>/etc/x: regular file with 2 hard links, only 1 of them in
    the rootfs (another name is outside it: a host file?); unlink it or copy it in`; the
    secret is in no zip; out/ and archive/ unchanged."""
    secret = host_secret(ws)
    os.link(secret, ws.rootfs / "etc/x")
    bump(ws)
    with unchanged(ws):
        line = refused(chain(ws, "delta", "verify"))
    assert line == (f"{ws.rootfs / 'etc/x'}: regular file with 2 hard links, only 1 of them in "
                    "the rootfs (another name is outside it: a host file?); unlink it or copy "
                    "it in")
    assert_no_secret(ws.out / "targetfiles.zip", ws.out / "update.zip")


@pytest.mark.slow
def test_hard_link_from_outside_is_packed_with_a_warning_when_allowed(ws: Workspace) -> None:
    """Fed: the same link, the build's check asked to allow it (`allow_outside_links`).
    Outcome: one warning naming the file and its link count (`...; packed as allowed`); a
    link whose names are all in the rootfs gives none."""
    secret = host_secret(ws)
    os.link(secret, ws.rootfs / "etc/x")
    os.link(ws.rootfs / VERSION_FILE, ws.rootfs / "etc/version-again")
    scan = scan_rootfs(ws.rootfs)
    assert check_outside_links(scan, ws.rootfs, allow=True) == [
        f"{ws.rootfs / 'etc/x'}: regular file with 2 hard links, only 1 of them in the rootfs "
        "(another name is outside it: a host file?); packed as allowed"]
    with pytest.raises(DfotaError):
        check_outside_links(scan, ws.rootfs)


@pytest.mark.slow
def test_owners_unknown_to_the_rootfs_passwd_and_group_warn(ws: Workspace) -> None:
    """Fed: rootfs files owned by uid 4242 and group 4343, which the rootfs's etc/passwd and
    etc/group do not list (the build user, owner of the rootfs folder, counts as root); the
    version bumped.
    Outcome: accepted (exit 0) with `warning: <rootfs>: uid 4242 is not in etc/passwd:
    usr/bin/a, usr/bin/b` and the same for gid 4343 and etc/group; known owners give none."""
    for name in ("a", "b"):
        path = ws.rootfs / "usr/bin" / name
        path.write_bytes(b"owned\n")
        os.chown(path, 4242, 4343)
    os.chown(ws.rootfs / "etc", 0, 1001)  # radio: in the sample's etc/group
    bump(ws)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    owners = [w for w in warnings_of(run) if " is not in etc/" in w]
    assert owners == [f"{ws.rootfs}: uid 4242 is not in etc/passwd: usr/bin/a, usr/bin/b",
                      f"{ws.rootfs}: gid 4343 is not in etc/group: usr/bin/a, usr/bin/b"]


@pytest.mark.slow
def test_rootfs_without_passwd_and_group_warns_that_owners_are_unchecked(ws: Workspace
                                                                          ) -> None:
    """Fed: a rootfs without etc/passwd and etc/group; the version bumped.
    Outcome: accepted (exit 0) with one warning, `<rootfs>: has no etc/passwd nor etc/group;
    owners and groups are not checked`."""
    (ws.rootfs / "etc/passwd").unlink()
    (ws.rootfs / "etc/group").unlink()
    bump(ws)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    assert [w for w in warnings_of(run) if "owners and groups" in w] == [
        f"{ws.rootfs}: has no etc/passwd nor etc/group; owners and groups are not checked"]


@pytest.mark.slow
def test_sample_builds_without_owner_warnings(ws: Workspace) -> None:
    """Fed: the sample's next version, bumped (the default chain's input).
    Outcome: accepted (exit 0) with no warning about owners: the sample's rootfs lists every
    owner and group it uses."""
    bump(ws)
    run = chain(ws, "delta", "verify")
    assert run.returncode == 0, run.stdout + run.stderr
    assert not [w for w in warnings_of(run) if "etc/passwd" in w or "etc/group" in w]


_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]")


@pytest.mark.slow
def test_names_with_newlines_and_escape_sequences_are_escaped_in_every_warning(
        ws: Workspace) -> None:
    """Fed: an empty folder named `x\\nerror: forged line`, a FIFO named with a colour escape
    sequence, a new file with a title-setting sequence owned by an unknown uid, a file named
    with a C1 CSI, all new in the rootfs (so the SDK image's drift names them too), and a
    fullota line naming a missing path with a clear-screen sequence; the version bumped.
    Outcome: accepted (exit 0) through targetfiles, delta and verify; every warning (empty
    folder, special file, unknown owner, image drift, placeholder, config list) names them
    escaped (`\\x0a`, `\\x1b`, `\\xc2\\x9b`), no line starts with the forged `error:`, and no
    control byte but each line's own newline reaches stdout, stderr or the run's logs."""
    odd = ws.rootfs / "usr/share/odd"
    odd.mkdir()
    (odd / "x\nerror: forged line").mkdir()
    os.mkfifo(odd / "\x1b[31mred fifo\x1b[0m")
    owned = odd / "\x1b]0;pwned\x07title"
    owned.write_bytes(b"owned\n")
    os.chown(owned, 4242, 0)
    (odd / "c1\x9b2Jcsi").write_bytes(b"c1\n")
    with (config_of(ws) / "quectel_fullota_filelist.txt").open("a") as lists:
        lists.write("/usr/\x1b[2Jgone\n")
    bump(ws)
    run = chain(ws, "delta", "verify")
    assert run.returncode == 0, run.stdout + run.stderr
    logs = [p.read_text() for p in (ws.root / "state/logs").iterdir()]
    for text in (run.stdout, run.stderr, *logs):
        assert not _CONTROL.search(text), _CONTROL.search(text)
        assert not [line for line in text.splitlines() if line.startswith("error: forged")]
    said = "\n".join(warnings_of(run))
    for expected in (f"{odd}/x\\x0aerror: forged line: empty directory",
                     f"{odd}/\\x1b[31mred fifo\\x1b[0m: FIFO cannot be packed",
                     "usr/share/odd/\\x1b]0;pwned\\x07title",
                     "uid 4242 is not in etc/passwd: usr/share/odd/\\x1b]0;pwned\\x07title",
                     "usr/share/odd/c1\\xc2\\x9b2Jcsi: in ql-ol-rootfs only",
                     "/system/usr/share/odd/x\\x0aerror: forged line: empty directory, carried",
                     "SYSTEM/usr/\\x1b[2Jgone is not in the target"):
        assert expected in said, expected


@contextlib.contextmanager
def _cwd(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _special_files(ws: Workspace) -> list[tuple[Path, str]]:
    """A character device, a block device, a FIFO and a socket in the rootfs."""
    run = ws.rootfs / "run"
    run.mkdir()
    os.mknod(run / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.mknod(run / "loop0", stat.S_IFBLK | 0o660, os.makedev(7, 0))
    os.mkfifo(run / "fifo")
    with _cwd(run):  # a relative name: socket paths are limited to 108 bytes
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("sock")
        sock.close()
    return [(run / "loop0", "block device"), (run / "null", "character device"),
            (run / "fifo", "FIFO"), (run / "sock", "socket")]


@pytest.mark.slow
def test_device_nodes_fifos_and_sockets_are_left_out_with_a_warning(ws: Workspace) -> None:
    """Fed: a character device, a block device, a FIFO and a socket under `run/`; the version
    bumped.
    Outcome: accepted (exit 0) with one line each, `warning: <path>: <kind> cannot be packed;
    left out`; none of them is in the zip or its manifest; `run/` itself is kept."""
    before = snapshot(ws.archive)
    specials = _special_files(ws)
    bump(ws)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    for path, kind in specials:
        assert f"{path}: {kind} cannot be packed; left out" in warnings_of(run)
    members = zip_members(ws.out / "targetfiles.zip")
    assert "SYSTEM/run/" in members
    assert not [n for n in members if n.startswith("SYSTEM/run/") and n != "SYSTEM/run/"]
    assert archived(ws) == [BASE_KEY, NEXT_KEY, BUMPED_KEY]
    earlier_versions_intact(ws, before)


@pytest.mark.slow
def test_special_files_fail_a_strict_build(ws: Workspace) -> None:
    """Fed: the same special files, with `--strict`.
    Outcome: exit 1, the warnings, then `error: <sdk>: N warning(s) and --strict is set`;
    out/ and archive/ unchanged."""
    _special_files(ws)
    bump(ws)
    with unchanged(ws):
        run = ws.doit("--strict")
        line = refused(run)
    count = len(warnings_of(run))
    assert count >= 4
    assert line == f"{ws.sdk}: {count} warning(s) and --strict is set"


@pytest.mark.slow
def test_unreadable_rootfs_file_is_named(ws: Workspace) -> None:
    """Fed: a rootfs file with mode 000, the tool run as a user who cannot read it (root
    without CAP_DAC_OVERRIDE).
    Outcome: exit 1, `error: <file>: cannot read file (Permission denied)`; out/ and archive/
    unchanged; the file's mode untouched."""
    secret = ws.rootfs / "etc/ql_manager.conf"
    secret.chmod(0)
    with unchanged(ws):
        line = refused(ws.doit(without_dac_override=True))
    assert line == f"{secret}: cannot read file (Permission denied)"
    assert stat.S_IMODE(secret.lstat().st_mode) == 0


@pytest.mark.slow
def test_unreadable_rootfs_folder_is_named(ws: Workspace) -> None:
    """Fed: a rootfs folder with mode 000, read as a user without CAP_DAC_OVERRIDE.
    Outcome: exit 1, `error: <folder>: cannot list folder (Permission denied)`; out/ and
    archive/ unchanged."""
    folder = ws.rootfs / "etc/init.d"
    folder.chmod(0)
    with unchanged(ws):
        line = refused(ws.doit(without_dac_override=True))
    folder.chmod(0o755)
    assert line == f"{folder}: cannot list folder (Permission denied)"


@pytest.mark.slow
def test_file_larger_than_4_gib_is_written_as_zip64(tmp_path: Path) -> None:
    """Fed: a sparse regular file of 4 GiB + 4 KiB (zeros, a marker at the end), written by the
    zip writer that `doit targetfiles` uses (`path_item` streamed by `write_zip`).
    Outcome: a zip whose entry declares the full size with ZIP64 fields (Info-ZIP lists it
    with its true length), whose stored bytes end with the marker at the right offset, and
    that the project's zip reader accepts when its entry limit allows; with the chain's
    default limit (the module's zip reader takes no ZIP64) it refuses the entry with one line.
    The end-to-end doit run is not repeated at this size: it would copy 4 GiB twice (the
    archive, then its check) for no other code path."""
    size = 4 * 1024**3 + 4096
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        f.truncate(size)
        f.seek(size - 8)
        f.write(b"THE-END!")
    dest = tmp_path / "big.zip"
    try:
        write_zip(dest, [path_item("SYSTEM/usr/big.bin", big, 0o644)])
        listing = subprocess.run(["unzip", "-Zv", dest], capture_output=True, text=True,
                                 check=True).stdout
        assert re.search(rf"\buncompressed size: +{size} bytes", listing)
        assert "PKWARE 64-bit sizes" in listing  # the ZIP64 extra field
        assert "Unix file attributes (100644 octal)" in listing
        with pytest.raises(DfotaError, match=rf"entry 'SYSTEM/usr/big.bin' declares {size} "
                           r"bytes, over the limit of 4095 MiB \(max_entry_mb\)"):
            ZipSource(dest)
        with ZipSource(dest, ZipLimits(max_entry_mb=5 * 1024)) as zs:
            info = zs.members["SYSTEM/usr/big.bin"].info
            assert zs.members["SYSTEM/usr/big.bin"].size == size
            assert info.file_size == size and info.compress_size == size
            with open(dest, "rb") as raw:
                raw.seek(info.header_offset)
                header = raw.read(30)
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                assert struct.unpack("<I", header[22:26])[0] == 0xFFFFFFFF  # ZIP64 marker
                data_start = info.header_offset + 30 + name_len + extra_len
                raw.seek(data_start + size - 8)
                assert raw.read(8) == b"THE-END!"
    finally:
        dest.unlink(missing_ok=True)


@pytest.mark.slow
def test_twenty_thousand_tiny_files(ws: Workspace) -> None:
    """Fed: 20,000 files of a few bytes each in 20 folders; the version bumped.
    Outcome: accepted (exit 0); every file is an entry with its bytes; Info-ZIP tests the zip
    without error; the count in the summary line matches the zip."""
    before = snapshot(ws.archive)
    many = ws.rootfs / "usr/share/many"
    for folder in range(20):
        sub = many / f"d{folder:02d}"
        sub.mkdir(parents=True)
        for i in range(1000):
            (sub / f"f{i:04d}").write_bytes(b"%d\n" % (folder * 1000 + i))
    bump(ws)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    with ZipSource(ws.out / "targetfiles.zip") as zs:
        files = [n for n in zs.names("SYSTEM/usr/share/many/") if zs.members[n].kind == "file"]
        assert len(files) == 20_000
        assert zs.read("SYSTEM/usr/share/many/d07/f0123") == b"7123\n"
        assert f"({len(zs.members)} entries)" in run.stdout
    test = subprocess.run(["unzip", "-tq", ws.out / "targetfiles.zip"], capture_output=True,
                          text=True)
    assert test.returncode == 0 and "No errors" in test.stdout
    assert archived(ws) == [BASE_KEY, NEXT_KEY, BUMPED_KEY]
    earlier_versions_intact(ws, before)


@pytest.mark.slow
def test_empty_rootfs_is_refused(ws: Workspace) -> None:
    """Fed: an empty `ql-ol-rootfs/` folder.
    Outcome: exit 1, `error: <rootfs>/etc/quectel-project-version: version file missing from
    the rootfs`; out/ and archive/ unchanged."""
    shutil.rmtree(ws.rootfs)
    ws.rootfs.mkdir()
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.rootfs / VERSION_FILE}: version file missing from the rootfs"


@pytest.mark.slow
def test_rootfs_that_is_itself_a_symlink_is_followed_once(ws: Workspace) -> None:
    """Fed: `ql-ol-rootfs` is a symlink to the real rootfs folder elsewhere (nothing else
    changed).
    Outcome: accepted (exit 0); the folder link is followed (nothing below it is); the zip is
    byte-identical to the one built from the real folder, which the archive already holds
    (`already archived, same content`)."""
    before = (ws.out / "targetfiles.zip").read_bytes()
    real = ws.root / "elsewhere" / "rootfs"
    real.parent.mkdir()
    shutil.move(ws.rootfs, real)
    ws.rootfs.symlink_to(real)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    assert "already archived, same content" in run.stdout
    assert (ws.out / "targetfiles.zip").read_bytes() == before


@pytest.mark.slow
def test_dangling_rootfs_symlink_is_refused(ws: Workspace) -> None:
    """Fed: `ql-ol-rootfs` is a symlink to a folder that does not exist.
    Outcome: exit 1, `error: <rootfs>: rootfs folder missing from the SDK`; out/ and archive/
    unchanged."""
    shutil.rmtree(ws.rootfs)
    ws.rootfs.symlink_to(ws.root / "gone")
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.rootfs}: rootfs folder missing from the SDK"


@pytest.mark.slow
def test_version_file_that_is_a_symlink_is_refused(ws: Workspace) -> None:
    """Fed: the rootfs's `etc/quectel-project-version` is a symlink to a host file holding a
    valid version text.
    Outcome: exit 1, `error: <file>: version file is a symlink, not a regular file`: the tool
    never reads a version through a link; out/ and archive/ unchanged."""
    host = ws.root / "host-version"
    version = ws.rootfs / VERSION_FILE
    host.write_text(version.read_text().replace("2022-07-15,09:30", "2022-09-09,09:09"))
    version.unlink()
    version.symlink_to(host)
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{version}: version file is a symlink, not a regular file"


@pytest.mark.slow
def test_rootfs_file_swapped_for_a_link_after_the_check_is_refused(ws: Workspace,
                                                                   tmp_path: Path) -> None:
    """Fed: the rootfs is scanned and the target planned; then, before the zip is written, a
    checked file is replaced by a symlink to a host file (a race with another process).
    Outcome: writing refuses with `<file>: changed while the zip was being written; run
    again` and leaves no zip: the content written must be the content checked, so no host file
    can be injected."""
    secret = host_secret(ws)
    sdk = locate_sdk(ws.sdk)
    scan = scan_rootfs(sdk.rootfs)
    with ZipSource(ws.source) as src:
        plan = plan_target(sdk, src, scan)
        victim = ws.rootfs / "etc/ql_manager.conf"
        victim.unlink()
        victim.symlink_to(secret)
        dest = tmp_path / "targetfiles.zip"
        with pytest.raises(DfotaError) as caught:
            write_zip(dest, plan.items)
    assert str(caught.value) == f"{victim}: changed while the zip was being written; run again"
    assert not dest.exists() and not list(tmp_path.glob(".targetfiles.zip.*"))


def _scan_changing(ws: Workspace, at: str, change: Callable[[], None]) -> str:
    """The rootfs scanned as the build scans it, `change` made to the tree as soon as the walk
    has seen `at` (deterministic: the walk's own hook, not a race); the error it gives."""
    def seen(rel: str) -> None:
        if rel == at:
            change()

    with pytest.raises(DfotaError) as caught:
        scan_folder(ws.rootfs, skip_top=KEPT_FROM_SOURCE, seen=seen)
    return str(caught.value)


def _regular_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.is_symlink())


@pytest.mark.slow
def test_rootfs_file_deleted_while_it_is_scanned(ws: Workspace) -> None:
    """Fed: a rootfs file deleted right after the walk saw it, before it is hashed.
    Outcome: `<file>: changed while it was being read; run again` (a DfotaError: exit 1 in
    a run), never FileNotFoundError."""
    victim = _regular_files(ws.rootfs / "etc")[0]
    rel = victim.relative_to(ws.rootfs).as_posix()
    assert _scan_changing(ws, rel, victim.unlink) == \
        f"{victim}: changed while it was being read; run again"


@pytest.mark.slow
def test_rootfs_file_deleted_between_listing_and_lstat(ws: Workspace) -> None:
    """Fed: a file of a folder deleted after the folder was listed, before the walk reaches
    it (the walk sees its elder sibling first).
    Outcome: `<file>: changed while it was being read; run again`."""
    first, victim = sorted((ws.rootfs / "etc").iterdir())[:2]
    rel = first.relative_to(ws.rootfs).as_posix()
    remove = (lambda: shutil.rmtree(victim)) if victim.is_dir() and not victim.is_symlink() \
        else victim.unlink
    assert _scan_changing(ws, rel, remove) == \
        f"{victim}: changed while it was being read; run again"


@pytest.mark.slow
def test_rootfs_link_swapped_for_a_folder_while_it_is_scanned(ws: Workspace) -> None:
    """Fed: a rootfs symlink replaced by a folder right after the walk saw it as a link.
    Outcome: `<link>: changed while it was being read; run again`, never the OSError of
    readlink (which escaped as an internal error, exit 2)."""
    link = next(p for p in sorted(ws.rootfs.rglob("*")) if p.is_symlink())
    rel = link.relative_to(ws.rootfs).as_posix()

    def swap() -> None:
        link.unlink()
        link.mkdir()

    assert _scan_changing(ws, rel, swap) == \
        f"{link}: changed while it was being read; run again"


@pytest.mark.slow
def test_rootfs_folder_removed_while_it_is_scanned(ws: Workspace) -> None:
    """Fed: a rootfs folder removed right after the walk saw it, before it is listed.
    Outcome: `<folder>: changed while it was being read; run again`."""
    folder = ws.rootfs / "usr/share"
    assert _scan_changing(ws, "usr/share", lambda: shutil.rmtree(folder)) == \
        f"{folder}: changed while it was being read; run again"


@pytest.mark.slow
def test_rootfs_file_deleted_before_it_is_zipped(ws: Workspace, tmp_path: Path) -> None:
    """Fed: the rootfs scanned and the target planned; then a checked file is deleted before
    the zip is written.
    Outcome: `<file>: changed while the zip was being written; run again`, no zip."""
    sdk = locate_sdk(ws.sdk)
    with ZipSource(ws.source) as src:
        plan = plan_target(sdk, src, scan_rootfs(sdk.rootfs))
        victim = ws.rootfs / "etc/ql_manager.conf"
        victim.unlink()
        with pytest.raises(DfotaError) as caught:
            write_zip(tmp_path / "targetfiles.zip", plan.items)
    assert str(caught.value) == f"{victim}: changed while the zip was being written; run again"
    assert not (tmp_path / "targetfiles.zip").exists()


# --- source targetfiles.zip ------------------------------------------------------------------

@pytest.mark.slow
def test_source_that_is_not_a_zip(ws: Workspace) -> None:
    """Fed: `--source` names a text file.
    Outcome: exit 1, `error: <source>: not a usable zip file (File is not a zip file)`; out/
    and archive/ unchanged."""
    ws.source.write_text("hello, not a zip\n")
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: not a usable zip file (File is not a zip file)"


@pytest.mark.slow
def test_truncated_source(ws: Workspace) -> None:
    """Fed: the source zip cut to its first half (the central directory is gone).
    Outcome: exit 1, `error: <source>: not a usable zip file (File is not a zip file)`; out/
    and archive/ unchanged."""
    data = ws.source.read_bytes()
    ws.source.write_bytes(data[: len(data) // 2])
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: not a usable zip file (File is not a zip file)"


@pytest.mark.slow
def test_source_with_a_corrupt_entry_in_a_carried_folder(ws: Workspace) -> None:
    """Fed: a source whose `RADIO/filesmap` data is damaged on disk (its CRC no longer
    matches); its directory is intact.
    Outcome: exit 1, `error: <source>: entry 'RADIO/filesmap' is corrupt (Bad CRC-32 for file
    'RADIO/filesmap')`; out/ and archive/ unchanged."""
    with zipfile.ZipFile(ws.source) as zf:
        info = zf.getinfo("RADIO/filesmap")
    data = bytearray(ws.source.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26:
                                                    info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start] ^= 0xFF
    ws.source.write_bytes(bytes(data))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: entry 'RADIO/filesmap' is corrupt (Bad CRC-32 for file " \
                   "'RADIO/filesmap')"


@pytest.mark.slow
def test_source_entry_with_dot_dot(ws: Workspace) -> None:
    """Fed: a source with an extra entry `SYSTEM/firmware/../../../evil`.
    Outcome: exit 1, `error: <source>: entry 'SYSTEM/firmware/../../../evil' would escape its
    folder ('..', '.' or '//' in name)`; out/ and archive/ unchanged."""
    rewrite_zip(ws.source, add=(file_info("SYSTEM/firmware/../../../evil", b"x"),))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == (f"{ws.source}: entry 'SYSTEM/firmware/../../../evil' would escape its "
                    "folder ('..', '.' or '//' in name)")


@pytest.mark.slow
def test_source_entry_with_an_absolute_name(ws: Workspace) -> None:
    """Fed: a source with an extra entry `/etc/cron.d/evil`.
    Outcome: exit 1, `error: <source>: entry '/etc/cron.d/evil' has an absolute or empty
    name`; out/ and archive/ unchanged."""
    rewrite_zip(ws.source, add=(file_info("/etc/cron.d/evil", b"x"),))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: entry '/etc/cron.d/evil' has an absolute or empty name"


@pytest.mark.slow
def test_source_with_duplicate_names(ws: Workspace) -> None:
    """Fed: a source holding `RADIO/filesmap` twice (the second with other content).
    Outcome: exit 1, `error: <source>: entry 'RADIO/filesmap' appears twice`; out/ and
    archive/ unchanged."""
    rewrite_zip(ws.source, add=(file_info("RADIO/filesmap", b"abl.elf evil\n"),))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: entry 'RADIO/filesmap' appears twice"


@pytest.mark.slow
def test_source_symlink_out_of_system_is_carried_as_a_link(ws: Workspace) -> None:
    """Fed: a vendor source with symlink entries `SYSTEM/firmware/image/escape` ->
    `../../../../etc` and `SYSTEM/firmware/image/shadow` -> `/etc/shadow` (kept from the source
    into the target), on a first run (empty archive: the archive refuses a known version with
    other content).
    Outcome: accepted (exit 0); both are symlink entries of the target with the same text:
    never followed, never extracted on the host; no host bytes in the zip."""
    rewrite_zip(ws.source, add=(link_info("SYSTEM/firmware/image/escape", "../../../../etc"),
                                link_info("SYSTEM/firmware/image/shadow", "/etc/shadow")))
    shutil.rmtree(ws.archive)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    members = zip_members(ws.out / "targetfiles.zip")
    for name, target in (("escape", b"../../../../etc"), ("shadow", b"/etc/shadow")):
        mode, text = members[f"SYSTEM/firmware/image/{name}"]
        assert stat.S_ISLNK(mode) and text == target
    shadow = Path("/etc/shadow")
    if shadow.is_file() and shadow.stat().st_size > 16:
        assert shadow.read_bytes() not in (ws.out / "targetfiles.zip").read_bytes()


@pytest.mark.slow
def test_source_entry_below_a_symlink_entry_is_refused(ws: Workspace) -> None:
    """Fed: a source with a symlink entry `SYSTEM/firmware/lnk` -> `/tmp` and a file entry
    `SYSTEM/firmware/lnk/payload` below it (extracting it would write through the link).
    Outcome: exit 1, `error: <source>: entry 'SYSTEM/firmware/lnk/payload' lies below the
    symlink 'SYSTEM/firmware/lnk'`; out/ and archive/ unchanged."""
    rewrite_zip(ws.source, add=(link_info("SYSTEM/firmware/lnk", "/tmp"),
                                file_info("SYSTEM/firmware/lnk/payload", b"evil")))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == (f"{ws.source}: entry 'SYSTEM/firmware/lnk/payload' lies below the symlink "
                    "'SYSTEM/firmware/lnk'")


@pytest.mark.slow
def test_source_without_system_firmware(ws: Workspace) -> None:
    """Fed: a source without `SYSTEM/firmware/` and everything below it.
    Outcome: exit 1, `error: <source>: has no SYSTEM/firmware/; is it a targetfiles.zip?`;
    out/ and archive/ unchanged."""
    rewrite_zip(ws.source, drop=("SYSTEM/firmware",))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: has no SYSTEM/firmware/; is it a targetfiles.zip?"


@pytest.mark.slow
def test_source_whose_system_firmware_is_a_file(ws: Workspace) -> None:
    """Fed: a source whose `SYSTEM/firmware` is a symlink entry instead of a folder.
    Outcome: exit 1, `error: <source>: SYSTEM/firmware is not a folder`; out/ and archive/
    unchanged."""
    rewrite_zip(ws.source, drop=("SYSTEM/firmware",),
                add=(link_info("SYSTEM/firmware", "/lib/firmware"),))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: SYSTEM/firmware is not a folder"


@pytest.mark.slow
def test_source_without_folder_entries(ws: Workspace) -> None:
    """Fed: a source holding only file and link entries (no folder entries, as some zip
    writers make them).
    Outcome: exit 1, `error: <source>: has entries below SYSTEM/ but no entry for the folder
    itself; write it with `zip -r`, which records folders` (owners and modes of folders would
    otherwise be guessed); out/ and archive/ unchanged."""
    with zipfile.ZipFile(ws.source) as zf:
        files = [(i, zf.read(i)) for i in zf.infolist() if not i.is_dir()]
    with zipfile.ZipFile(ws.source, "w") as out:
        for info, data in files:
            out.writestr(info, data)
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == (f"{ws.source}: has entries below SYSTEM/ but no entry for the folder "
                    "itself; write it with `zip -r`, which records folders")


@pytest.mark.slow
def test_source_without_the_boot_image(ws: Workspace) -> None:
    """Fed: a source without `BOOTABLE_IMAGES/`.
    Outcome: exit 1, `error: <source>: has no BOOTABLE_IMAGES/boot.img; is it a
    targetfiles.zip?`; out/ and archive/ unchanged."""
    rewrite_zip(ws.source, drop=("BOOTABLE_IMAGES",))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: has no BOOTABLE_IMAGES/boot.img; is it a targetfiles.zip?"


@pytest.mark.slow
def test_source_missing_optional_folders_warns(ws: Workspace) -> None:
    """Fed: a vendor source without `RADIO/` and `RECOVERY/`, on a first run (empty archive).
    Outcome: accepted (exit 0) with `warning: <source>: has no RADIO/ folder` and the same for
    RECOVERY/; the target lacks them too."""
    rewrite_zip(ws.source, drop=("RADIO", "RECOVERY"))
    shutil.rmtree(ws.archive)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{ws.source}: has no RADIO/ folder" in warnings_of(run)
    assert f"{ws.source}: has no RECOVERY/ folder" in warnings_of(run)
    assert not [n for n in zip_members(ws.out / "targetfiles.zip")
                if n.startswith(("RADIO", "RECOVERY"))]


@pytest.mark.slow
def test_source_zip_bomb_declared_size_beyond_the_file(ws: Workspace) -> None:
    """Fed: a source whose `RADIO/filesmap` is deflated and whose central directory declares
    an uncompressed size of 4,294,967,294 bytes for its few compressed bytes.
    Outcome: exit 1 before anything is decompressed, `error: <source>: entry 'RADIO/filesmap'
    declares 4294967294 bytes that its N stored bytes cannot hold`; out/ and archive/
    unchanged."""
    with zipfile.ZipFile(ws.source) as zf:
        kept = [(i, zf.read(i)) for i in zf.infolist() if i.filename != "RADIO/filesmap"]
        filesmap = zf.read("RADIO/filesmap")
    with zipfile.ZipFile(ws.source, "w") as out:
        for info, data in kept:
            out.writestr(info, data)
        info = zipfile.ZipInfo("RADIO/filesmap", (2022, 6, 22, 15, 50, 0))
        info.compress_type = zipfile.ZIP_DEFLATED
        out.writestr(info, filesmap)
    with zipfile.ZipFile(ws.source) as zf:
        packed = zf.getinfo("RADIO/filesmap").compress_size
    raw = bytearray(ws.source.read_bytes())
    central = central_records(bytes(raw))["RADIO/filesmap"]
    struct.pack_into("<I", raw, central + 24, 0xFFFFFFFE)
    ws.source.write_bytes(bytes(raw))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == (f"{ws.source}: entry 'RADIO/filesmap' declares 4294967294 bytes that its "
                    f"{packed} stored bytes cannot hold")


@pytest.mark.slow
def test_source_zip_bomb_overlapping_entries(ws: Workspace) -> None:
    """Fed: a source whose central directory lists 3,000 extra entries that all point at the
    same compressed data (the overlapping-entries zip bomb): declared data far beyond the file.
    Outcome: exit 1, `error: <source>: entries declare N bytes of data but the file holds M;
    it is truncated or forged`; out/ and archive/ unchanged."""
    data = ws.source.read_bytes()
    end = data.rindex(b"PK\x05\x06")
    count, cd_size, cd_offset = struct.unpack("<HII", data[end + 10: end + 20])
    record = data[central_records(data)["SYSTEM/bin/busybox"]:][:46]
    extra = bytearray()
    for i in range(3000):
        name = f"RADIO/bomb{i:04d}".encode()
        rec = bytearray(record) + name
        struct.pack_into("<HHH", rec, 28, len(name), 0, 0)
        extra += rec
    eocd = bytearray(data[end: end + 22])
    struct.pack_into("<HHII", eocd, 8, count + 3000, count + 3000, cd_size + len(extra),
                     cd_offset)
    ws.source.write_bytes(data[:cd_offset + cd_size] + bytes(extra) + bytes(eocd))
    file_size = ws.source.stat().st_size
    with unchanged(ws):
        line = refused(ws.doit())
    assert line.startswith(f"{ws.source}: entries declare ")
    assert line.endswith(f"bytes of data but the file holds {file_size}; it is truncated or "
                         "forged")


# --- zip entry names -------------------------------------------------------------------------

UTF8_FIRMWARE = "SYSTEM/firmware/image/münchen.bin"
UTF8_KEPT = "usr/share/ünï/cödé.txt"  # in the source and the rootfs, unchanged
UTF8_CHANGED = "etc/größe.conf"  # in both, other bytes in the rootfs


def info_zip(tree: Path, dest: Path) -> None:
    """`zip -qry0` of a folder, as the note's procedure runs it (Debian's Info-ZIP writes
    UTF-8 names without the UTF-8 flag)."""
    dest.unlink(missing_ok=True)
    subprocess.run(["zip", "-qry0", str(dest), "."], cwd=tree, check=True)


def unzip_names(path: Path) -> list[bytes]:
    """The entry names as Info-ZIP's `unzip -Z1` prints them, as bytes."""
    done = subprocess.run(["unzip", "-Z1", str(path)], capture_output=True, check=True,
                          env={**os.environ, "LC_ALL": "C.UTF-8"})
    return done.stdout.splitlines()


def unpacked_source(ws: Workspace) -> Path:
    """The source targetfiles.zip unpacked by Info-ZIP (links and modes kept)."""
    tree = ws.root / "source-tree"
    subprocess.run(["unzip", "-q", str(ws.source), "-d", str(tree)], check=True)
    return tree


def _info_zip_source(ws: Workspace) -> None:
    """The sample's source with non-ASCII names in SYSTEM/firmware/ and in the rootfs part,
    another Package Time (a version of its own), zipped by Info-ZIP; the rootfs has the same
    names, one of them changed, and a new Package Time."""
    tree = unpacked_source(ws)
    (tree / UTF8_FIRMWARE).write_bytes(b"modem blob\n" * 100)
    for rel, data in ((UTF8_KEPT, b"kept as it is\n"), (UTF8_CHANGED, b"size=1\n" * 40)):
        for top in (tree / "SYSTEM", ws.rootfs):
            (top / rel).parent.mkdir(exist_ok=True)
            (top / rel).write_bytes(data)
    (ws.rootfs / UTF8_CHANGED).write_bytes(b"size=2\n" * 40)
    version = tree / "SYSTEM" / VERSION_FILE
    version.write_text(version.read_text().replace("2022-06-22,15:50", "2022-06-23,15:50"))
    info_zip(tree, ws.source)
    bump(ws)


@pytest.fixture(scope="module")
def info_zip_chain(earlier: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> tuple[Workspace, Run]:
    """`doit targetfiles delta verify` on a source made by Info-ZIP with non-ASCII names."""
    root = tmp_path_factory.mktemp("info-zip") / "ws"
    shutil.copytree(earlier, root, symlinks=True)
    ws = Workspace(root, root / "sdk", root / "source.zip")
    _info_zip_source(ws)
    return ws, chain(ws, "delta", "verify")


@pytest.mark.slow
def test_source_zipped_by_info_zip_keeps_non_ascii_names(
        info_zip_chain: tuple[Workspace, Run]) -> None:
    """Fed: a source targetfiles.zip made with `zip -qry0` (UTF-8 names, no UTF-8 flag: read
    as code page 437, `münchen.bin` would be `m├╝nchen.bin`) holding
    `SYSTEM/firmware/image/münchen.bin` and, in its rootfs part, `usr/share/ünï/cödé.txt`
    (the same in the SDK's rootfs) and `etc/größe.conf` (changed in the rootfs).
    Outcome: accepted (exit 0) through targetfiles, delta and verify. The target keeps every
    name exactly (as Info-ZIP's `unzip -Z1` sees them), writes non-ASCII names with the
    UTF-8 flag and ASCII ones without; the package ships `etc/größe.conf` and neither the
    unchanged `cödé.txt` nor the firmware file."""
    ws, run = info_zip_chain
    assert run.returncode == 0, run.stdout + run.stderr
    with zipfile.ZipFile(ws.source) as zf:  # the source is what Info-ZIP writes
        assert not any(i.flag_bits & 0x800 for i in zf.infolist())
    target = ws.out / "targetfiles.zip"
    names = unzip_names(target)
    for name in (UTF8_FIRMWARE, f"SYSTEM/{UTF8_KEPT}", f"SYSTEM/{UTF8_CHANGED}"):
        assert name.encode() in names
    assert not [n for n in names if "├".encode() in n]
    with ZipSource(target) as tgt:
        assert tgt.read(UTF8_FIRMWARE) == b"modem blob\n" * 100
        assert tgt.read(f"SYSTEM/{UTF8_CHANGED}") == b"size=2\n" * 40
    with zipfile.ZipFile(target) as zf:  # how names are written: the flag for non-ASCII
        for info in zf.infolist():
            assert bool(info.flag_bits & 0x800) == (not info.filename.isascii()), info
    package = unzip_names(ws.out / "update.zip")
    changed = UTF8_CHANGED.encode()
    assert (b"system/" + changed in package) != (b"patch/system/" + changed + b".p" in package)
    assert not [n for n in package if "cödé".encode() in n or "münchen".encode() in n]
    summary = json.loads((ws.out / "update.json").read_text())
    assert summary["verify"]["ok"] is True


ORACLE = os.environ.get("DFOTA_ORACLE")


@pytest.mark.skipif(not ORACLE, reason="DFOTA_ORACLE is not set: the module's real updater "
                    "(apply-package.py, root only) is not run")
@pytest.mark.slow
def test_real_updater_gives_the_target_names(info_zip_chain: tuple[Workspace, Run]) -> None:
    """Fed: the package of the Info-ZIP source above, run by the module's real updater
    (`$DFOTA_ORACLE/apply-package.py`, which builds /system from the source's name bytes).
    Outcome: the updater succeeds, and /system holds exactly the target's SYSTEM names and
    file bytes, non-ASCII names included."""
    ws, run = info_zip_chain
    assert run.returncode == 0, run.stdout + run.stderr
    done = subprocess.run([sys.executable, str(Path(str(ORACLE)) / "apply-package.py"),
                           str(ws.source), str(ws.out / "update.zip")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["exit"] == 0, result["log_tail"]
    device = {e["path"].encode("utf-8", "surrogateescape"): e for e in result["system"]}
    with zipfile.ZipFile(ws.out / "targetfiles.zip") as zf:
        target = {i.filename.removeprefix("SYSTEM/").rstrip("/").encode(): i
                  for i in zf.infolist() if i.filename.startswith("SYSTEM/")
                  and i.filename != "SYSTEM/"}
        for name in (UTF8_FIRMWARE, f"SYSTEM/{UTF8_KEPT}", f"SYSTEM/{UTF8_CHANGED}"):
            rel = name.removeprefix("SYSTEM/").encode()
            assert device[rel]["sha1"] == hashlib.sha1(zf.read(name)).hexdigest()
    assert sorted(device) == sorted(target)


@pytest.mark.parametrize("flagged", [False, True], ids=["no-flag", "utf8-flag"])
@pytest.mark.slow
def test_source_entry_name_that_is_not_utf8_is_refused(ws: Workspace, flagged: bool) -> None:
    """Fed: a source made by `zip -qry0` holding `SYSTEM/etc/bad\\xffname` (the byte 0xff is
    not UTF-8), without the UTF-8 flag as Info-ZIP writes it, or with the flag set.
    Outcome: exit 1, `error: <source>: entry name 'SYSTEM/etc/bad\\xffname' is not valid
    UTF-8` (the byte shown escaped, never read as code page 437); out/ and archive/
    unchanged."""
    tree = unpacked_source(ws)
    os.close(os.open(os.fsencode(tree / "SYSTEM/etc") + b"/bad\xffname",
                     os.O_CREAT | os.O_WRONLY))
    info_zip(tree, ws.source)
    if flagged:
        data = bytearray(ws.source.read_bytes())
        for magic, at in ((b"PK\x01\x02", 9), (b"PK\x03\x04", 7)):
            start = 0
            while (start := data.find(magic, start)) >= 0:
                name_at = start + (46 if magic == b"PK\x01\x02" else 30)
                if data[name_at:name_at + 16] == b"SYSTEM/etc/bad\xffn":
                    data[start + at] |= 0x08  # bit 11 of the general purpose flags
                start += 4
        ws.source.write_bytes(data)
        with pytest.raises(UnicodeDecodeError):  # the flag is set: zipfile reads UTF-8
            zipfile.ZipFile(ws.source)
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: entry name 'SYSTEM/etc/bad\\xffname' is not valid UTF-8"


def test_host_updater_refuses_a_package_name_that_is_not_utf8(tmp_path: Path) -> None:
    """Fed: to the host updater (`doit verify`'s model of the module), a package made by
    Info-ZIP whose entry `system/bad\\xffname` is not UTF-8.
    Outcome: one line naming the package and the escaped bytes (exit 1 in a run)."""
    tree = tmp_path / "pkg"
    (tree / "system").mkdir(parents=True)
    os.close(os.open(os.fsencode(tree / "system") + b"/bad\xffname",
                     os.O_CREAT | os.O_WRONLY))
    info_zip(tree, tmp_path / "update.zip")
    with pytest.raises(DfotaError) as caught:
        load_package(tmp_path / "update.zip")
    assert str(caught.value) == (f"{tmp_path / 'update.zip'}: entry name "
                                 "'system/bad\\xffname' is not valid UTF-8")


# --- images ----------------------------------------------------------------------------------

def _boot(ws: Workspace) -> Path:
    return ws.sdk / "target/sdxlemur-boot.img"


def _abl(ws: Workspace) -> Path:
    return ws.sdk / "target/abl.elf"


@pytest.mark.slow
def test_boot_image_with_bad_magic(ws: Workspace) -> None:
    """Fed: the SDK's boot image with `NOTANDRD` in place of `ANDROID!`.
    Outcome: exit 1, `error: <boot>: not an Android boot image (magic b'NOTANDRD', expected
    b'ANDROID!')`; out/ and archive/ unchanged."""
    data = bytearray(_boot(ws).read_bytes())
    data[:8] = b"NOTANDRD"
    _boot(ws).write_bytes(bytes(data))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == (f"{_boot(ws)}: not an Android boot image (magic b'NOTANDRD', expected "
                    "b'ANDROID!')")


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.slow
def test_boot_image_with_a_v3_or_v4_header(ws: Workspace, version: int) -> None:
    """Fed: a boot image whose header_version is 3 (then 4), the layouts of Android 11+ that
    the module's bootloader does not take.
    Outcome: exit 1, `error: <boot>: unsupported boot image header version N (supported: 0,
    1, 2)`; out/ and archive/ unchanged."""
    data = bytearray(build_boot_image(b"k" * 5000, cmdline="x"))
    struct.pack_into("<I", data, 40, version)
    _boot(ws).write_bytes(bytes(data))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == (f"{_boot(ws)}: unsupported boot image header version {version} "
                    "(supported: 0, 1, 2)")


@pytest.mark.slow
def test_boot_image_with_sizes_beyond_the_file(ws: Workspace) -> None:
    """Fed: the SDK's boot image whose header declares a kernel of 64 MiB (the file is far
    smaller).
    Outcome: exit 1, `error: <boot>: kernel section ends at N, beyond the file (M bytes)`;
    out/ and archive/ unchanged."""
    data = bytearray(_boot(ws).read_bytes())
    page_size = struct.unpack_from("<I", data, 36)[0]
    struct.pack_into("<I", data, 8, 64 * 1024 * 1024)
    _boot(ws).write_bytes(bytes(data))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == (f"{_boot(ws)}: kernel section ends at {page_size + 64 * 1024 * 1024}, "
                    f"beyond the file ({len(data)} bytes)")


@pytest.mark.slow
def test_abl_that_is_not_elf(ws: Workspace) -> None:
    """Fed: an abl.elf holding text.
    Outcome: exit 1, `error: <abl>: not an ELF file (magic b'not ', expected b'\\x7fELF')`;
    out/ and archive/ unchanged."""
    _abl(ws).write_text("not an elf\n")
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{_abl(ws)}: not an ELF file (magic b'not ', expected b'\\x7fELF')"


@pytest.mark.slow
def test_abl_for_the_wrong_machine(ws: Workspace) -> None:
    """Fed: an abl.elf whose e_machine says x86-64 (62).
    Outcome: exit 1, `error: <abl>: unsupported machine EM_X86_64 (expected ARM or AArch64)`;
    out/ and archive/ unchanged."""
    data = bytearray(build_abl_elf(b"a" * 900))
    struct.pack_into("<H", data, 18, 62)
    _abl(ws).write_bytes(bytes(data))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{_abl(ws)}: unsupported machine EM_X86_64 (expected ARM or AArch64)"


@pytest.mark.slow
def test_abl_truncated_inside_a_segment(ws: Workspace) -> None:
    """Fed: the SDK's abl.elf cut 100 bytes short, inside its last segment.
    Outcome: exit 1, `error: <abl>: segment N ends at E, beyond the file (S bytes); the file is
    truncated`; out/ and archive/ unchanged."""
    data = _abl(ws).read_bytes()
    _abl(ws).write_bytes(data[:-100])
    with unchanged(ws):
        line = refused(ws.doit())
    assert line.startswith(f"{_abl(ws)}: segment ")
    assert line.endswith(f", beyond the file ({len(data) - 100} bytes); the file is truncated")


# --- config lists ----------------------------------------------------------------------------

@pytest.mark.slow
def test_config_list_with_unknown_syntax(ws: Workspace) -> None:
    """Fed: a chmod list line `chmod 0755 /usr/bin/ql_at_client` (shell syntax).
    Outcome: exit 1 from `doit delta`, `error: <config>/quectel_chmod_filelist.txt:N: 'chmod
    0755 /usr/bin/ql_at_client' is neither a comment, a 'default' line nor a path starting
    with '/'`; out/ (the earlier package included) and archive/ unchanged."""
    chmod = config_of(ws) / "quectel_chmod_filelist.txt"
    with chmod.open("a") as f:
        f.write("chmod 0755 /usr/bin/ql_at_client\n")
    number = len(chmod.read_text().splitlines())
    with unchanged(ws):
        line = refused(chain(ws, "delta"))
    assert line == (f"{chmod}:{number}: 'chmod 0755 /usr/bin/ql_at_client' is neither a "
                    "comment, a 'default' line nor a path starting with '/'")


@pytest.mark.slow
def test_config_lists_naming_paths_that_do_not_exist(ws: Workspace) -> None:
    """Fed: a fullota line and a chmod line for `/usr/bin/not_there`, which no version has.
    Outcome: accepted (exit 0) with `warning: quectel_fullota_filelist.txt:
    SYSTEM/usr/bin/not_there is not in the target` and `warning:
    quectel_chmod_filelist.txt:N: file SYSTEM/usr/bin/not_there is not in the target`; the
    package is byte-identical to the earlier one (no step names the missing path)."""
    before = (ws.out / "update.zip").read_bytes()
    with (config_of(ws) / "quectel_fullota_filelist.txt").open("a") as f:
        f.write("SYSTEM/usr/bin/not_there\n")
    chmod = config_of(ws) / "quectel_chmod_filelist.txt"
    with chmod.open("a") as f:
        f.write("/usr/bin/not_there 0700 0 0\n")
    number = len(chmod.read_text().splitlines())
    run = chain(ws, "delta", "verify")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "quectel_fullota_filelist.txt: SYSTEM/usr/bin/not_there is not in the target" \
        in warnings_of(run)
    assert f"quectel_chmod_filelist.txt:{number}: file SYSTEM/usr/bin/not_there is not in " \
        "the target" in warnings_of(run)
    assert (ws.out / "update.zip").read_bytes() == before


@pytest.mark.slow
def test_config_file_in_both_noota_and_fullota(ws: Workspace) -> None:
    """Fed: `SYSTEM/etc/hosts` listed in both the noota and the fullota list.
    Outcome: exit 1, `error: <config>: 1 file(s) in both quectel_noota_filelist.txt and
    quectel_fullota_filelist.txt (SYSTEM/etc/hosts): keep each in one list`; out/ and archive/
    unchanged."""
    for name in ("quectel_noota_filelist.txt", "quectel_fullota_filelist.txt"):
        with (config_of(ws) / name).open("a") as f:
            f.write("SYSTEM/etc/hosts\n")
    with unchanged(ws):
        line = refused(chain(ws, "delta"))
    assert line == (f"{config_of(ws)}: 1 file(s) in both quectel_noota_filelist.txt and "
                    "quectel_fullota_filelist.txt (SYSTEM/etc/hosts): keep each in one list")


@pytest.mark.slow
def test_config_changed_noota_file(ws: Workspace) -> None:
    """Fed: `SYSTEM/bin/busybox`, which the new version changes, added to the noota list.
    Outcome: exit 1, `error: <config>/quectel_noota_filelist.txt: SYSTEM/bin/busybox changed
    between source and target: move it from the noota list to the fullota list
    (quectel_fullota_filelist.txt)` (the note's restriction 2); out/ and archive/ unchanged."""
    noota = config_of(ws) / "quectel_noota_filelist.txt"
    with noota.open("a") as f:
        f.write("SYSTEM/bin/busybox\n")
    with unchanged(ws):
        line = refused(chain(ws, "delta"))
    assert line == (f"{noota}: SYSTEM/bin/busybox changed between source and target: move it "
                    "from the noota list to the fullota list (quectel_fullota_filelist.txt)")


# --- versions --------------------------------------------------------------------------------

@pytest.mark.slow
def test_target_version_equal_to_the_source(ws: Workspace) -> None:
    """Fed: a rootfs whose version file is the base's (the user forgot to bump it).
    Outcome: exit 1, `error: <rootfs>/etc/quectel-project-version: has the source's version
    <base key>; bump 'Package Time' or 'Project Rev' for the new build`; out/ and archive/
    unchanged."""
    with ZipSource(ws.source) as src:
        (ws.rootfs / VERSION_FILE).write_bytes(src.read(f"SYSTEM/{VERSION_FILE}"))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == (f"{ws.rootfs / VERSION_FILE}: has the source's version {BASE_KEY}; bump "
                    "'Package Time' or 'Project Rev' for the new build")


@pytest.mark.slow
def test_rootfs_version_file_missing(ws: Workspace) -> None:
    """Fed: a rootfs without `etc/quectel-project-version`.
    Outcome: exit 1, `error: <rootfs>/etc/quectel-project-version: version file missing from
    the rootfs`; out/ and archive/ unchanged."""
    (ws.rootfs / VERSION_FILE).unlink()
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.rootfs / VERSION_FILE}: version file missing from the rootfs"


@pytest.mark.slow
def test_source_version_file_missing(ws: Workspace) -> None:
    """Fed: a source zip without `SYSTEM/etc/quectel-project-version`.
    Outcome: exit 1, `error: <source>: has no SYSTEM/etc/quectel-project-version`; out/ and
    archive/ unchanged."""
    rewrite_zip(ws.source, drop=(f"SYSTEM/{VERSION_FILE}",))
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.source}: has no SYSTEM/{VERSION_FILE}"


@pytest.mark.slow
def test_archive_holds_the_version_with_other_content(ws: Workspace) -> None:
    """Fed: a rootfs file changed without bumping the version (already archived).
    Outcome: exit 1, `error: <archive>/<key>/targetfiles.zip: version <key> is already
    archived with other content; bump 'Package Time' or 'Project Rev' in
    etc/quectel-project-version of the new build`; out/ and archive/ unchanged."""
    (ws.rootfs / "etc/hosts").write_text("127.0.0.1 localhost changed\n")
    with unchanged(ws):
        line = refused(ws.doit())
    assert line == (f"{ws.archive / NEXT_KEY / 'targetfiles.zip'}: version {NEXT_KEY} is "
                    "already archived with other content; bump 'Package Time' or 'Project "
                    "Rev' in etc/quectel-project-version of the new build")


@pytest.mark.slow
def test_archived_source_altered_on_disk(ws: Workspace) -> None:
    """Fed: the archived base's targetfiles.zip altered on disk; the source taken from the
    archive (`--source <base key>`); the version bumped.
    Outcome: exit 1, `error: <archive>/<base>/targetfiles.zip: archived version <base> does not
    match its manifest's sha256: the archive was altered`; out/ unchanged, archive/ only holds
    the alteration."""
    zip_path = ws.archive / BASE_KEY / "targetfiles.zip"
    zip_path.chmod(0o644)
    with zip_path.open("ab") as f:
        f.write(b"tampered")
    bump(ws)
    with unchanged(ws):
        line = refused(ws.doit("--source", BASE_KEY, default_source=True))
    assert line == (f"{zip_path}: archived version {BASE_KEY} does not match its manifest's "
                    "sha256: the archive was altered")


@pytest.mark.slow
def test_delta_between_two_zips_of_the_same_version(ws: Workspace) -> None:
    """Fed: `doit delta --base out/targetfiles.zip`: base and target are the same version.
    Outcome: exit 1, `error: <out>/targetfiles.zip: base and target have the same version
    <key>: a module could not tell them apart`; out/ and archive/ unchanged."""
    copy = ws.root / "same.zip"
    shutil.copyfile(ws.out / "targetfiles.zip", copy)
    with unchanged(ws):
        line = refused(ws.run(*_chain(ws, config_of(ws), "delta"), "--base", str(copy)))
    assert line == (f"{ws.out / 'targetfiles.zip'}: base and target have the same version "
                    f"{NEXT_KEY}: a module could not tell them apart")


# --- environment -----------------------------------------------------------------------------

@contextlib.contextmanager
def small_disk(folder: Path, size: str) -> Iterator[None]:
    """`folder` on a tmpfs of `size` bytes (its content kept)."""
    saved = folder.with_name(folder.name + ".saved")
    if folder.exists():
        folder.rename(saved)
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        folder.rmdir()
        if saved.exists():
            saved.rename(folder)
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        if saved.exists():
            subprocess.run(["cp", "-a", f"{saved}/.", str(folder)], check=True)
            shutil.rmtree(saved)
        yield
    finally:
        kept = folder.with_name(folder.name + ".after")
        subprocess.run(["cp", "-a", str(folder), str(kept)], check=True)
        subprocess.run(["umount", str(folder)], check=True)
        folder.rmdir()
        kept.rename(folder)


@pytest.mark.slow
def test_file_size_limit_while_writing_the_zip(ws: Workspace) -> None:
    """Fed: a new version (bumped) built under a 2 MiB file-size limit (RLIMIT_FSIZE), so
    writing the target zip (about 5 MB, written once, into the archive's staging folder)
    fails with `File too large`.
    Outcome: exit 1, `error: <archive>: cannot write the archive (File too large)`; out/ and
    archive/ unchanged; no partial zip left in the archive or the state folder."""
    bump(ws)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    with unchanged(ws):
        done = subprocess.run([*_python_doit(ws), "targetfiles", "--sdk", str(ws.sdk),
                               "--source", str(ws.source), *ws.folders],
                              capture_output=True, text=True, preexec_fn=limit,
                              cwd=Path(__file__).resolve().parent.parent)
        line = refused(Run(done.returncode, done.stdout, done.stderr))
    leftovers = [p for p in (*ws.archive.rglob("*"), *(ws.root / "state").rglob("*"))
                 if ".targetfiles.zip." in p.name or "staging" in p.name]
    assert line == f"{ws.archive}: cannot write the archive (File too large)"
    assert leftovers == []


def _python_doit(ws: Workspace) -> list[str]:
    return [sys.executable, "-m", "doit", "--db-file", str(ws.root / "doit.db")]


@pytest.mark.slow
def test_disk_full_while_writing_to_out(ws: Workspace) -> None:
    """Fed: a new version (bumped) with `out/` on a file system that holds the earlier
    results but has no room for a second targetfiles.zip.
    Outcome: exit 1, `error: <out>/targetfiles.zip: cannot write file (No space left on
    device)`; out/ and archive/ unchanged: the new version is not archived either, because the
    copy into out/ is made (under a temporary name) before anything is archived."""
    bump(ws)
    used = sum(p.stat().st_size for p in ws.out.rglob("*") if p.is_file())
    with small_disk(ws.out, str(used + 1024 * 1024)), unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.out / 'targetfiles.zip'}: cannot write file (No space left on device)"


@pytest.mark.slow
def test_disk_full_while_archiving(ws: Workspace) -> None:
    """Fed: a new version (bumped) with `archive/` on a file system that holds the two
    archived versions but has no room for a third.
    Outcome: exit 1, `error: <archive>: cannot write the archive (No space left on device)`;
    out/ and archive/ unchanged (the staging folder is removed)."""
    bump(ws)
    used = sum(p.stat().st_size for p in ws.archive.rglob("*") if p.is_file())
    with small_disk(ws.archive, str(used + 1024 * 1024)), unchanged(ws):
        line = refused(ws.doit())
    assert line == f"{ws.archive}: cannot write the archive (No space left on device)"


@pytest.mark.slow
def test_output_folder_read_only(ws: Workspace) -> None:
    """Fed: a new version (bumped) with `out/` read-only (mode 555, the tool run without
    CAP_DAC_OVERRIDE).
    Outcome: exit 1, `error: <out>: cannot write here (Permission denied)`; out/ and archive/
    unchanged: nothing is archived when the result cannot be delivered."""
    bump(ws)
    ws.out.chmod(0o555)
    try:
        with unchanged(ws):
            line = refused(ws.doit(without_dac_override=True))
    finally:
        ws.out.chmod(0o755)
    assert line == f"{ws.out}: cannot write here (Permission denied)"


@pytest.mark.slow
def test_archive_folder_missing(ws: Workspace) -> None:
    """Fed: the archive folder deleted (or never mounted), and no `--source`.
    Outcome: exit 1, `error: <archive>: this workspace has no version to build on: run `doit
    import_base --firmware DIR` once, or give `--source` a targetfiles.zip or an archived
    version`; no archive folder is created; out/ unchanged."""
    shutil.rmtree(ws.archive)
    with unchanged(ws):
        line = refused(ws.doit(default_source=True))
    assert line == (f"{ws.archive}: this workspace has no version to build on: run `doit "
                    "import_base --firmware DIR` once, or give `--source` a targetfiles.zip or "
                    "an archived version")
    assert not ws.archive.exists()


@pytest.mark.slow
def test_archive_folder_missing_with_a_source_starts_a_new_archive(ws: Workspace) -> None:
    """Fed: the archive folder deleted, and `--source` names the base zip (a first run).
    Outcome: accepted (exit 0); the archive is created with the base and the target, its index
    agreeing with its folders; out/targetfiles.zip is byte-identical to the earlier one."""
    before = (ws.out / "targetfiles.zip").read_bytes()
    shutil.rmtree(ws.archive)
    run = ws.doit()
    assert run.returncode == 0, run.stdout + run.stderr
    assert archived(ws) == [BASE_KEY, NEXT_KEY]
    assert (ws.out / "targetfiles.zip").read_bytes() == before
    assert hashlib.sha256(before).hexdigest() == json.loads(
        (ws.archive / NEXT_KEY / "manifest.json").read_text())["sha256"]


@pytest.mark.slow
def test_archive_path_is_a_file(ws: Workspace) -> None:
    """Fed: `--archive` names a regular file; `--source` given.
    Outcome: exit 1, `error: <archive>: cannot write the archive (File exists)`; out/ and the
    file unchanged."""
    bogus = ws.root / "archive-file"
    bogus.write_text("not a folder\n")
    argv = ["targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), "--out",
            str(ws.out), "--archive", str(bogus), "--state", str(ws.root / "state")]
    with unchanged(ws):
        line = refused(ws.run(*argv))
    assert line == f"{bogus}: cannot write the archive (File exists)"
    assert bogus.read_text() == "not a folder\n"


# --- UBI images: `doit import_base` on a damaged firmware package, and the SDK's own image ---

PEB = 256 * 1024
DATA_OFFSET = 2 * 4096  # the EC and VID headers take one NAND page each


@pytest.fixture
def firmware(sample_sdk: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "firmware"
    shutil.copytree(sample_sdk / "firmware", folder)
    return folder


def import_base(ws: Workspace, folder: Path) -> Run:
    return ws.run("import_base", "--firmware", str(folder), *ws.folders)


def damage(image: Path, edits: list[tuple[int, bytes]], md5_of: Path | None = None) -> None:
    """Overwrite bytes of an image; keep md5.txt agreeing, so the UBI check is what fails."""
    data = bytearray(image.read_bytes())
    for offset, chunk in edits:
        data[offset:offset + len(chunk)] = chunk
    image.write_bytes(bytes(data))
    if md5_of is not None:
        rel = image.relative_to(md5_of).as_posix()
        lines = (md5_of / "md5.txt").read_text().splitlines()
        digest = hashlib.md5(bytes(data)).hexdigest()
        (md5_of / "md5.txt").write_text("\n".join(
            f"{digest}  {rel}" if line.endswith(f"  {rel}") else line for line in lines) + "\n")


@pytest.mark.slow
def test_firmware_image_that_does_not_match_md5(ws: Workspace, firmware: Path) -> None:
    """Fed: `update/NON-HLOS.ubi` changed after md5.txt was written.
    Outcome: `<image>: md5 ... does not match md5.txt`-style line naming the image; nothing
    archived."""
    image = firmware / "update/NON-HLOS.ubi"
    damage(image, [(DATA_OFFSET + 5, b"\x5a\xa5\x5a")])
    with unchanged(ws):
        line = refused(import_base(ws, firmware))
    assert "NON-HLOS.ubi" in line and "md5" in line


@pytest.mark.slow
def test_firmware_image_with_a_bad_erase_counter_header(ws: Workspace, firmware: Path) -> None:
    """Fed: the sysfs image with one bit of an erase-counter header flipped (md5 updated).
    Outcome: one line naming the image and the erase block; nothing archived."""
    image = firmware / "update/sdxlemur-sysfs.ubi"
    damage(image, [(3 * PEB + 8, b"\x01")], md5_of=firmware)
    with unchanged(ws):
        line = refused(import_base(ws, firmware))
    assert line.startswith(f"{image}: erase-counter header of erase block 3")


@pytest.mark.slow
def test_firmware_image_truncated(ws: Workspace, firmware: Path) -> None:
    """Fed: the sysfs image cut 100,000 bytes short (md5 updated).
    Outcome: `<image>: ... is truncated ...`; nothing archived."""
    image = firmware / "update/sdxlemur-sysfs.ubi"
    data = image.read_bytes()
    image.write_bytes(data[:-100_000])
    damage(image, [], md5_of=firmware)
    with unchanged(ws):
        line = refused(import_base(ws, firmware))
    assert line.startswith(f"{image}: ") and "truncated" in line


@pytest.mark.slow
def test_firmware_image_with_a_destroyed_volume_table(ws: Workspace, firmware: Path) -> None:
    """Fed: both copies of the volume table of the modem image overwritten with noise.
    Outcome: `<image>: volume table in erase block 0 is destroyed ...`; nothing archived."""
    image = firmware / "update/NON-HLOS.ubi"
    noise = bytes(range(256)) * 86
    damage(image, [(DATA_OFFSET, noise), (PEB + DATA_OFFSET, noise)], md5_of=firmware)
    with unchanged(ws):
        line = refused(import_base(ws, firmware))
    assert line.startswith(f"{image}: volume table in erase block 0 is destroyed")


@pytest.mark.slow
def test_sdk_sysfs_image_damaged(ws: Workspace) -> None:
    """Fed: the SDK's own `target/sdxlemur-sysfs.ubi` with a flipped erase-counter bit (a new
    version, so targetfiles runs and compares the rootfs with the image).
    Outcome: one line naming the image; out/ and archive/ as they were."""
    bump(ws)
    image = ws.sdk / "target/sdxlemur-sysfs.ubi"
    damage(image, [(PEB + 8, b"\x01")])
    with unchanged(ws):
        line = refused(chain(ws))
    assert line.startswith(f"{image}: erase-counter header of erase block 1")


@pytest.mark.slow
def test_sdk_sysfs_image_without_cachefs(ws: Workspace, tmp_path: Path) -> None:
    """Fed: an SDK image made by ubinize with volumes rootfs and usrfs only (a new version).
    Outcome: one line naming the image and the volumes it has: /cache would have no size;
    out/ and archive/ as they were."""
    bump(ws)
    image = ws.sdk / "target/sdxlemur-sysfs.ubi"
    ubinize(image, [("rootfs", small_ubifs(tmp_path, "-c", "2146"), 100), ("usrfs", None, 16)])
    with unchanged(ws):
        line = refused(chain(ws))
    assert line == (f"{image}: has no volume 'cachefs' (volumes: rootfs, usrfs): the module's "
                    "/cache would have no size")


@pytest.mark.slow
def test_target_beyond_the_sdk_images_rootfs_volume(ws: Workspace,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    """Fed: the SDK's image made again with a rootfs volume of 30 LEBs (3.3 MB of room for
    the sample's 4.7 MB of /system).
    Outcome: `doit delta` stops with one line naming the largest file, the total and the
    limit, from the image; `--system-size-mb` then makes the package."""
    image = replace_sdk_image(ws, monkeypatch, tmp_path, rootfs=30)
    room = image_volumes(image, list_volumes(image)).system
    line = refused(chain(ws, "delta"))
    assert line.startswith("SYSTEM/") and ": the target's /system files take " in line
    assert line.endswith(
        f"more than the system volume's {room} (volume rootfs of the SDK's sdxlemur-sysfs.ubi; "
        "system_size_mb overrides it): no package could work")
    run = ws.run(*_chain(ws, config_of(ws), "delta"), "--system-size-mb", "64")
    assert run.returncode == 0, run.stdout + run.stderr
    assert json.loads((ws.out / "update.json").read_text())["volumes"]["from"]["system"] == \
        "system_size_mb"


@pytest.mark.slow
def test_firmware_package_imports_once(ws: Workspace, firmware: Path) -> None:
    """Fed: the sample's consistent firmware package, twice.
    Outcome: accepted (the base is already archived with the same bytes: a no-op); the archive
    is unchanged."""
    with unchanged(ws):
        run = import_base(ws, firmware)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "already archived, same content" in run.stdout
