"""The modeled module's contents held or left where they lie (`dfota.device.contents`), and the
device's zip reader reading a package in pieces: the same bytes, sha1s and outcomes as reading
it whole, a corrupt deflated entry cut at the same 32 KiB buffer, large bytes never held."""

from __future__ import annotations

import hashlib
import random
import zipfile
import zlib
from pathlib import Path

import pytest

from dfota.core.errors import DfotaError
from dfota.core.tree import FILE
from dfota.device import contents
from dfota.device.contents import KEEP, Spill, Stored, joined, prefix, same_content, whole
from dfota.device.fs import Device
from dfota.device.storage import Partition
from dfota.device.zip_reader import DeviceZip


def _whole_inflate(raw: bytes, size: int) -> tuple[bytes, bool]:
    """The device's inflate as the reader did it on the whole entry in memory (the rule: the
    32 KiB buffers filled before a failure, none after)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = raw
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, 32 * 1024)
            out += chunk
            if not chunk and len(inflater.unconsumed_tail) == len(pending):
                break
            pending = inflater.unconsumed_tail
    except zlib.error:
        pass
    if not inflater.eof:
        del out[len(out) - len(out) % (32 * 1024):]
        return bytes(out), False
    return bytes(out), len(out) == size


def _package(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for name, data in members.items():
            out.writestr(name, data)
    return path


def _damaged(path: Path, name: str, seed: int) -> None:
    """Flip a few bytes of entry `name`'s compressed data."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(name)
    raw = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    rng = random.Random(seed)
    for _ in range(rng.randint(1, 3)):
        raw[start + rng.randrange(info.compress_size)] ^= rng.randint(1, 255)
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("seed", range(12))
def test_a_damaged_entry_read_in_pieces_is_what_the_whole_read_gave(tmp_path: Path,
                                                                     seed: int) -> None:
    rng = random.Random(seed)
    size = rng.choice([5000, 200_000, KEEP + 300_000])
    data = rng.randbytes(size).translate(bytes(b & 7 for b in range(256)))  # compressible
    path = _package(tmp_path / "p.zip", {"a": data, "b": b"x" * 70_000})
    if seed % 4:
        _damaged(path, "a", seed)
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("a")
    raw = path.read_bytes()
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    expected, expected_ok = _whole_inflate(raw[start:start + info.compress_size], size)
    archive = DeviceZip(path)
    entry = archive.find(b"a")
    assert entry is not None
    content, ok = archive.read(entry)
    assert ok == expected_ok
    assert whole(content) == expected
    assert archive.sha1(entry) == hashlib.sha1(expected).hexdigest()
    held = DeviceZip(path.read_bytes())  # the same package given as bytes
    entry_b = held.find(b"a")
    assert entry_b is not None
    assert whole(held.read(entry_b)[0]) == expected and held.read(entry_b)[1] == ok
    archive.close()


def test_a_large_entry_is_hashed_once_and_read_again_only_when_used(tmp_path: Path) -> None:
    big = bytes(3 * KEEP) + b"end"
    path = _package(tmp_path / "p.zip", {"big": big})
    archive = DeviceZip(path)
    entry = archive.find(b"big")
    assert entry is not None
    content, ok = archive.read(entry)
    assert ok and isinstance(content, Stored) and content._data is None
    assert content.size == len(big) and archive.sha1(entry) == hashlib.sha1(big).hexdigest()
    assert b"".join(content.pieces()) == big and content._data is None  # never kept
    assert same_content(content, big) and content == big
    archive.close()


def test_the_package_read_from_its_file_changed_meanwhile_is_named(tmp_path: Path) -> None:
    path = _package(tmp_path / "p.zip", {"big": bytes(2 * KEEP) + b"1"})
    archive = DeviceZip(path)
    entry = archive.find(b"big")
    assert entry is not None
    content, _ = archive.read(entry)
    other = _package(tmp_path / "other.zip", {"big": bytes(2 * KEEP) + b"2"}).read_bytes()
    assert len(other) == path.stat().st_size  # the same layout, other bytes
    with open(path, "r+b") as f:  # changed in place: the open file sees it
        f.write(other)
    with pytest.raises(DfotaError, match="changed while it was being verified"):
        whole(content)
    archive.close()


def test_spilled_outputs_read_back_as_written(tmp_path: Path) -> None:
    spill = Spill()
    small = spill.keep(b"abc")
    assert small == b"abc"
    data = random.Random(1).randbytes(KEEP + 12345)
    kept = spill.keep(data)
    assert isinstance(kept, Stored) and kept.size == len(data)
    assert kept.sha1() == hashlib.sha1(data).hexdigest() and kept.get() == data
    second = spill.keep(data[::-1])
    assert whole(second) == data[::-1] and whole(kept) == data
    spill.close()


def test_a_stored_partition_reads_erased_past_its_image() -> None:
    image = Stored(KEEP + 5, lambda: iter((b"\1" * (KEEP + 5),)))
    part = Partition(image, KEEP + 100)
    view = part.view(KEEP + 100)
    assert view is not None and whole(view) == b"\1" * (KEEP + 5) + b"\xff" * 95
    assert part.digest(KEEP + 100) == hashlib.sha1(whole(view)).digest()
    assert part.view(KEEP + 101) is None
    assert whole(prefix(image, 7)) == b"\1" * 7
    assert whole(joined([b"ab", image])) == b"ab" + b"\1" * (KEEP + 5)


def test_the_same_bytes_left_where_they_lie_are_not_written_again() -> None:
    data = bytes(KEEP + 10)
    stored = Stored(len(data), lambda: iter((data,)), sha1=hashlib.sha1(data).hexdigest())
    dev = Device.from_system({"big": (FILE, 0o644, 0, 0, stored)},
                             sha1s={"big": stored.sha1()})
    dev.mount("/system")
    other = Stored(len(data), lambda: iter((data,)))  # equal bytes, another object
    with dev.trial():
        dev.write_file("/system/big", other, new_mode=0o600)
        assert dev._journal == []  # nothing to undo: nothing changed
        dev.write_file("/system/big", b"x", new_mode=0o600)
        assert dev._journal
    assert dev.host_content("/system/big") is stored


def test_small_entries_are_held_only_up_to_the_budget(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Past `HOLD` bytes held, even a small entry is read again when used: memory does not
    follow the package's size."""
    monkeypatch.setattr(contents, "HOLD", 150_000)
    contents.start_holding()
    path = _package(tmp_path / "p.zip", {f"f{n}": bytes([n]) * 60_000 for n in range(4)})
    archive = DeviceZip(path)
    read = [archive.read(e)[0] for e in archive.entries]
    assert [isinstance(c, Stored) for c in read] == [False, False, True, True]
    assert [whole(c) for c in read] == [bytes([n]) * 60_000 for n in range(4)]
    assert not any(c._data is not None for c in read if isinstance(c, Stored))
    archive.close()
    contents.start_holding()
