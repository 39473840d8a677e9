"""The module's own zip reader, as the updater sees a package.

Central directory only, entries sorted by name bytes with the first of duplicates kept, stored
and deflated only, no ZIP64, CRCs never checked, and a corrupt deflated entry cut short.
The package is read from its file in pieces, never whole: an entry is inflated once to learn
its size and sha1, and again each time its bytes are used (`dfota.device.contents`).
"""

from __future__ import annotations

import bisect
import hashlib
import os
import struct
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

from dfota.core.errors import DfotaError, quoted
from dfota.device.contents import KEEP, PIECE, Content, Stored, checked, may_hold

_INFLATE_BUFFER = 32 * 1024
_INPUT = 16 * 1024  # compressed bytes handed to the inflater at a time
_SCAN = 1 << 16  # bytes looked at a time for the end record


class ZipFormatError(Exception):
    """The device's zip reader refuses the whole package (updater exit 3)."""


@dataclass(frozen=True)
class ZipEntry:
    name: bytes
    method: int
    comp_size: int
    size: int
    offset: int  # of the data


class _Bytes:
    """A package's bytes: held, or read from its file by offset (open until `close`)."""

    def __init__(self, source: bytes | Path) -> None:
        self.path: Path | None = None
        self.fd = -1
        self.held: bytes | None = None
        if isinstance(source, bytes):
            self.held, self.size = source, len(source)
        else:
            self.path = Path(source)
            self.fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
            self.size = os.fstat(self.fd).st_size

    def read(self, at: int, count: int) -> bytes:
        """Up to `count` bytes from `at` (fewer at the end)."""
        if self.held is not None:
            return self.held[at : at + count]
        parts, left = [], max(0, min(count, self.size - at))
        while left > 0:
            part = os.pread(self.fd, left, at)
            if not part:
                break
            parts.append(part)
            at, left = at + len(part), left - len(part)
        return b"".join(parts)

    def rfind(self, sub: bytes, end: int) -> int:
        """Where `sub` last starts wholly before `end`; -1 if nowhere."""
        hi = end
        while hi >= len(sub):
            lo = max(0, hi - _SCAN)
            found = self.read(lo, hi - lo).rfind(sub)
            if found >= 0:
                return lo + found
            if lo == 0:
                break
            hi = lo + len(sub) - 1
        return -1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class DeviceZip:
    """The package as the module's minimal zip reader sees it: central directory only,
    byte-sorted names, the first of duplicate names wins, no CRC check. `source`: the
    package's file (read in pieces, open until `close`), or its bytes."""

    def __init__(self, source: bytes | Path) -> None:
        self._bytes = _Bytes(source)
        self._read: dict[ZipEntry, tuple[Content, bool]] = {}
        self._sha1s: dict[ZipEntry, str] = {}
        try:
            found = _central_directory(self._bytes)
        except BaseException:
            self.close()
            raise
        found.sort(key=lambda e: e.name)  # stable: among equal names the first stays first
        self.entries: list[ZipEntry] = []
        self.by_name: dict[bytes, ZipEntry] = {}
        for entry in found:
            if entry.name not in self.by_name:
                self.by_name[entry.name] = entry
                self.entries.append(entry)

    @property
    def size(self) -> int:
        """The package's size in bytes."""
        return self._bytes.size

    def close(self) -> None:
        self._bytes.close()

    def __del__(self) -> None:
        self.close()

    def find(self, name: bytes) -> ZipEntry | None:
        return self.by_name.get(name)

    def under(self, prefix: bytes) -> tuple[ZipEntry, ...]:
        """The file entries `package_extract_dir` takes from `prefix`, in its order: the
        sorted names that start with it, directory entries left out."""
        at = bisect.bisect_left(self.entries, prefix, key=lambda e: e.name)
        out = []
        for entry in self.entries[at:]:
            if not entry.name.startswith(prefix):
                break  # names are sorted: the matching ones are all together
            if not entry.name.endswith(b"/"):
                out.append(entry)
        return tuple(out)

    def read(self, entry: ZipEntry) -> tuple[Content, bool]:
        """(the bytes the device gets, whether it calls the read a success)."""
        if entry not in self._read:  # every power-loss replay reads the same entries
            self._read[entry] = self._read_entry(entry)
        return self._read[entry]

    def sha1(self, entry: ZipEntry) -> str:
        """The sha1 of `read(entry)`'s bytes (kept: replays write the same entries again)."""
        if entry not in self._sha1s:
            content = self.read(entry)[0]
            self._sha1s[entry] = content.sha1() if isinstance(content, Stored) \
                else hashlib.sha1(content).hexdigest()
        return self._sha1s[entry]

    def _read_entry(self, entry: ZipEntry) -> tuple[Content, bool]:
        """The entry's bytes read once: held when small, else read again when used."""
        if entry.method == 0:
            available = max(0, min(entry.size, self._bytes.size - entry.offset))
            ok = available == entry.size
            if may_hold(available):
                return self._bytes.read(entry.offset, available), ok
            digest = hashlib.sha1()
            for piece in self._range(entry.offset, available):
                digest.update(piece)
            sha1 = self._sha1s[entry] = digest.hexdigest()
            return Stored(available, lambda: checked(self._range(entry.offset, available), sha1,
                                                     self._changed(entry)), sha1=sha1), ok
        if entry.method != 8:
            return b"", False
        held, digest, size = bytearray(), hashlib.sha1(), 0
        inflating = _inflated(self._bytes, entry.offset, entry.comp_size)
        while True:
            try:
                piece = next(inflating)
            except StopIteration as done:
                ended: bool = done.value
                break
            digest.update(piece)
            size += len(piece)
            if size <= KEEP:
                held += piece
        ok = ended and size == entry.size
        if size <= KEEP and may_hold(size):
            return bytes(held), ok
        sha1 = self._sha1s[entry] = digest.hexdigest()
        return Stored(size, lambda: self._again(entry, size, sha1), sha1=sha1), ok

    def _range(self, at: int, count: int) -> Iterator[bytes]:
        end = at + count
        while at < end:
            piece = self._bytes.read(at, min(PIECE, end - at))
            if not piece:
                return
            at += len(piece)
            yield piece

    def _changed(self, entry: ZipEntry) -> Callable[[], Exception]:
        return lambda: DfotaError(f"entry {quoted(entry.name)} changed while it was being "
                                  "verified", self._bytes.path or "the package")

    def _again(self, entry: ZipEntry, size: int, sha1: str) -> Iterator[bytes]:
        """A deflated entry's first `size` bytes inflated again: still those hashed."""
        def upto() -> Iterator[bytes]:
            left = size
            for piece in _inflated(self._bytes, entry.offset, entry.comp_size):
                if left <= 0:
                    return
                yield piece[:left]
                left -= len(piece)

        return checked(upto(), sha1, self._changed(entry))


