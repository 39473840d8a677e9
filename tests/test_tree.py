"""Folder walks: types, modes, owners, links never followed, empty dirs, odd entries."""

from __future__ import annotations

import dataclasses
import io
import os
import socket
from pathlib import Path

import pytest

from dfota.build.manifest import scan_rootfs
from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.core.tree import (
    DIR,
    FILE,
    SYMLINK,
    Entry,
    digest_tree,
    empty_dirs,
    scan_folder,
    sha1_bytes,
    sha1_file,
)
from dfota.state.store import DigestCache


def make_tree(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    (root / "bin/busybox").write_bytes(b"\x7fELF")
    (root / "bin/busybox").chmod(0o755)
    (root / "bin/sh").symlink_to("busybox")
    (root / "etc").mkdir()
    (root / "etc/mtab").symlink_to("/proc/self/mounts")
    (root / "etc/passwd_link").symlink_to("/etc/passwd")
    (root / "var").mkdir()
    (root / "var/run").symlink_to("/run/does-not-exist")
    (root / "empty").mkdir()
    (root / "firmware").mkdir()
    (root / "firmware/stale.mbn").write_bytes(b"old")
    return root


def test_entries_describe_the_folder_without_following_links(tmp_path: Path) -> None:
    scan = scan_folder(make_tree(tmp_path / "r"))
    e = scan.entries
    assert e["bin/busybox"].kind == FILE and e["bin/busybox"].mode == 0o755
    assert e["bin/busybox"].sha1 == sha1_bytes(b"\x7fELF")
    assert e["bin/sh"].kind == SYMLINK and e["bin/sh"].link == "busybox"
    assert e["etc/passwd_link"].link == "/etc/passwd" and e["etc/passwd_link"].sha1 == ""
    assert e["var/run"].kind == SYMLINK
    assert e["empty"].kind == DIR
    assert scan.empty_dirs == ("empty",)
    assert list(e) == sorted(e)


def test_hashing_reports_one_step_per_regular_file(tmp_path: Path) -> None:
    out = io.StringIO()
    scan_folder(make_tree(tmp_path / "r"), meter=RunLog(None, "test", out))
    assert out.getvalue().splitlines()[0] == "hashing r: 2 to do"  # busybox, stale.mbn
    assert out.getvalue().splitlines()[1].startswith("hashing r: 2 done in ")


def test_top_level_folders_can_be_left_out(tmp_path: Path) -> None:
    scan = scan_folder(make_tree(tmp_path / "r"), skip_top=("firmware",))
    assert not any(p.startswith("firmware") for p in scan.entries)


def test_build_user_becomes_root_other_owners_stay(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "r")
    me = os.getuid(), os.getgid()
    scan = scan_folder(root, build_owner=me)
    assert {(e.uid, e.gid) for e in scan.entries.values()} == {(0, 0)}
    stranger = (me[0] + 4242, me[1] + 4242)
    kept = scan_folder(root, build_owner=stranger)
    assert {(e.uid, e.gid) for e in kept.entries.values()} == {me}


def test_special_files_are_left_out_with_a_warning(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "r")
    os.mkfifo(root / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(root / "sock"))
        scan = scan_folder(root)
    assert "fifo" not in scan.entries and "sock" not in scan.entries
    assert any("fifo: FIFO cannot be packed" in w for w in scan.warnings)
    assert any("sock: socket cannot be packed" in w for w in scan.warnings)


def test_a_name_that_is_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "r")
    with open(os.fsencode(root) + b"/bad\xffname", "wb"):
        pass
    with pytest.raises(DfotaError, match=r"bad\\xffname: file name is not valid UTF-8"):
        scan_folder(root)


def test_digest_changes_with_content_mode_and_link_target(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "r")
    seen = {digest_tree(scan_folder(root).entries)}
    (root / "bin/busybox").write_bytes(b"\x7fELF2")
    seen.add(digest_tree(scan_folder(root).entries))
    (root / "bin/busybox").chmod(0o700)
    seen.add(digest_tree(scan_folder(root).entries))
    (root / "bin/sh").unlink()
    (root / "bin/sh").symlink_to("/bin/busybox")
    seen.add(digest_tree(scan_folder(root).entries))
    assert len(seen) == 4


def test_rootfs_that_is_a_link_is_read_through_its_top(tmp_path: Path) -> None:
    real = make_tree(tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    assert scan_folder(tmp_path / "link").entries == scan_folder(real).entries


def test_hash_cache_serves_unchanged_files_and_sees_changes(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "r")
    cache_file = tmp_path / "cache.json"
    cache = DigestCache(cache_file, racy_ns=0)
    first = scan_rootfs(root, cache)
    cache.save()
    # a forged cache entry proves the cache is used while the stat stamp matches
    text = cache_file.read_text().replace(first.entries["bin/busybox"].sha1, "f" * 40)
    cache_file.write_text(text)
    assert scan_rootfs(root, DigestCache(cache_file, racy_ns=0)).entries["bin/busybox"].sha1 == (
        "f" * 40)
    (root / "bin/busybox").write_bytes(b"changed")
    assert scan_rootfs(root, DigestCache(cache_file)).entries["bin/busybox"].sha1 == sha1_bytes(
        b"changed")


def test_the_hash_cache_vouches_for_what_it_hashed_unless_racy_or_changed(tmp_path: Path
                                                                         ) -> None:
    path = make_tree(tmp_path / "r") / "bin/busybox"
    racy = DigestCache(None)  # the file was written just now
    assert not racy.vouches(path, path.stat(), "sha1",
                            racy.digest(path, path.stat(), "sha1", lambda: sha1_file(path)))
    cache = DigestCache(None, racy_ns=0)
    sha1 = cache.digest(path, path.stat(), "sha1", lambda: sha1_file(path))
    assert cache.vouches(path, path.stat(), "sha1", sha1)
    assert not cache.vouches(path, path.stat(), "sha1", "f" * 40)
    path.write_bytes(b"changed")
    assert not cache.vouches(path, path.stat(), "sha1", sha1)


def test_empty_dirs_of_a_mapping() -> None:
    scan = {"a": None, "a/b": None, "c": None}
    from dfota.core.tree import Entry

    entries = {p: Entry(p, DIR, 0o755) for p in scan}
    assert empty_dirs(entries) == ["a/b", "c"]


def test_entry_json_holds_every_field(tmp_path: Path) -> None:
    for entry in scan_folder(make_tree(tmp_path / "r")).entries.values():
        assert entry.to_json() == dataclasses.asdict(entry)
        assert Entry.from_json(entry.to_json()) == entry
