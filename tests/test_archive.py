"""The version archive: never overwritten, never partial, index agrees with its folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from dfota.build import archive as archive_module
from dfota.build.archive import Archive, sha256_file
from dfota.core.errors import DfotaError
from dfota.state.store import DigestCache, State


def zip_file(tmp: Path, name: str, data: bytes) -> Path:
    path = tmp / name
    path.write_bytes(data)
    return path


def manifest(time: str) -> dict[str, object]:
    return {"version": {"package_time": time}, "origin": "test", "source": None}


def test_add_then_same_content_is_a_noop_and_other_content_is_refused(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    first = zip_file(tmp_path, "a.zip", b"one")
    added = archive.add("R1@20220101T0000", first, manifest("2022-01-01,00:00"))
    assert added.zip_path.read_bytes() == b"one"
    assert added.sha256 == sha256_file(first)
    assert os.stat(added.zip_path).st_mode & 0o222 == 0  # archived files are read-only
    assert archive.admit("R1@20220101T0000", sha256_file(first)) is False
    other = zip_file(tmp_path, "b.zip", b"two")
    with pytest.raises(DfotaError, match="already archived with other content; bump"):
        archive.add("R1@20220101T0000", other, manifest("2022-01-01,00:00"))
    assert added.zip_path.read_bytes() == b"one"


def test_a_users_file_is_copied_a_temporary_is_linked_a_wrong_sha256_is_refused(
        tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    users = zip_file(tmp_path, "users.zip", b"user's")
    copied = archive.add("U@20220101T0000", users, manifest("2022-01-01,00:00"),
                         sha256=sha256_file(users))
    assert not os.path.samefile(copied.zip_path, users)  # the user may change theirs later
    ours = zip_file(tmp_path, "staged.zip", b"built")
    linked = archive.add("T@20220201T0000", ours, manifest("2022-02-01,00:00"),
                         sha256=sha256_file(ours), take=True)
    assert os.path.samefile(linked.zip_path, ours) and linked.sha256 == sha256_file(ours)
    changed = zip_file(tmp_path, "changed.zip", b"changed meanwhile")
    with pytest.raises(DfotaError, match=r"changed\.zip: changed while it was being archived"):
        archive.add("C@20220301T0000", changed, manifest("2022-03-01,00:00"),
                    sha256=sha256_file(users))
    assert [v.key for v in archive.versions()] == ["U@20220101T0000", "T@20220201T0000"]
    assert not [p for p in archive.root.iterdir() if p.name.startswith(".")]


def test_an_archived_zip_is_hashed_again_only_when_its_inode_size_or_times_changed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = State(tmp_path / "state", "tool", racy_ns=0)  # the files here are seconds old
    archive = Archive(tmp_path / "archive", state.digests)
    ours = zip_file(tmp_path, "staged.zip", b"built")
    added = archive.add("T@20220201T0000", ours,
                        {**manifest("2022-02-01,00:00"), "origin": "targetfiles"},
                        sha256=sha256_file(ours), take=True)
    hashed: list[Path] = []
    real = archive_module.sha256_file

    def hashing(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(archive_module, "sha256_file", hashing)
    archive.check_intact(added)
    assert hashed == []
    assert archive.built_here(added.key, ours) and hashed == [ours]  # another name: hashed
    assert archive.built_here(added.key, ours) and hashed == [ours]  # once
    hashed.clear()
    before = added.zip_path.stat()
    os.chmod(added.zip_path, 0o644)  # altered, its modification time put back
    added.zip_path.write_bytes(b"tampered")
    os.utime(added.zip_path, ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(DfotaError, match="the archive was altered"):
        archive.check_intact(added)
    assert hashed == [added.zip_path]
    copy = tmp_path / "out.zip"  # a copy noted as such is trusted while it stays as it is
    copy.write_bytes(ours.read_bytes())
    archive.note_copy(copy, added.sha256)
    assert archive.built_here(added.key, copy) and hashed == [added.zip_path]
    with copy.open("r+b") as f:
        f.write(b"X")
    assert not archive.built_here(added.key, copy) and hashed[-1] == copy
    state.close()
    (tmp_path / "state/digests.json").write_text("{not json")  # a damaged record
    hashed.clear()
    archive = Archive(tmp_path / "archive", State(tmp_path / "state", "tool", 0).digests)
    with pytest.raises(DfotaError, match="the archive was altered"):
        archive.check_intact(added)
    assert hashed == [added.zip_path]


def test_versions_are_ordered_by_package_time_and_found_by_prefix(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    archive.add("B@20220301T0000", zip_file(tmp_path, "b", b"b"), manifest("2022-03-01,00:00"))
    archive.add("A@20220101T0000", zip_file(tmp_path, "a", b"a"), manifest("2022-01-01,00:00"))
    archive.add("AB@20220201T0000", zip_file(tmp_path, "c", b"c"), manifest("2022-02-01,00:00"))
    assert [v.key for v in archive.versions()] == [
        "A@20220101T0000", "AB@20220201T0000", "B@20220301T0000"]
    assert archive.find("B").key == "B@20220301T0000"
    assert archive.find("A@").key == "A@20220101T0000"
    with pytest.raises(DfotaError, match="matches several"):
        archive.find("A")
    with pytest.raises(DfotaError, match="no archived version matches 'Z'"):
        archive.find("Z")
    index = json.loads((tmp_path / "archive/index.json").read_text())
    assert [v["key"] for v in index["versions"]] == [v.key for v in archive.versions()]


def test_an_altered_archived_zip_is_noticed(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    added = archive.add("A@20220101T0000", zip_file(tmp_path, "a", b"a"),
                        manifest("2022-01-01,00:00"))
    archive.check_intact(added)
    os.chmod(added.zip_path, 0o644)
    added.zip_path.write_bytes(b"tampered")
    with pytest.raises(DfotaError, match="the archive was altered"):
        archive.check_intact(added)


def test_leftover_staging_from_a_killed_run_is_ignored_and_cleaned(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    staging = tmp_path / "archive/.staging-A@20220101T0000.x1"
    staging.mkdir(parents=True)
    (staging / "targetfiles.zip").write_bytes(b"half")
    assert archive.versions() == []
    archive.clean_staging()
    assert not staging.exists()


def test_resolve_takes_a_zip_path_or_an_intact_archived_version(tmp_path: Path) -> None:
    archive = Archive(tmp_path / "archive")
    added = archive.add("R1@20220101T0000", zip_file(tmp_path, "a.zip", b"one"),
                        manifest("2022-01-01,00:00"))
    assert archive.resolve("R1", "base") == added.zip_path
    assert archive.resolve(str(tmp_path / "a.zip"), "base") == tmp_path / "a.zip"
    with pytest.raises(DfotaError, match=r"gone\.zip: source targetfiles\.zip not found"):
        archive.resolve(str(tmp_path / "gone.zip"), "source")
    with pytest.raises(DfotaError, match="no archived version matches 'R2'"):
        archive.resolve("R2", "base")
    added.zip_path.chmod(0o644)
    added.zip_path.write_bytes(b"two")
    with pytest.raises(DfotaError, match="the archive was altered"):
        archive.resolve("R1", "base")


def test_a_file_the_record_vouches_for_is_copied_without_hashing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    digests = DigestCache(tmp_path / "state/digests.json", racy_ns=0)
    archive = Archive(tmp_path / "archive", digests)
    hashing: list[Path] = []
    real = archive_module._copy_hashing

    def copy_hashing(src: Path, dest: Path) -> str:
        hashing.append(src)
        return real(src, dest)

    monkeypatch.setattr(archive_module, "_copy_hashing", copy_hashing)
    users = zip_file(tmp_path, "users.zip", b"user's")
    sha256 = archive.sha256_of(users)  # now in the record
    added = archive.add("U@20220101T0000", users, manifest("2022-01-01,00:00"), sha256=sha256)
    assert hashing == [] and added.sha256 == sha256
    assert added.zip_path.read_bytes() == users.read_bytes()
    assert not os.path.samefile(added.zip_path, users)
    archive.check_intact(added)
    other = zip_file(tmp_path, "other.zip", b"other")  # not in the record: hashed as copied
    archive.add("O@20220201T0000", other, manifest("2022-02-01,00:00"),
                sha256=sha256_file(other))
    assert hashing == [other]
    racy = zip_file(tmp_path, "racy.zip", b"just written")
    digests.racy_ns = 60_000_000_000
    archive.sha256_of(racy)  # written this minute: not recorded
    digests.racy_ns = 0
    archive.add("R@20220301T0000", racy, manifest("2022-03-01,00:00"),
                sha256=sha256_file(racy))
    assert hashing == [other, racy]
    old = sha256_file(users)  # rewritten since recorded: the record no longer vouches
    users.write_bytes(users.read_bytes() + b"more")
    with pytest.raises(DfotaError, match=r"users\.zip: changed while it was being archived"):
        archive.add("V@20220401T0000", users, manifest("2022-04-01,00:00"), sha256=old)


def test_a_batch_puts_its_versions_in_place_together_or_refuses(tmp_path: Path) -> None:
    """Fed: a batch staging two versions; once with nothing in the way, once with another
    run archiving the second key with other bytes between the staging and the commit.
    Outcome wanted: nothing visible before the commit, both after; the conflict refused with
    its line, the first version (already renamed) indexed, no staging folder left."""
    archive = Archive(tmp_path / "archive")
    a, b = zip_file(tmp_path, "a", b"a"), zip_file(tmp_path, "b", b"b")
    with archive.batch() as batch:
        batch.stage("A@20220101T0000", a, manifest("2022-01-01,00:00"))
        batch.stage("B@20220201T0000", b, manifest("2022-02-01,00:00"))
        assert archive.versions() == []
        assert [v.key for v in batch.commit()] == ["A@20220101T0000", "B@20220201T0000"]
    index = json.loads((tmp_path / "archive/index.json").read_text())
    assert [v["key"] for v in index["versions"]] == ["A@20220101T0000", "B@20220201T0000"]
    with archive.batch() as batch:
        batch.stage("C@20220301T0000", a, manifest("2022-03-01,00:00"))
        batch.stage("D@20220401T0000", b, manifest("2022-04-01,00:00"))
        Archive(tmp_path / "archive").add("D@20220401T0000", zip_file(tmp_path, "d", b"d"),
                                          manifest("2022-04-01,00:00"))
        with pytest.raises(DfotaError, match=r"D@20220401T0000/targetfiles\.zip: version "
                           "D@20220401T0000 is already archived with other content"):
            batch.commit()
    index = json.loads((tmp_path / "archive/index.json").read_text())
    assert [v["key"] for v in index["versions"]] == [
        "A@20220101T0000", "B@20220201T0000", "C@20220301T0000", "D@20220401T0000"]
    got = archive.get("D@20220401T0000")
    assert got is not None and got.zip_path.read_bytes() == b"d"
    assert not [p for p in archive.root.iterdir() if p.name.startswith(".")]
