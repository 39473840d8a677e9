"""The state a workspace keeps between runs (dfota.state.store): digests by stat, keyed records of
one tool version, the patch cache, and the records of the tool before them."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dfota.build.sdk_image import RECORD as IMAGE_RECORD
from dfota.package.ahead import MEMBER_SHA1S
from dfota.proof.debian_checks import BSPATCH_RECORD
from dfota.state.store import (
    DIGESTS_NAME,
    LEGACY_DIGESTS,
    LEGACY_RECORDS,
    BlobCache,
    DigestCache,
    Records,
    State,
    file_stamp,
)
from tests.workspace import Workspace


def _settled_file(path: Path, data: bytes) -> Path:
    """A file whose times lie a minute back: not racy for a cache opened now."""
    path.write_bytes(data)
    old = time.time_ns() - 60_000_000_000
    os.utime(path, ns=(old, old))
    return path


def _counting(calls: list[str], digest: str) -> Callable[[], str]:
    """A hashing that says `digest` and notes that it ran."""
    def compute() -> str:
        calls.append(digest)
        return digest

    return compute


def test_the_digest_cache_serves_an_unchanged_stat_and_hashes_a_changed_one(tmp_path: Path
                                                                           ) -> None:
    path = _settled_file(tmp_path / "a.bin", b"one")
    cache = DigestCache(tmp_path / "digests.json", racy_ns=0)
    calls: list[str] = []
    assert cache.digest(path, path.stat(), "sha1", _counting(calls, "f" * 40)) == "f" * 40
    cache.save()
    again = DigestCache(tmp_path / "digests.json", racy_ns=0)  # a later run
    assert again.digest(path, path.stat(), "sha1", _counting(calls, "0" * 40)) == "f" * 40
    assert calls == ["f" * 40] and again.cached(path, path.stat())
    path.write_bytes(b"two")  # the size and times move: hashed again
    assert again.digest(path, path.stat(), "sha1", _counting(calls, "1" * 40)) == "1" * 40
    assert calls == ["f" * 40, "1" * 40]
    os.chmod(path, 0o600)  # only the change time moves
    assert not again.cached(path, path.stat())


def test_another_algorithm_is_kept_apart_in_the_same_file(tmp_path: Path) -> None:
    path = _settled_file(tmp_path / "a.zip", b"zip bytes")
    cache = DigestCache(tmp_path / "digests.json", racy_ns=0)
    sha256 = cache.file_digest(path, "sha256")
    assert sha256 == hashlib.sha256(b"zip bytes").hexdigest()
    assert cache.known(path, path.stat(), "sha1") is None  # a sha256 never answers for a sha1
    assert cache.file_digest(path, "sha1") == hashlib.sha1(b"zip bytes").hexdigest()
    cache.save()
    saved = json.loads((tmp_path / "digests.json").read_text())["files"][str(path)]
    assert saved == [*file_stamp(path.stat()), {"sha1": hashlib.sha1(b"zip bytes").hexdigest(),
                                                 "sha256": sha256}]


def test_a_file_written_just_now_is_hashed_but_not_kept(tmp_path: Path) -> None:
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"fresh")
    cache = DigestCache(tmp_path / "digests.json")  # the tool's 2 s window
    calls: list[str] = []
    cache.digest(path, path.stat(), "sha1", _counting(calls, "a" * 40))
    cache.file_digest(path, "sha256")
    assert not cache.cached(path, path.stat()) and cache.known(path, path.stat(), "sha256") is None
    cache.save()
    assert not (tmp_path / "digests.json").exists()  # nothing learned, nothing written


def test_saving_keeps_what_another_process_wrote_and_drops_what_changed(tmp_path: Path) -> None:
    one, two = _settled_file(tmp_path / "one", b"1"), _settled_file(tmp_path / "two", b"2")
    gone = _settled_file(tmp_path / "gone", b"3")
    first, second = (DigestCache(tmp_path / "digests.json", racy_ns=0) for _ in range(2))
    first.file_digest(one, "sha256")
    first.file_digest(gone, "sha256")
    first.save()
    gone.unlink()
    second.file_digest(two, "sha256")  # opened before `first` saved
    second.save()
    files = json.loads((tmp_path / "digests.json").read_text())["files"]
    assert sorted(files) == [str(one), str(two)]


def test_a_damaged_digest_file_is_rebuilt_without_a_word(tmp_path: Path) -> None:
    path = _settled_file(tmp_path / "a.bin", b"bytes")
    stamp = file_stamp(path.stat())
    for damage in ("{not json", json.dumps({"format": 1, "files": {str(path): [1, 2]}}), "[]",
                   json.dumps({"format": 99, "files": {str(path): [*stamp, {"sha1": "f"}]}})):
        (tmp_path / "digests.json").write_text(damage)
        cache = DigestCache(tmp_path / "digests.json", racy_ns=0)
        assert not cache.cached(path, path.stat())
        assert cache.file_digest(path, "sha1") == hashlib.sha1(b"bytes").hexdigest()
        cache.save()
        assert DigestCache(tmp_path / "digests.json").cached(path, path.stat())


def test_a_record_of_another_tool_version_is_rebuilt_not_read(tmp_path: Path) -> None:
    records = Records(tmp_path / "records", "tool-1")
    records.put("tree", "key A", {"entries": [1, 2]})
    assert records.holds("tree", "key A") and records.get("tree", "key A") == {"entries": [1, 2]}
    assert records.get("tree", "key B") is None and not records.holds("tree", "key B")
    newer = Records(tmp_path / "records", "tool-2")
    assert newer.get("tree", "key A") is None and not newer.holds("tree", "key A")
    newer.put("tree", "key A", ["rebuilt"])
    assert newer.get("tree", "key A") == ["rebuilt"] and records.get("tree", "key A") is None
    # a name is its own record: the same key under another name is not this one
    assert newer.get("other", "key A") is None


def test_a_record_alone_replaces_the_other_keys_of_its_name(tmp_path: Path) -> None:
    records = Records(tmp_path / "records", "tool")
    records.put("kept", "a", 1)
    records.put("kept", "b", 2)
    records.put("alone", "a", 1)
    records.put("alone", "b", 2, alone=True)
    assert (records.get("kept", "a"), records.get("kept", "b")) == (1, 2)
    assert (records.get("alone", "a"), records.get("alone", "b")) == (None, 2)
    assert [p.name for p in (tmp_path / "records/alone").iterdir()] == [
        records.path("alone", "b").name]


def test_a_record_put_if_changed_is_written_only_when_it_changed(tmp_path: Path) -> None:
    records = Records(tmp_path / "records", "tool")
    records.put("scan", "key", {"entries": [1, 2]})
    path = records.path("scan", "key")
    written = file_stamp(path.stat())
    records.put("scan", "key", {"entries": [1, 2]}, if_changed=True)
    assert file_stamp(path.stat()) == written
    records.put("scan", "key", {"entries": [1, 3]}, if_changed=True)
    assert file_stamp(path.stat()) != written and records.get("scan", "key") == {"entries": [1, 3]}
    path.write_text("{damaged")
    records.put("scan", "key", {"entries": [1, 3]}, if_changed=True)
    assert records.get("scan", "key") == {"entries": [1, 3]}


def test_a_corrupt_record_is_rebuilt_with_no_traceback(tmp_path: Path) -> None:
    records = Records(tmp_path / "records", "tool")
    records.put("tree", "key", [1, 2, 3])
    path = records.path("tree", "key")
    text = path.read_text()
    for damage in (text[: len(text) // 2], "", "[1, 2]", text.replace('"key"', '"other"', 1),
                   "\xff\xfe binary"):
        path.write_text(damage)
        assert records.get("tree", "key") is None
    records.put("tree", "key", [4])
    assert records.get("tree", "key") == [4]


def test_the_patch_cache_keeps_blobs_by_name(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "patch-cache")
    cache.prepare()
    scratch = cache.scratch()
    assert scratch.parent == cache.folder and scratch.name.startswith(f".run-{os.getpid()}-")
    made = scratch / "0.p"
    made.write_bytes(b"BSDIFF40 patch")
    assert cache.read_bytes("a-b-engine.p") is None
    assert cache.put("a-b-engine.p", made) == cache.path("a-b-engine.p")
    assert BlobCache(cache.folder).read_bytes("a-b-engine.p") == b"BSDIFF40 patch"
    cache.drop("a-b-engine.p")
    assert cache.read_bytes("a-b-engine.p") is None
    # the scratch folder of a process that is gone is removed; this process's is not
    child = subprocess.Popen(["true"])
    child.wait()
    leftover = cache.folder / f".run-{child.pid}-x"
    leftover.mkdir()
    cache.prepare()
    assert not leftover.exists() and scratch.exists()


def _legacy_state(state: Path, file: Path, sha1: str, zip_path: Path, sha256: str) -> None:
    """A state folder as the tool before dfota.state.store wrote it."""
    state.mkdir(parents=True, exist_ok=True)
    (state / "hash-cache.json").write_text(json.dumps(
        {"files": {str(file): [*file_stamp(file.stat()), sha1]}}, sort_keys=True))
    (state / "archive-sha256.json").write_text(json.dumps(
        {str(zip_path): [*file_stamp(zip_path.stat()), sha256]}, indent=0, sort_keys=True))
    (state / "member-sha1s").mkdir()
    (state / "member-sha1s" / f"{sha256}.json").write_text(json.dumps({"a.txt": "0" * 40}))
    (state / "bspatch-proven.json").write_text(json.dumps({"bspatch": "1" * 40,
                                                           "checked": ["x-y-z"]}))
    (state / "sdk-image-tree.json").write_text(json.dumps({"key": "k", "entries": []}))


def test_a_state_folder_of_the_tool_before_is_taken_over_never_misread(tmp_path: Path
                                                                       ) -> None:
    file = _settled_file(tmp_path / "busybox", b"busybox")
    zip_path = _settled_file(tmp_path / "source.zip", b"zip")
    state_dir = tmp_path / "state"
    # digests the old caches hold are served as they are (forged: they prove it)
    _legacy_state(state_dir, file, "f" * 40, zip_path, "e" * 64)
    with State(state_dir, "tool", racy_ns=0) as state:
        assert state.digests.known(file, file.stat(), "sha1") == "f" * 40
        assert state.digests.file_digest(zip_path, "sha256") == "e" * 64
        # the old records say no tool version: none is taken
        assert state.records.get(MEMBER_SHA1S, "e" * 64) is None
        assert state.records.get(BSPATCH_RECORD, "1" * 40) is None
        assert state.records.get(IMAGE_RECORD, "k") is None
    assert sorted(p.name for p in state_dir.iterdir()) == [DIGESTS_NAME]
    with State(state_dir, "tool") as state:  # once taken over, from the new file
        assert state.digests.known(file, file.stat(), "sha1") == "f" * 40
        assert state.digests.known(zip_path, zip_path.stat(), "sha256") == "e" * 64
    # an old entry whose file changed since is not served; a damaged old file gives nothing
    (state_dir / DIGESTS_NAME).unlink()
    _legacy_state(state_dir, file, "f" * 40, zip_path, "e" * 64)
    (state_dir / "archive-sha256.json").write_text("{damaged")
    file.write_bytes(b"busybox 2")
    with State(state_dir, "tool") as state:
        assert state.digests.known(file, file.stat(), "sha1") is None
        assert state.digests.file_digest(zip_path, "sha256") == hashlib.sha256(b"zip").hexdigest()
    assert not any((state_dir / name).exists() for name in LEGACY_RECORDS)


@pytest.mark.slow
def test_a_workspace_of_the_tool_before_builds_on_and_stays_up_to_date(ws: Workspace) -> None:
    """A workspace whose state the tool before dfota.state.store wrote: the next run is up to date
    (the old caches taken over), the old records are removed unread (a forged one would make
    a wrong package), and the chain goes on to a proven package."""
    time.sleep(2.1)  # a file changed within 2 s of a scan is never kept (it may change unseen)
    ws.build()
    state = ws.root / "state"
    digests = json.loads((state / DIGESTS_NAME).read_text())["files"]
    (state / DIGESTS_NAME).unlink()
    for name in ("records", "patch-cache"):
        shutil.rmtree(state / name, ignore_errors=True)
    (state / "hash-cache.json").write_text(json.dumps({"files": {
        p: [*e[:4], e[4]["sha1"]] for p, e in digests.items() if "sha1" in e[4]}}))
    (state / "archive-sha256.json").write_text(json.dumps({
        p: [*e[:4], e[4]["sha256"]] for p, e in digests.items() if "sha256" in e[4]}))
    sha256 = hashlib.sha256(ws.source.read_bytes()).hexdigest()
    with zipfile.ZipFile(ws.source) as src:  # sha1s that are all wrong
        forged = {name: "0" * 40 for name in src.namelist()}
    (state / "member-sha1s").mkdir()
    (state / "member-sha1s" / f"{sha256}.json").write_text(json.dumps(forged))
    (state / "sdk-image-tree.json").write_text("{damaged")
    again = ws.build()
    assert "up to date: nothing changed" in again.stdout, again.stdout
    assert not any((state / name).exists()
                   for name in (*(n for n, _ in LEGACY_DIGESTS), *LEGACY_RECORDS))
    kept = json.loads((state / DIGESTS_NAME).read_text())["files"]
    def sha1s(files: dict[str, list[Any]]) -> dict[str, str]:
        return {p: e[4]["sha1"] for p, e in files.items() if "sha1" in e[4]}

    assert len(sha1s(kept)) > 50 and sha1s(kept) == sha1s(digests)  # taken over, none lost
    chain = ws.run("targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source),
                   *ws.folders, "delta", *ws.folders, "verify", *ws.folders)
    assert chain.returncode == 0, chain.stdout + chain.stderr
    assert "is published" in chain.stdout
    summary = json.loads((ws.out / "update.json").read_text())
    assert summary["changed"] and summary["verify"]["ok"]
