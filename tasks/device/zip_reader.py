"""The module's own zip reader, as the updater sees a package.

Central directory only, entries sorted by name bytes with the first of duplicates kept, stored
and deflated only, no ZIP64, CRCs never checked, and a corrupt deflated entry cut short.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
import zlib
from dataclasses import dataclass

from dfota.core.errors import quoted

_INFLATE_BUFFER = 32 * 1024


class ZipFormatError(Exception):
    """The device's zip reader refuses the whole package (updater exit 3)."""


@dataclass(frozen=True)
class ZipEntry:
    name: bytes
    method: int
    comp_size: int
    size: int
    offset: int  # of the data


class DeviceZip:
    """The package as the module's minimal zip reader sees it: central directory only,
    byte-sorted names, the first of duplicate names wins, no CRC check."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._read: dict[ZipEntry, tuple[bytes, bool]] = {}
        self._sha1s: dict[ZipEntry, str] = {}
        found = _central_directory(data)
        found.sort(key=lambda e: e.name)  # stable: among equal names the first stays first
        self.entries: list[ZipEntry] = []
        self.by_name: dict[bytes, ZipEntry] = {}
        for entry in found:
            if entry.name not in self.by_name:
                self.by_name[entry.name] = entry
                self.entries.append(entry)

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

    def read(self, entry: ZipEntry) -> tuple[bytes, bool]:
        """(the bytes the device gets, whether it calls the read a success)."""
        if entry not in self._read:  # every power-loss replay reads the same entries
            self._read[entry] = self._read_entry(entry)
        return self._read[entry]

    def sha1(self, entry: ZipEntry) -> str:
        """The sha1 of `read(entry)`'s bytes (kept: replays write the same entries again)."""
        if entry not in self._sha1s:
            self._sha1s[entry] = hashlib.sha1(self.read(entry)[0]).hexdigest()
        return self._sha1s[entry]

    def _read_entry(self, entry: ZipEntry) -> tuple[bytes, bool]:
        start = entry.offset
        if entry.method == 0:
            data = self.data[start : start + entry.size]
            return data, len(data) == entry.size
        if entry.method != 8:
            return b"", False
        return _inflate(self.data[start : start + entry.comp_size], entry.size)


def _u16(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<H", data, at)[0])


def _u32(data: bytes, at: int) -> int:
    return int(struct.unpack_from("<I", data, at)[0])




def _central_directory(data: bytes) -> list[ZipEntry]:
    count, at = _end_record(data)
    entries = []
    for index in range(count):
        entry, at = _central_entry(data, at, index)
        entries.append(entry)
    return entries


def _end_record(data: bytes) -> tuple[int, int]:
    """(how many entries, where the central directory starts), from the end record."""
    size = len(data)
    if size < 22:
        raise ZipFormatError("too small to be a zip")
    first = _u32(data, 0)
    if first == 0x06054B50:
        raise ZipFormatError("the zip is empty")
    if first != 0x04034B50:
        raise ZipFormatError("does not start with a zip local header")
    end = data.rfind(b"PK\x05\x06", 0, size - 18)
    if end < 0:
        raise ZipFormatError("no end-of-central-directory record")
    count, cd = _u16(data, end + 8), _u32(data, end + 16)
    if count == 0 or cd >= size:
        raise ZipFormatError(f"bad central directory ({count} entries at {cd})")
    if count == 0xFFFF or cd == 0xFFFFFFFF:
        raise ZipFormatError("ZIP64 archives are not supported")
    return count, cd


def _central_entry(data: bytes, at: int, index: int) -> tuple[ZipEntry, int]:
    """Entry `index` of the central directory, at `at`, and where the next one starts."""
    size = len(data)
    if at + 46 > size or _u32(data, at) != 0x02014B50:
        raise ZipFormatError(f"central directory entry {index} is damaged")
    made_by, method = _u16(data, at + 4), _u16(data, at + 10)
    comp, full = _u32(data, at + 20), _u32(data, at + 24)
    name_len, extra_len, comment_len = (_u16(data, at + n) for n in (28, 30, 32))
    local = _u32(data, at + 42)
    if at + 46 + name_len > size or name_len >= 4096:
        raise ZipFormatError(f"central directory entry {index} has a bad name")
    name = data[at + 46 : at + 46 + name_len]
    if made_by >> 8 not in (0, 3):
        raise ZipFormatError(f"entry {quoted(name)} was made on host {made_by >> 8}, "
                             "not MS-DOS or Unix")
    if 0xFFFFFFFF in (comp, full, local):
        raise ZipFormatError(f"entry {quoted(name)} needs ZIP64")
    if local + 30 > size or _u32(data, local) != 0x04034B50:
        raise ZipFormatError(f"entry {quoted(name)} has no local header")
    offset = local + 30 + _u16(data, local + 26) + _u16(data, local + 28)
    return ZipEntry(name, method, comp, full, offset), at + 46 + name_len + extra_len + comment_len


def _inflate(raw: bytes, size: int) -> tuple[bytes, bool]:
    """Inflate as the device does: output leaves its 32 KiB buffer only when the buffer is
    full or the stream ends, so a corrupt stream yields whole buffers and then stops."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending = raw
    try:
        while not inflater.eof:
            chunk = inflater.decompress(pending, _INFLATE_BUFFER)
            out += chunk
            if not chunk and len(inflater.unconsumed_tail) == len(pending):
                break  # the input ran out before the stream's end
            pending = inflater.unconsumed_tail
    except zlib.error:
        pass
    if not inflater.eof:
        del out[len(out) - len(out) % _INFLATE_BUFFER :]
        return bytes(out), False
    return bytes(out), len(out) == size
