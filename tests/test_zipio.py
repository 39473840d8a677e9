"""The zip module against Info-ZIP: modes, symlinks, directories, timestamps, hostile zips."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.formats.zipio import (
    ZipSource,
    bytes_item,
    dir_item,
    link_item,
    member_item,
    path_item,
    write_zip,
)
from dfota.formats.ziplimits import DEFAULT_ZIP_LIMITS, ZipLimits, use_zip_limits

NAMES_WITH_TROUBLE = ['a b', 'quo"te', "back\\slash", "new\nline", "-dash", "ünï"]


def sample_items(tmp: Path) -> list:
    payload = tmp / "payload.bin"
    payload.write_bytes(bytes(range(256)) * 40)
    items = [
        dir_item("SYSTEM", 0o755),
        dir_item("SYSTEM/bin", 0o755),
        path_item("SYSTEM/bin/tool", payload, 0o755),
        bytes_item("SYSTEM/bin/su", b"\x7fELF setuid", 0o4755),
        bytes_item("SYSTEM/etc/secret", b"key", 0o600),
        link_item("SYSTEM/bin/sh", "busybox"),
        link_item("SYSTEM/etc/mtab", "/proc/self/mounts"),
        dir_item("SYSTEM/empty", 0o700),
        dir_item("SYSTEM/etc", 0o755),
    ]
    items += [bytes_item(f"SYSTEM/odd/{n}", n.encode(), 0o644) for n in NAMES_WITH_TROUBLE]
    items.append(dir_item("SYSTEM/odd", 0o755))
    return items


def test_same_items_give_same_bytes_whatever_the_clock_zone_and_umask(tmp_path: Path) -> None:
    first = tmp_path / "a.zip"
    write_zip(first, sample_items(tmp_path))
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[3]);"
        "from tests.test_zipio import sample_items; from dfota.formats.zipio import write_zip;"
        "write_zip(Path(sys.argv[1]), sample_items(Path(sys.argv[2])))"
    )
    second = tmp_path / "b.zip"
    other = tmp_path / "other"
    other.mkdir()
    env = {**os.environ, "TZ": "Asia/Kathmandu", "LC_ALL": "C", "TMPDIR": str(other)}
    subprocess.run(["sh", "-c", 'umask 077; exec "$@"', "sh", sys.executable, "-c", script,
                    str(second), str(other), str(Path(__file__).parent.parent)],
                   env=env, check=True)
    assert first.read_bytes() == second.read_bytes()


def test_zipping_reports_one_step_per_entry(tmp_path: Path) -> None:
    out = io.StringIO()
    items = sample_items(tmp_path)
    write_zip(tmp_path / "p.zip", items, meter=RunLog(None, "test", out))
    lines = out.getvalue().splitlines()
    assert lines[0] == f"zipping p.zip: {len(items)} to do"
    assert lines[1].startswith(f"zipping p.zip: {len(items)} done in ")


def test_entries_are_stored_sorted_with_unix_modes_and_fixed_time(tmp_path: Path) -> None:
    dest = tmp_path / "t.zip"
    write_zip(dest, sample_items(tmp_path))
    with zipfile.ZipFile(dest) as zf:
        infos = zf.infolist()
    names = [i.filename for i in infos]
    assert names == sorted(names, key=lambda n: n.encode())
    assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
    assert all(i.create_system == 3 and i.date_time == (2009, 1, 1, 0, 0, 0) for i in infos)
    assert all(i.extra == b"" for i in infos)
    modes = {i.filename: i.external_attr >> 16 for i in infos}
    assert modes["SYSTEM/bin/su"] == stat.S_IFREG | 0o4755
    assert modes["SYSTEM/bin/sh"] == stat.S_IFLNK | 0o777
    assert modes["SYSTEM/empty/"] == stat.S_IFDIR | 0o700


def test_info_zip_tests_and_restores_links_modes_and_dirs(tmp_path: Path) -> None:
    dest = tmp_path / "t.zip"
    write_zip(dest, sample_items(tmp_path))
    test = subprocess.run(["unzip", "-tq", dest], capture_output=True, text=True)
    assert test.returncode == 0 and "No errors" in test.stdout
    listing = subprocess.run(["zipinfo", dest], capture_output=True, text=True, check=True).stdout
    assert "lrwxrwxrwx" in listing and " stor " in listing and " defN " not in listing
    out = tmp_path / "x"
    out.mkdir()
    # -^ keeps control characters (the newline) in extracted names
    subprocess.run(["unzip", "-qK^", dest, "-d", out], check=True)
    system = out / "SYSTEM"
    assert os.readlink(system / "bin/sh") == "busybox"
    assert os.readlink(system / "etc/mtab") == "/proc/self/mounts"
    assert stat.S_IMODE(os.lstat(system / "bin/su").st_mode) == 0o4755
    assert stat.S_IMODE(os.lstat(system / "etc/secret").st_mode) == 0o600
    assert stat.S_IMODE(os.lstat(system / "empty").st_mode) == 0o700
    assert list((system / "empty").iterdir()) == []
    for name in NAMES_WITH_TROUBLE:
        assert (system / "odd" / name).read_bytes() == name.encode()
    assert (system / "bin/tool").read_bytes() == (tmp_path / "payload.bin").read_bytes()


def test_reading_back_gives_kinds_modes_links_and_hashes(tmp_path: Path) -> None:
    dest = tmp_path / "t.zip"
    write_zip(dest, sample_items(tmp_path))
    with ZipSource(dest) as src:
        members = src.members
        assert members["SYSTEM/bin/sh"].kind == SYMLINK
        assert src.link_target("SYSTEM/bin/sh") == "busybox"
        assert members["SYSTEM/empty"].kind == DIR and members["SYSTEM/empty"].mode == 0o700
        assert members["SYSTEM/bin/su"].kind == FILE and members["SYSTEM/bin/su"].mode == 0o4755
        assert src.sha1("SYSTEM/etc/secret") == "a62f2225bf70bfaccbc7f1ef2a397836717377de"


def test_hashes_of_stored_and_deflated_entries_and_a_damaged_stored_one(tmp_path: Path) -> None:
    dest, packed = tmp_path / "t.zip", tmp_path / "d.zip"
    write_zip(dest, sample_items(tmp_path))
    write_zip(packed, sample_items(tmp_path), compress=True)
    for path in (dest, packed):
        with ZipSource(path) as src:
            for name, member in src.members.items():
                if member.kind == FILE:
                    assert src.sha1(name) == hashlib.sha1(src.read(name)).hexdigest(), name
    with zipfile.ZipFile(dest) as zf:
        info = zf.getinfo("SYSTEM/bin/tool")
    data = bytearray(dest.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, info.header_offset + 26)
    data[info.header_offset + 30 + name_len + extra_len + 100] ^= 0xFF
    dest.write_bytes(bytes(data))
    with ZipSource(dest) as src:
        for read in (src.sha1, src.read):
            with pytest.raises(DfotaError, match=r"entry 'SYSTEM/bin/tool' is corrupt \(Bad "
                                                 r"CRC-32 for file 'SYSTEM/bin/tool'\)"):
                read("SYSTEM/bin/tool")


def test_members_are_copied_from_another_zip_byte_for_byte(tmp_path: Path) -> None:
    first = tmp_path / "a.zip"
    write_zip(first, sample_items(tmp_path))
    second = tmp_path / "b.zip"
    write_zip(second, [member_item("X/tool", first, "SYSTEM/bin/tool", 0o750),
                       link_item("X/sh", "busybox")])
    with ZipSource(second) as src:
        assert src.read("X/tool") == (tmp_path / "payload.bin").read_bytes()
        assert src.members["X/tool"].mode == 0o750
        assert src.link_target("X/sh") == "busybox"


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "t.zip"
    dest.write_bytes(b"old")
    with pytest.raises(DfotaError, match="cannot read file"):
        write_zip(dest, [path_item("SYSTEM/x", tmp_path / "missing", 0o644)])
    assert dest.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.zip"]


def test_duplicate_items_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DfotaError, match="two entries named 'a'"):
        write_zip(tmp_path / "t.zip", [bytes_item("a", b"1"), dir_item("a", 0o755)])


def _zip_with(path: Path, *names: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), b"data")
    return path


@pytest.mark.parametrize(("names", "message"), [
    (("SYSTEM/../../etc/passwd",), "would escape its folder"),
    (("/etc/passwd",), "absolute or empty name"),
    (("SYSTEM//x",), "would escape its folder"),
    (("SYSTEM/./x",), "would escape its folder"),
    (("./x",), "would escape its folder"),
    (("SYSTEM/..",), "would escape its folder"),
    (("SYSTEM/x/.",), "would escape its folder"),
    (("SYSTEM/x//",), "would escape its folder"),
    (("..",), "would escape its folder"),
    (("/",), "absolute or empty name"),
])
def test_escaping_names_are_refused(tmp_path: Path, names: tuple[str, ...], message: str) -> None:
    with pytest.raises(DfotaError, match=message):
        ZipSource(_zip_with(tmp_path / "bad.zip", *names))


def test_names_with_dots_inside_a_component_are_taken(tmp_path: Path) -> None:
    names = ("SYSTEM/.hidden", "SYSTEM/a..b/", "SYSTEM/x.", "...")
    with ZipSource(_zip_with(tmp_path / "dots.zip", *names)) as src:
        assert set(src.members) == {"SYSTEM/.hidden", "SYSTEM/a..b", "SYSTEM/x.", "..."}


def _zip_with_links(path: Path, links: tuple[str, ...], names: tuple[str, ...]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name in links:
            info = zipfile.ZipInfo(name)
            info.create_system, info.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, b"target")
        for name in names:
            zf.writestr(zipfile.ZipInfo(name), b"data")
    return path


@pytest.mark.parametrize(("links", "names", "above"), [
    (("SYSTEM/l",), ("SYSTEM/l/x",), "SYSTEM/l"),
    (("SYSTEM/a", "SYSTEM/l", "SYSTEM/z"), ("SYSTEM/b", "SYSTEM/l/x/y"), "SYSTEM/l"),
    (("SYSTEM/l", "SYSTEM/l/m"), ("SYSTEM/k",), "SYSTEM/l"),  # a link below a link
    (("SYSTEM/l", "SYSTEM/l/m"), ("SYSTEM/l/m/x",), "SYSTEM/l"),  # the outermost named
])
def test_entries_below_a_symlink_are_refused(tmp_path: Path, links: tuple[str, ...],
                                             names: tuple[str, ...], above: str) -> None:
    with pytest.raises(DfotaError, match=f"lies below the symlink '{above}'"):
        ZipSource(_zip_with_links(tmp_path / "links.zip", links, names))


def test_entries_beside_a_symlink_are_taken(tmp_path: Path) -> None:
    # names that share the link's name as a prefix but are not below it
    names = ("SYSTEM/l2", "SYSTEM/l.d/x", "SYSTEM/l-x/y", "SYSTEM/k/l/x")
    with ZipSource(_zip_with_links(tmp_path / "beside.zip", ("SYSTEM/l",), names)) as src:
        assert src.members["SYSTEM/l"].kind == "symlink"
        assert len(src.members) == 5


def test_duplicate_names_are_refused(tmp_path: Path) -> None:
    with pytest.warns(UserWarning), pytest.raises(DfotaError, match="appears twice"):
        ZipSource(_zip_with(tmp_path / "dup.zip", "SYSTEM/a", "SYSTEM/a"))


def test_not_a_zip_and_truncated_zip_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.zip"
    text.write_text("hello")
    with pytest.raises(DfotaError, match=r"notes.zip: not a usable zip file"):
        ZipSource(text)
    good = tmp_path / "good.zip"
    write_zip(good, sample_items(tmp_path))
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DfotaError, match=r"cut.zip: not a usable zip file"):
        ZipSource(cut)


def test_declared_sizes_beyond_the_file_are_refused(tmp_path: Path) -> None:
    bomb = _zip_with(tmp_path / "bomb.zip", "SYSTEM/a")
    data = bytearray(bomb.read_bytes())
    central = data.index(b"PK\x01\x02")
    struct.pack_into("<II", data, central + 20, 3_000_000_000, 3_000_000_000)
    bomb.write_bytes(bytes(data))
    with pytest.raises(DfotaError, match="truncated or forged"):
        ZipSource(bomb)


def test_a_vouched_file_is_not_hashed_again_but_must_not_change(tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"abc" * 1000)
    lying = path_item("SYSTEM/p", payload, 0o644, "0" * 40)  # a sha1 the bytes do not have
    write_zip(tmp_path / "vouched.zip", [lying], vouch=lambda path, st, sha1: True)
    with zipfile.ZipFile(tmp_path / "vouched.zip") as zf:
        assert zf.read("SYSTEM/p") == payload.read_bytes()  # not hashed: written as it is
    with pytest.raises(DfotaError, match="changed while the zip was being written"):
        write_zip(tmp_path / "hashed.zip", [lying])  # not vouched: hashed, refused
    right = path_item("SYSTEM/p", payload, 0o644, hashlib.sha1(payload.read_bytes()).hexdigest())

    def vouch_then_change(path: Path, st: os.stat_result, sha1: str) -> bool:
        with open(path, "ab") as f:
            f.write(b"written meanwhile")
        return True

    with pytest.raises(DfotaError, match="changed while the zip was being written"):
        write_zip(tmp_path / "changed.zip", [right], vouch=vouch_then_change)
    assert not (tmp_path / "changed.zip").exists()


def test_the_zip_limits_refuse_an_entry_in_one_line_naming_it(tmp_path: Path) -> None:
    """A deflated entry of zeros (about 1,000:1) is taken by default; a lowered entry limit
    or ratio refuses it, naming the entry, what it declares and the limit."""
    path = tmp_path / "zeros.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("SYSTEM/zeros", bytes(3 << 20))
    assert ZipSource(path).members["SYSTEM/zeros"].size == 3 << 20  # the defaults
    with pytest.raises(DfotaError) as caught:
        ZipSource(path, ZipLimits(max_entry_mb=2))
    assert str(caught.value) == (f"{path}: entry 'SYSTEM/zeros' declares {3 << 20} bytes, "
                                 "over the limit of 2 MiB (max_entry_mb)")
    with pytest.raises(DfotaError, match=r"at a ratio of at most 100:1 \(max_deflate_ratio\)"):
        ZipSource(path, ZipLimits(max_deflate_ratio=100))
    use_zip_limits(ZipLimits(max_entry_mb=1))  # the command's, for every zip read after
    try:
        with pytest.raises(DfotaError, match="over the limit of 1 MiB"):
            ZipSource(path)
    finally:
        use_zip_limits(DEFAULT_ZIP_LIMITS)
