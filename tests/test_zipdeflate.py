"""Deflate streams of an earlier zip taken again: the zip is byte for byte the one deflating
gives, and a stream is taken only for exactly the bytes it holds."""

from __future__ import annotations

import subprocess
import zipfile
import zlib
from pathlib import Path

from dfota.formats.zipdeflate import EarlierStreams, Replay
from dfota.formats.zipio import ZipItem, ZipSource, bytes_item, member_item, path_item, write_zip
from tests.builders import binary, edited


def sources(tmp: Path, lib: bytes) -> list[ZipItem]:
    """A package's kinds of entries: files from a folder and members of a stored zip."""
    (tmp / "patch.p").write_bytes(binary(3, 5_000))
    (tmp / "empty").write_bytes(b"")
    with zipfile.ZipFile(tmp / "target.zip", "w") as target:  # stored, as targetfiles.zip
        target.writestr("SYSTEM/usr/lib/lib.so", lib)
        target.writestr("SYSTEM/etc/text.conf", b"option = 1\n" * 3_000)
    return [
        bytes_item("META-INF/updater-script", b'ui_print("x");\n' * 200),
        path_item("patch/lib.so.p", tmp / "patch.p", 0o644),
        path_item("system/empty", tmp / "empty", 0o644),
        member_item("system/usr/lib/lib.so", tmp / "target.zip", "SYSTEM/usr/lib/lib.so", 0o755),
        member_item("system/etc/text.conf", tmp / "target.zip", "SYSTEM/etc/text.conf", 0o644),
    ]


def rewritten(tmp: Path, earlier: Path, items: list[ZipItem]) -> tuple[bytes, list[str]]:
    """The zip of `items` written with `earlier`'s streams, and the members taken."""
    with ZipSource(earlier) as source:
        streams = EarlierStreams(source)
        write_zip(tmp / "again.zip", items, compress=True, reuse=streams)
    return (tmp / "again.zip").read_bytes(), streams.taken


def fresh(tmp: Path, items: list[ZipItem]) -> bytes:
    write_zip(tmp / "fresh.zip", items, compress=True)
    return (tmp / "fresh.zip").read_bytes()


def test_a_zip_written_with_earlier_streams_is_the_zip_deflating_gives(tmp_path: Path) -> None:
    items = sources(tmp_path, binary(1, 300_000))
    write_zip(tmp_path / "earlier.zip", items, compress=True)
    again, taken = rewritten(tmp_path, tmp_path / "earlier.zip", items)
    # an empty file has nothing to deflate
    assert sorted(taken) == ["patch/lib.so.p", "system/etc/text.conf", "system/usr/lib/lib.so"]
    assert again == fresh(tmp_path, items) == (tmp_path / "earlier.zip").read_bytes()
    subprocess.run(["unzip", "-tq", tmp_path / "again.zip"], check=True, capture_output=True)


def test_changed_bytes_are_deflated_again(tmp_path: Path) -> None:
    lib = binary(1, 300_000)
    write_zip(tmp_path / "earlier.zip", sources(tmp_path, lib), compress=True)
    items = sources(tmp_path, edited(lib, 150_000))  # same size, one byte else
    again, taken = rewritten(tmp_path, tmp_path / "earlier.zip", items)
    assert "system/usr/lib/lib.so" not in taken and "system/etc/text.conf" in taken
    assert again == fresh(tmp_path, items)
    with zipfile.ZipFile(tmp_path / "again.zip") as zf:
        assert zf.read("system/usr/lib/lib.so") == edited(lib, 150_000)


def test_a_damaged_stream_is_never_taken(tmp_path: Path) -> None:
    items = sources(tmp_path, binary(1, 300_000))
    earlier = tmp_path / "earlier.zip"
    write_zip(earlier, items, compress=True)
    with ZipSource(earlier) as source:
        start = source.data_offset("system/usr/lib/lib.so")
        size = source.members["system/usr/lib/lib.so"].info.compress_size
    data = bytearray(earlier.read_bytes())
    data[start + size // 2] ^= 0xFF  # the headers (CRC, sizes) still say the same bytes
    earlier.write_bytes(bytes(data))
    again, taken = rewritten(tmp_path, earlier, items)
    assert "system/usr/lib/lib.so" not in taken and "system/etc/text.conf" in taken
    assert again == fresh(tmp_path, items)


def test_a_replay_fed_other_bytes_deflates_them_afresh() -> None:
    content, other = binary(5, 70_000), binary(6, 70_000)
    deflater = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    stream = deflater.compress(content) + deflater.flush()
    replay = Replay(content, stream)
    assert replay.compress(content[:1000]) + replay.compress(content[1000:]) == b""
    assert replay.flush() == stream
    for fed in ([other], [content[:1000], other], [content, b"more"], [content[:-1]]):
        replay = Replay(content, stream)
        out = b"".join(replay.compress(part) for part in fed) + replay.flush()
        assert zlib.decompress(out, -15) == b"".join(fed)
