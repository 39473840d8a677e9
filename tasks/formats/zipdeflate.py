"""Deflate streams of an earlier zip, taken again for the same bytes.

Deflating is most of the time it takes to write a package, and a package made after a small
change holds mostly the entries of the one before. `write_zip(..., reuse=EarlierStreams(z))`
writes an entry whose bytes a deflated member of `z` holds with that member's stream instead
of deflating them again. The caller vouches that `z` was written by `write_zip` with the
deflater `DEFLATER` names (zipfile's, at zlib's default level), so the stream is the one
deflating would give; each stream is inflated and compared with the entry's bytes before it
is taken, and a stream that is not exactly those bytes is never written.
"""

from __future__ import annotations

import contextlib
import os
import platform
import zipfile
import zlib

from dfota.core.errors import DfotaError
from dfota.core.tree import FILE
from dfota.formats.zipio import ZipSource

# what decides the bytes of a deflated entry: zipfile (Python) with the zlib it runs on, at
# zlib's default level, as `write_zip` calls it
DEFLATER = (f"zipfile of Python {platform.python_version()}, zlib "
            f"{zlib.ZLIB_RUNTIME_VERSION} level {zlib.Z_DEFAULT_COMPRESSION} raw")


def _deflater() -> zlib._Compress:
    """zipfile's compressor for a deflated entry (`zipfile._get_compressor`)."""
    return zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)


class Replay:
    """zipfile's compressor for one entry: gives back `stream`, made before for `content`,
    while it is fed exactly `content`; anything else it is fed is deflated afresh."""

    def __init__(self, content: bytes, stream: bytes) -> None:
        self.content, self.stream = content, stream
        self.fed = 0  # bytes of `content` fed so far
        self.fresh: zlib._Compress | None = None

    def _afresh(self) -> bytes:
        self.fresh = _deflater()
        return self.fresh.compress(self.content[:self.fed])

    def compress(self, data: bytes) -> bytes:
        if self.fresh is not None:
            return self.fresh.compress(data)
        if self.content.startswith(data, self.fed):
            self.fed += len(data)
            return b""
        head = self._afresh()
        assert self.fresh is not None
        return head + self.fresh.compress(data)

    def flush(self) -> bytes:
        if self.fresh is None and self.fed == len(self.content):
            return self.stream
        head = self._afresh() if self.fresh is None else b""
        assert self.fresh is not None
        return head + self.fresh.flush()


class EarlierStreams:
    """The deflated members of `earlier` (open), found by their bytes' CRC-32 and size."""

    def __init__(self, earlier: ZipSource) -> None:
        self.zip = earlier
        self.taken: list[str] = []  # the members whose streams were taken, for the tests
        self._by_content: dict[tuple[int, int], str] = {}
        for member in earlier.members.values():
            info = member.info
            if member.kind == FILE and info.compress_type == zipfile.ZIP_DEFLATED and \
                    not info.flag_bits & 0x1:  # not encrypted
                self._by_content.setdefault((info.CRC, info.file_size), member.name)

    def __call__(self, content: bytes) -> Replay | None:
        """A compressor that gives back the stream of a member holding exactly `content`;
        None when there is none."""
        name = self._by_content.get((zlib.crc32(content), len(content)))
        stream = self._stream(name) if name is not None else None
        if stream is None:
            return None
        inflater = zlib.decompressobj(-15)
        try:
            inflated = inflater.decompress(stream, len(content) + 1)
        except zlib.error:
            return None
        if inflated != content or not inflater.eof or inflater.unused_data:
            return None
        assert name is not None
        self.taken.append(name)
        return Replay(content, stream)

    def _stream(self, name: str) -> bytes | None:
        """The member's deflated bytes as the zip holds them; None when they cannot be read
        (a damaged earlier zip only costs the deflating)."""
        size = self.zip.members[name].info.compress_size
        with contextlib.suppress(DfotaError, OSError):
            stream = os.pread(self.zip.raw_fd(), size, self.zip.data_offset(name))
            if len(stream) == size:
                return stream
        return None