def _u16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])




def _central_directory(data: _Bytes) -> list[ZipEntry]:
    count, at = _end_record(data)
    entries = []
    for index in range(count):
        entry, at = _central_entry(data, at, index)
        entries.append(entry)
    return entries


def _end_record(data: _Bytes) -> tuple[int, int]:
    """(how many entries, where the central directory starts), from the end record."""
    size = data.size
    if size < 22:
        raise ZipFormatError("too small to be a zip")
    first = _u32(data.read(0, 4), 0)
    if first == 0x06054B50:
        raise ZipFormatError("the zip is empty")
    if first != 0x04034B50:
        raise ZipFormatError("does not start with a zip local header")
    end = data.rfind(b"PK\x05\x06", size - 18)
    if end < 0:
        raise ZipFormatError("no end-of-central-directory record")
    record = data.read(end, 22)
    count, cd = _u16(record, 8), _u32(record, 16)
    if count == 0 or cd >= size:
        raise ZipFormatError(f"bad central directory ({count} entries at {cd})")
    if count == 0xFFFF or cd == 0xFFFFFFFF:
        raise ZipFormatError("ZIP64 archives are not supported")
    return count, cd


def _central_entry(data: _Bytes, at: int, index: int) -> tuple[ZipEntry, int]:
    """Entry `index` of the central directory, at `at`, and where the next one starts."""
    size = data.size
    fixed = data.read(at, 46)
    if len(fixed) < 46 or _u32(fixed, 0) != 0x02014B50:
        raise ZipFormatError(f"central directory entry {index} is damaged")
    made_by, method = _u16(fixed, 4), _u16(fixed, 10)
    comp, full = _u32(fixed, 20), _u32(fixed, 24)
    name_len, extra_len, comment_len = (_u16(fixed, n) for n in (28, 30, 32))
    local = _u32(fixed, 42)
    if at + 46 + name_len > size or name_len >= 4096:
        raise ZipFormatError(f"central directory entry {index} has a bad name")
    name = data.read(at + 46, name_len)
    if made_by >> 8 not in (0, 3):
        raise ZipFormatError(f"entry {quoted(name)} was made on host {made_by >> 8}, "
                             "not MS-DOS or Unix")
    if 0xFFFFFFFF in (comp, full, local):
        raise ZipFormatError(f"entry {quoted(name)} needs ZIP64")
    header = data.read(local, 30)
    if len(header) < 30 or _u32(header, 0) != 0x04034B50:
        raise ZipFormatError(f"entry {quoted(name)} has no local header")
    offset = local + 30 + _u16(header, 26) + _u16(header, 28)
    return ZipEntry(name, method, comp, full, offset), at + 46 + name_len + extra_len + comment_len


def _inflated(data: _Bytes, at: int, comp_size: int) -> Generator[bytes, None, bool]:
    """Inflate as the device does, yielding the output in pieces; returns whether the stream
    ended. Output leaves the device's 32 KiB buffer only when the buffer is full or the
    stream ends, so a corrupt stream yields whole buffers and then stops: each call of the
    inflater fills at most the rest of the buffer, so that the buffer a failure falls in is
    the one left out, however the input is cut."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    end = at + comp_size
    pending = b""
    held = bytearray()  # the buffer being filled
    try:
        while not inflater.eof:
            if not pending and at < end:
                pending = data.read(at, min(_INPUT, end - at))
                at = at + len(pending) if pending else end  # the file ends early
            chunk = inflater.decompress(pending, _INFLATE_BUFFER - len(held))
            held += chunk
            stuck = not chunk and len(inflater.unconsumed_tail) == len(pending)
            pending = inflater.unconsumed_tail
            if stuck:
                if at >= end:
                    break  # the input ran out before the stream's end
                more = data.read(at, min(_INPUT, end - at))
                at = at + len(more) if more else end
                pending += more
                continue
            if len(held) == _INFLATE_BUFFER:
                yield bytes(held)
                held.clear()
    except zlib.error:
        pass
    if inflater.eof and held:
        yield bytes(held)
    return inflater.eof
