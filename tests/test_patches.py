"""The patch engine: bsdiff4 in worker processes, rules, cache, fallbacks; patches checked with
Debian's bspatch."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import lzma
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import bsdiff4
import pytest

from dfota.core.errors import DfotaError
from dfota.core.tree import FILE
from dfota.formats.zipio import bytes_item, write_zip
from dfota.package.blobs import Blob
from dfota.package.bsdiff import (
    MAGIC,
    applier_tag,
    apply_patch_bytes,
    bsdiff40,
    compressed_kind,
    engine_tag,
)
from dfota.package.patches import (
    PROVEN_RECORD,
    DiffOptions,
    PatchJob,
    PatchOutcome,
    PatchRun,
    make_patches,
)
from dfota.state.store import BlobCache, Records
from dfota.tools.bench.pair import bench_boot_image, bench_rootfs_pair
from dfota.tools.bench.plan import bench_plan

# --- engines injected into the workers (module level: they must be importable by name) ----

def _failing_engine(source: bytes, target: bytes) -> bytes:
    if target.startswith(b"FAIL"):
        raise RuntimeError("injected failure")
    if target.startswith(b"EXIT"):
        os._exit(7)
    if target.startswith(b"KILL"):
        os.kill(os.getpid(), 9)
    if target.startswith(b"HOG"):
        return bytes(8 << 30)  # far beyond the estimate: the worker's address space is capped
    return bsdiff4.diff(source, target)


def _slow_engine(source: bytes, target: bytes) -> bytes:
    if source.startswith(b"SLOW "):
        Path(source[5:source.index(b"\n")].decode()).write_text(str(os.getpid()))
        time.sleep(60)
    return bsdiff4.diff(source, target)


def _pid_engine(source: bytes, target: bytes) -> bytes:
    folder = Path(source[:source.index(b"\n")].decode())
    (folder / f"{os.getpid()}-{sha1(target)}").touch()
    return bsdiff4.diff(source, target)


def _wrong_engine(source: bytes, target: bytes) -> bytes:
    return bsdiff4.diff(source, target + b"!")


# --- helpers -------------------------------------------------------------------------------

def binary(seed: int, size: int) -> bytes:
    """Bytes shaped like a program: a header, code-like noise, tables, zero padding."""
    rnd = random.Random(seed)
    parts = [b"\x7fELF\x01\x01\x01" + bytes(9)]
    while sum(map(len, parts)) < size:
        kind = rnd.randrange(3)
        if kind == 0:
            parts.append(rnd.randbytes(rnd.randrange(200, 2000)))
        elif kind == 1:
            parts.append(b"".join(rnd.randrange(1 << 16).to_bytes(4, "little")
                                  for _ in range(rnd.randrange(20, 200))))
        else:
            parts.append(bytes(rnd.randrange(16, 512)))
    return b"".join(parts)[:size]


def edited(data: bytes, seed: int) -> bytes:
    """A few small changes and an insertion, as a rebuild with a small code change gives."""
    rnd = random.Random(seed)
    out = bytearray(data)
    for _ in range(5):
        at = rnd.randrange(len(out) - 8)
        out[at:at + 8] = rnd.randbytes(8)
    at = len(out) // 3
    out[at:at] = rnd.randbytes(100)
    return bytes(out)


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def file_blob(path: Path, data: bytes) -> Blob:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return Blob.on_disk(path, sha1(data), len(data))


class Pair:
    """Source and target zips (as in targetfiles.zip) with jobs between their members."""

    def __init__(self, tmp: Path, files: dict[str, tuple[bytes, bytes]]) -> None:
        self.files = files
        self.source_zip = tmp / "source.zip"
        self.target_zip = tmp / "target.zip"
        write_zip(self.source_zip, [bytes_item(f"SYSTEM/{n}", s) for n, (s, _t) in files.items()])
        write_zip(self.target_zip, [bytes_item(f"SYSTEM/{n}", t) for n, (_s, t) in files.items()],
                  compress=True)

    def job(self, name: str) -> PatchJob:
        source, target = self.files[name]
        return PatchJob(f"system/{name}",
                        Blob.in_zip(self.source_zip, f"SYSTEM/{name}", sha1(source), len(source)),
                        Blob.in_zip(self.target_zip, f"SYSTEM/{name}", sha1(target), len(target)))

    def jobs(self) -> list[PatchJob]:
        return [self.job(name) for name in self.files]


def bspatch(tmp: Path, source: bytes, patch_file: Path) -> bytes:
    """Debian's bspatch, the classic tool; the device's applier reads the same format."""
    old, new = tmp / "bspatch.old", tmp / "bspatch.new"
    old.write_bytes(source)
    new.unlink(missing_ok=True)
    subprocess.run(["bspatch", str(old), str(new), str(patch_file)], check=True,
                   capture_output=True)
    return new.read_bytes()


def assert_patched(outcome: PatchOutcome, source: bytes, target: bytes, tmp: Path) -> bytes:
    assert outcome.whole_reason == ""
    assert outcome.patch is not None
    patch = outcome.patch.read_bytes()
    assert patch.startswith(MAGIC)
    assert outcome.patch_size == len(patch)
    assert bspatch(tmp, source, outcome.patch) == target
    return patch


def diff_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("diff ")]


def cache_files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir())


# --- tests ---------------------------------------------------------------------------------

def test_small_edit_gives_small_patch_that_bspatch_applies(tmp_path: Path) -> None:
    source = binary(1, 300_000)
    target = edited(source, 2)
    pair = Pair(tmp_path, {"usr/bin/foo": (source, target)})
    lines: list[str] = []
    out = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache"), progress=lines.append)
    outcome = out["system/usr/bin/foo"]
    patch = assert_patched(outcome, source, target, tmp_path)
    assert len(patch) < len(target) // 50
    assert not outcome.cached and not outcome.is_fallback
    assert outcome.patch == tmp_path / "cache" / f"{sha1(source)}-{sha1(target)}-{engine_tag()}.p"
    assert apply_patch_bytes(source, patch) == target
    assert diff_lines(lines) == [
        f"diff 1/1: system/usr/bin/foo (293.1 KB) -> {len(patch)} B"]  # 300,100 bytes
    assert cache_files(tmp_path / "cache") == [outcome.patch.name]  # no scratch left


def test_blobs_on_disk_and_in_zips_mix(tmp_path: Path) -> None:
    a_src, a_tgt = binary(3, 50_000), binary(3, 60_000)
    b_src = binary(4, 40_000)
    b_tgt = edited(b_src, 5)
    pair = Pair(tmp_path, {"lib/b.so": (b_src, b_tgt)})
    zipped = pair.job("lib/b.so")
    jobs = [
        PatchJob("system/a", file_blob(tmp_path / "old/a", a_src), file_blob(tmp_path / "new/a",
                                                                             a_tgt)),
        PatchJob("system/b1", zipped.source, file_blob(tmp_path / "new/b", b_tgt)),
        PatchJob("system/b2", file_blob(tmp_path / "old/b", b_src), zipped.target),
    ]
    out = make_patches(jobs, cache=BlobCache(tmp_path / "cache"), options=DiffOptions(workers=2))
    assert list(out) == ["system/a", "system/b1", "system/b2"]
    assert_patched(out["system/a"], a_src, a_tgt, tmp_path)
    assert_patched(out["system/b1"], b_src, b_tgt, tmp_path)
    assert out["system/b1"].patch == out["system/b2"].patch  # same pair, diffed once


def test_largest_target_first(tmp_path: Path) -> None:
    sizes = {"small": 20_000, "largest": 90_000, "middle": 50_000, "large": 70_000}
    files = {}
    for seed, (name, size) in enumerate(sizes.items()):
        source = binary(seed, size)
        files[name] = (source, edited(source, seed + 10))
    pair = Pair(tmp_path, files)
    lines: list[str] = []
    out = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache"),
                       options=DiffOptions(workers=1), progress=lines.append)
    order = [line.split(": ")[1].split(" ")[0] for line in diff_lines(lines)]
    assert order == ["system/largest", "system/large", "system/middle", "system/small"]
    assert [line.split(":")[0] for line in diff_lines(lines)] == [
        "diff 1/4", "diff 2/4", "diff 3/4", "diff 4/4"]
    for name, (source, target) in files.items():
        assert_patched(out[f"system/{name}"], source, target, tmp_path)


def test_patch_over_95_percent_ships_whole_and_is_remembered(tmp_path: Path) -> None:
    rnd = random.Random(7)
    source, target = rnd.randbytes(20_000), rnd.randbytes(20_000)
    pair = Pair(tmp_path, {"etc/blob": (source, target)})
    cache = tmp_path / "cache"
    lines: list[str] = []
    first = make_patches(pair.jobs(), cache=BlobCache(cache),
                         progress=lines.append)["system/etc/blob"]
    assert first.patch is None and not first.cached
    percent = int(first.whole_reason.removeprefix("patch is ").removesuffix("% of the file"))
    assert percent > 95
    assert first.patch_size * 100 > 95 * len(target)
    assert len(diff_lines(lines)) == 1
    assert not list(cache.glob("*.p"))
    lines.clear()
    again = make_patches(pair.jobs(), cache=BlobCache(cache),
                         progress=lines.append)["system/etc/blob"]
    assert again == PatchOutcome(first.name, None, first.whole_reason, first.patch_size, 0.0, True)
    assert diff_lines(lines) == []


def _zip_bytes(tmp: Path) -> bytes:
    write_zip(tmp / "inner.zip", [bytes_item("a.txt", b"hello " * 100)])
    return (tmp / "inner.zip").read_bytes()


@pytest.mark.parametrize("kind", ["gzip", "xz", "bzip2", "lzma", "zip", "zstd"])
def test_compressed_payload_ships_whole_without_diffing(tmp_path: Path, kind: str) -> None:
    text = binary(8, 30_000)
    packers: dict[str, Callable[[bytes], bytes]] = {
        "gzip": lambda d: gzip.compress(d, mtime=0),
        "xz": lzma.compress,
        "bzip2": bz2.compress,
        "lzma": lambda d: lzma.compress(d, format=lzma.FORMAT_ALONE),
        "zip": lambda d: _zip_bytes(tmp_path) + d,
        "zstd": lambda d: b"\x28\xb5\x2f\xfd" + d,  # the frame magic is what is looked at
    }
    pack = packers[kind]
    source, target = pack(text), pack(edited(text, 9))
    assert compressed_kind(target[:8]) == kind
    pair = Pair(tmp_path, {"lib/modules.img": (source, target)})
    lines: list[str] = []
    out = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache"), progress=lines.append)
    assert out["system/lib/modules.img"] == PatchOutcome(
        "system/lib/modules.img", None, f"compressed content ({kind})", 0, 0.0, False)
    assert diff_lines(lines) == []
    assert lines == ["patches: 1 files, 0 from the cache, 1 whole by rule, 0 to diff"]
    assert cache_files(tmp_path / "cache") == []


def test_plain_data_is_not_taken_for_compressed() -> None:
    assert compressed_kind(b"\x7fELF\x01\x01") == ""
    assert compressed_kind(b"BZh") == ""  # a bzip2 header names its block size
    assert compressed_kind(b"BZhx") == ""
    assert compressed_kind(b"#!/bin/sh\n") == ""


def test_tiny_file_and_memory_bound_ship_whole_without_diffing(tmp_path: Path) -> None:
    big_src = binary(11, 64 << 10)
    files = {"etc/hostname": (b"old-name\n", b"new-name\n"),
             "big": (big_src, edited(big_src, 12))}
    pair = Pair(tmp_path, files)
    lines: list[str] = []
    out = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache"),
                       options=DiffOptions(memory_limit=1 << 20), progress=lines.append)
    assert out["system/etc/hostname"].whole_reason == "file too small to patch (9 bytes)"
    # 17 x 64 KiB + 5 x (64 KiB + 100) is 1.38 MiB
    assert out["system/big"].whole_reason == "diff would need ~2 MB of memory (limit 1 MB)"
    assert diff_lines(lines) == []
    assert cache_files(tmp_path / "cache") == []


def test_cache_miss_then_hit(tmp_path: Path) -> None:
    files = {}
    for seed in range(3):
        source = binary(20 + seed, 40_000 + seed * 10_000)
        files[f"bin/t{seed}"] = (source, edited(source, 30 + seed))
    pair = Pair(tmp_path, files)
    cache = tmp_path / "cache"
    lines: list[str] = []
    first = make_patches(pair.jobs(), cache=BlobCache(cache), progress=lines.append)
    assert len(diff_lines(lines)) == 3
    assert not any(o.cached for o in first.values())
    stored = {p.name: p.read_bytes() for p in cache.iterdir()}
    lines.clear()
    second = make_patches(pair.jobs(), cache=BlobCache(cache), progress=lines.append)
    assert lines == ["patches: 3 files, 3 from the cache, 0 whole by rule, 0 to diff"]
    for name, (source, target) in files.items():
        outcome = second[f"system/{name}"]
        assert outcome.cached and outcome.seconds == 0.0
        assert outcome.patch == first[f"system/{name}"].patch
        assert_patched(outcome, source, target, tmp_path)
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == stored


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other content", "magic",
                                    "empty"])
def test_bad_cache_entry_is_ignored_and_rebuilt(tmp_path: Path, damage: str) -> None:
    source = binary(40, 80_000)
    target = edited(source, 41)
    pair = Pair(tmp_path, {"bin/app": (source, target)})
    cache = tmp_path / "cache"
    good = make_patches(pair.jobs(), cache=BlobCache(cache))["system/bin/app"]
    assert good.patch is not None
    reference = good.patch.read_bytes()
    bad = {
        "truncated": reference[: len(reference) // 2],
        "garbage": random.Random(42).randbytes(len(reference)),
        # a real BSDIFF40 patch that applies to this source but gives other bytes
        "other content": bsdiff4.diff(source, edited(source, 43)),
        # bsdiff4 itself only looks at "BSDIFF4"; the device wants the whole magic
        "magic": b"BSDIFF41" + reference[8:],
        "empty": b"",
    }[damage]
    good.patch.write_bytes(bad)
    lines: list[str] = []
    again = make_patches(pair.jobs(), cache=BlobCache(cache),
                         progress=lines.append)["system/bin/app"]
    assert not again.cached
    assert len(diff_lines(lines)) == 1
    assert assert_patched(again, source, target, tmp_path) == reference


def test_bad_too_big_marker_is_ignored(tmp_path: Path) -> None:
    source = binary(44, 30_000)
    target = edited(source, 45)
    pair = Pair(tmp_path, {"bin/x": (source, target)})
    cache = tmp_path / "cache"
    cache.mkdir()
    key = f"{sha1(source)}-{sha1(target)}-{engine_tag()}"
    (cache / f"{key}.big").write_text("patch-size 12\n")  # says too big, but 12 bytes is not
    out = make_patches(pair.jobs(), cache=BlobCache(cache))["system/bin/x"]
    assert not out.cached
    assert_patched(out, source, target, tmp_path)
    assert cache_files(cache) == [f"{key}.p"]


def proven_pair(tmp: Path, tool: str = "tool-a") -> tuple[Pair, Path, Records, bytes]:
    """A pair diffed once with records of `tool`: its patch checked and its proof kept."""
    source = binary(46, 60_000)
    pair = Pair(tmp, {"bin/app": (source, edited(source, 47))})
    records = Records(tmp / "records", tool)
    first = make_patches(pair.jobs(), cache=BlobCache(tmp / "cache", records))["system/bin/app"]
    assert first.patch is not None and not first.cached
    return pair, first.patch, records, first.patch.read_bytes()


def test_a_patch_checked_once_is_taken_by_the_proof_of_its_bytes(tmp_path: Path) -> None:
    pair, patch_file, records, patch = proven_pair(tmp_path)
    source, target = pair.files["bin/app"]
    assert records.get(PROVEN_RECORD, applier_tag()) == [
        f"{patch_file.name} {hashlib.sha256(patch).hexdigest()} {len(target)}"]
    # the source is gone: only the proof can tell the cached patch is right
    pair.source_zip.unlink()
    lines: list[str] = []
    again = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache", records),
                         progress=lines.append)["system/bin/app"]
    assert again.cached and lines == ["patches: 1 files, 1 from the cache, 0 whole by rule, "
                                      "0 to diff"]
    assert assert_patched(again, source, target, tmp_path) == patch
    # without the records, or with those of another version of the tool, it is checked
    for cache in (BlobCache(tmp_path / "cache"),
                  BlobCache(tmp_path / "cache", Records(tmp_path / "records", "tool-b"))):
        (tmp_path / "cache").mkdir(exist_ok=True)
        patch_file.write_bytes(patch)
        out = make_patches(pair.jobs(), cache=cache)["system/bin/app"]
        assert not out.cached and out.is_fallback  # checked, then diffed: the source is gone


def test_a_cached_patch_checked_again_keeps_its_proof(tmp_path: Path) -> None:
    source = binary(50, 60_000)
    pair = Pair(tmp_path, {"bin/app": (source, edited(source, 51))})
    first = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache"))["system/bin/app"]
    assert first.patch is not None  # made with no records: no proof kept
    records = Records(tmp_path / "records", "tool-a")
    assert records.get(PROVEN_RECORD, applier_tag()) is None
    again = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache", records))
    assert again["system/bin/app"].cached
    patch = first.patch.read_bytes()
    assert records.get(PROVEN_RECORD, applier_tag()) == [
        f"{first.patch.name} {hashlib.sha256(patch).hexdigest()} {len(pair.files['bin/app'][1])}"]


@pytest.mark.parametrize("damage", ["other content", "garbage"])
def test_a_proven_patch_whose_bytes_changed_is_checked_again(tmp_path: Path,
                                                            damage: str) -> None:
    pair, patch_file, records, patch = proven_pair(tmp_path)
    source, target = pair.files["bin/app"]
    patch_file.write_bytes(bsdiff4.diff(source, edited(source, 48)) if damage == "other content"
                           else random.Random(49).randbytes(len(patch)))
    lines: list[str] = []
    again = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache", records),
                         progress=lines.append)["system/bin/app"]
    assert not again.cached and len(diff_lines(lines)) == 1
    assert assert_patched(again, source, target, tmp_path) == patch


def test_failing_diffs_fall_back_to_whole_and_the_rest_goes_on(tmp_path: Path) -> None:
    base = binary(50, 30_000)
    files = {name: (base, name.encode() + edited(base, i))
             for i, name in enumerate(["FAIL", "EXIT", "KILL", "HOG", "good"])}
    pair = Pair(tmp_path, files)
    missing = PatchJob("system/missing",
                       Blob.in_zip(pair.source_zip, "SYSTEM/not-there", sha1(base), len(base)),
                       file_blob(tmp_path / "new/missing", edited(base, 99)))
    cache = tmp_path / "cache"
    out = make_patches([*pair.jobs(), missing], cache=BlobCache(cache),
                       options=DiffOptions(workers=2, engine=_failing_engine))
    assert out["system/FAIL"].whole_reason == "diff failed: RuntimeError: injected failure"
    assert out["system/EXIT"].whole_reason == (
        "diff failed: worker exited with code 7 without a result")
    assert out["system/KILL"].whole_reason == (
        "diff failed: worker killed by signal 9 (SIGKILL)")
    assert out["system/HOG"].whole_reason == "diff failed: out of memory"
    assert out["system/missing"].whole_reason == (
        f"diff failed: cannot read the source {pair.source_zip}:SYSTEM/not-there "
        "(There is no item named 'SYSTEM/not-there' in the archive)")
    for name in ("FAIL", "EXIT", "KILL", "HOG", "missing"):
        outcome = out[f"system/{name}"]
        assert outcome.patch is None and outcome.is_fallback
    good = out["system/good"]
    assert_patched(good, *files["good"], tmp_path)
    assert good.patch is not None
    assert cache_files(cache) == [good.patch.name]  # failures are not remembered


def test_small_pairs_share_a_worker_large_ones_get_their_own(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    head = str(calls).encode() + b"\n"
    files = {f"small{i}": (head + binary(i, 20_000), edited(head + binary(i, 20_000), 100 + i))
             for i in range(12)}
    files |= {f"large{i}": (head + binary(50 + i, 300_000),
                            edited(head + binary(50 + i, 300_000), 150 + i)) for i in range(2)}
    pair = Pair(tmp_path, files)
    out = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache"),
                       options=DiffOptions(workers=2, engine=_pid_engine))
    for name, (source, target) in files.items():
        assert_patched(out[f"system/{name}"], source, target, tmp_path)
    pids = {}
    for call in calls.iterdir():
        pid, target_sha1 = call.name.split("-")
        pids[target_sha1] = pid
    small = {pids[sha1(target)] for name, (_, target) in files.items() if name.startswith("s")}
    large = [pids[sha1(target)] for name, (_, target) in files.items() if name.startswith("l")]
    assert len(small) == 1 and len(set(large)) == 2 and not small & set(large)


def test_slow_diff_is_killed_and_not_cached(tmp_path: Path) -> None:
    pid_file = tmp_path / "slow.pid"
    slow_src = b"SLOW " + str(pid_file).encode() + b"\n" + binary(60, 20_000)
    quick_src = binary(61, 10_000)
    files = {"slow": (slow_src, edited(slow_src, 62)), "quick": (quick_src,
                                                                 edited(quick_src, 63))}
    pair = Pair(tmp_path, files)
    cache = tmp_path / "cache"
    out = make_patches(pair.jobs(), cache=BlobCache(cache),
                       options=DiffOptions(workers=2, timeout=1.0, engine=_slow_engine))
    slow = out["system/slow"]
    assert slow.whole_reason == "diff timed out after 1 s"
    assert slow.patch is None and slow.is_fallback
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    assert_patched(out["system/quick"], *files["quick"], tmp_path)
    assert not [name for name in cache_files(cache) if name.startswith(sha1(slow_src))]
    assert not [name for name in cache_files(cache) if name.startswith(".")]


def test_wrong_patch_is_an_internal_error(tmp_path: Path) -> None:
    source = binary(70, 20_000)
    pair = Pair(tmp_path, {"bin/w": (source, edited(source, 71))})
    with pytest.raises(RuntimeError, match="gives other bytes than the target"):
        make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache"),
                     options=DiffOptions(engine=_wrong_engine))
    assert cache_files(tmp_path / "cache") == []


def test_content_that_does_not_match_its_sha1_is_refused(tmp_path: Path) -> None:
    source = binary(72, 20_000)
    target = edited(source, 73)
    pair = Pair(tmp_path, {"bin/v": (source, target)})
    job = pair.job("bin/v")
    lying = PatchJob(job.name, Blob.in_zip(pair.source_zip, "SYSTEM/bin/v", "0" * 40,
                                           len(source)), job.target)
    with pytest.raises(DfotaError, match="source of 'system/bin/v' does not match"):
        make_patches([lying], cache=BlobCache(tmp_path / "cache"))


def test_same_inputs_give_identical_patches(tmp_path: Path) -> None:
    files = {}
    for seed in range(3):
        source = binary(80 + seed, 30_000 * (seed + 1))
        files[f"lib/l{seed}.so"] = (source, edited(source, 90 + seed))
    pair = Pair(tmp_path, files)
    one = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "one"),
                       options=DiffOptions(workers=3))
    two = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "two"),
                       options=DiffOptions(workers=1))
    for name, (source, target) in files.items():
        patch = assert_patched(one[f"system/{name}"], source, target, tmp_path)
        assert assert_patched(two[f"system/{name}"], source, target, tmp_path) == patch
        assert patch == bsdiff4.diff(source, target)


def test_works_with_threads_running(tmp_path: Path) -> None:
    """With other threads alive, workers come from a fork server instead of a plain fork."""
    source = binary(95, 40_000)
    target = edited(source, 96)
    pair = Pair(tmp_path, {"bin/t": (source, target)})
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        out = make_patches(pair.jobs(), cache=BlobCache(tmp_path / "cache"),
                           options=DiffOptions(engine=_failing_engine))
    finally:
        stop.set()
        thread.join()
    assert_patched(out["system/bin/t"], source, target, tmp_path)


def test_a_run_diffs_while_the_caller_goes_on(tmp_path: Path) -> None:
    """`add` starts the diffs at once; later adds join the same run; a pair added again
    under another name is diffed once; a name is taken once."""
    calls = tmp_path / "calls"
    calls.mkdir()
    head = str(calls).encode() + b"\n"
    files = {name: (head + binary(seed, 300_000), edited(head + binary(seed, 300_000), seed))
             for seed, name in enumerate(["kernel", "lib/a.so", "lib/b.so"], start=120)}
    pair = Pair(tmp_path, files)
    lines: list[str] = []
    with PatchRun(cache=BlobCache(tmp_path / "cache"),
                  options=DiffOptions(workers=2, engine=_pid_engine), progress=lines.append) as run:
        run.add([pair.job("kernel")])
        deadline = time.monotonic() + 30
        while not any(calls.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(list(calls.iterdir())) == 1  # diffed before anything else was added
        kernel = pair.job("kernel")
        again = PatchJob("system/kernel-copy", kernel.source, kernel.target)
        run.add([pair.job("lib/a.so"), pair.job("lib/b.so"), again])
        with pytest.raises(ValueError, match="same name"):
            run.add([pair.job("lib/a.so")])
        out = run.outcomes()
    assert list(out) == ["system/kernel", "system/lib/a.so", "system/lib/b.so",
                         "system/kernel-copy"]
    for name, (source, target) in files.items():
        assert_patched(out[f"system/{name}"], source, target, tmp_path)
    assert out["system/kernel-copy"].patch == out["system/kernel"].patch
    assert len(list(calls.iterdir())) == 3
    assert len(diff_lines(lines)) == 3 and diff_lines(lines)[-1].startswith("diff 3/3: ")


def test_stale_scratch_of_a_dead_run_is_removed(tmp_path: Path) -> None:
    dead = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True, check=True)
    cache = tmp_path / "cache"
    stale = cache / f".run-{dead.stdout.strip()}-abc"
    stale.mkdir(parents=True)
    (stale / "0.p").write_bytes(b"partial")
    live = cache / f".run-{os.getpid()}-abc"
    live.mkdir()
    make_patches([], cache=BlobCache(cache))
    assert not stale.exists()
    assert live.exists()


def test_apply_patch_bytes_wants_the_whole_magic() -> None:
    patch = bsdiff4.diff(b"a" * 100, b"b" * 100)
    assert apply_patch_bytes(b"a" * 100, patch) == b"b" * 100
    with pytest.raises(ValueError, match="not a BSDIFF40 patch"):
        apply_patch_bytes(b"a" * 100, b"BSDIFF41" + patch[8:])


def test_bad_arguments() -> None:
    blob = Blob.on_disk(Path("x"), "0" * 40, 0)
    with pytest.raises(ValueError):
        Blob(Path("a.zip"), "m", Path("x"), "0" * 40, 0)
    with pytest.raises(ValueError):
        Blob(Path("a.zip"), None, None, "0" * 40, 0)
    with pytest.raises(ValueError, match="positive"):
        make_patches([], cache=BlobCache(Path("unused")), options=DiffOptions(workers=0))
    with pytest.raises(ValueError, match="same name"):
        make_patches([PatchJob("a", blob, blob)] * 2, cache=BlobCache(Path("unused")))


def test_the_engine_writes_bsdiff4s_bytes_on_the_projects_data() -> None:
    """detools' bsdiff mode, the default engine, against bsdiff4 (the reference, whose bytes
    Debian's bsdiff also writes): the sample's and the benchmark's modified files, kernels,
    and edge cases."""
    base, nxt = bench_rootfs_pair(bench_plan(0.02))
    pairs = [(base[p].data, nxt[p].data) for p in sorted(base)
             if p in nxt and base[p].kind == nxt[p].kind == FILE and base[p].data != nxt[p].data]
    assert len(pairs) >= 10
    pairs.append((bench_boot_image(256 << 10, False), bench_boot_image(256 << 10, True)))
    pairs += [(b"", b""), (b"", b"new"), (b"old", b""), (b"same", b"same"),
              (binary(7, 50_000), edited(binary(7, 50_000), 8))]
    for source, target in pairs:
        assert bsdiff40(source, target) == bsdiff4.diff(source, target)


@pytest.mark.slow  # the diff it interrupts runs on in C for seconds
def test_ctrl_c_ends_a_diff_worker_without_a_traceback(tmp_path: Path) -> None:
    """Ctrl-C reaches a command's whole process group: a diff worker it lands in ends without
    a word (its parent unwinds and says what happened), where multiprocessing would print
    the worker's name and a traceback."""
    script = """
import hashlib, multiprocessing, os, signal, sys, time
from pathlib import Path
from dfota.package.blobs import Blob
from dfota.package.diff_worker import DiffTask, diff_tasks
folder = Path(sys.argv[1])
data = os.urandom(2 << 20)
blobs = []
for name, content in (("source", data), ("target", data[::-1])):
    (folder / name).write_bytes(content)
    blobs.append(Blob.on_disk(folder / name, hashlib.sha1(content).hexdigest(), len(content)))
task = DiffTask(*blobs, folder / "patch", folder / "result.json", 1 << 30, None)
worker = multiprocessing.get_context("fork").Process(target=diff_tasks, args=([task],),
                                                     name="diff target")
worker.start()
time.sleep(0.3)  # diffing by then, for seconds: random bytes against their reverse
os.kill(worker.pid, signal.SIGINT)
worker.join(60)
print(worker.exitcode, (folder / "result.json").exists())
"""
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.stdout.split() == ["0", "False"], done
    assert "Traceback" not in done.stderr and "Process diff" not in done.stderr, done.stderr
