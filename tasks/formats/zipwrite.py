"""A stored zip (targetfiles.zip) written in one pass: every byte written once, in order, and
hashed (sha256) as it is written; each file member's sha1 known or learned as its bytes go by;
members that a earlier zip holds as they would be written are copied from it by the kernel.

The bytes are those `zipio.write_zip` writes for the same items (zipfile's own local headers
and central directory): a zip made with a layout is byte for byte the zip made without one.
A member is copied from the layout zip when its local header (CRC, sizes, name, flags) would
be the same bytes and its content is known to be the same: the same sha1 as the layout's
member recorded (a file), or the same bytes (a folder, a link). The local header holds no
offset and no mode, so a member moves and changes mode without being rewritten.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, NamedTuple, TypedDict, cast

from dfota.core import atomic
from dfota.core.errors import DfotaError, quoted
from dfota.core.runlog import SILENT, Meter
from dfota.core.tree import DIR, SYMLINK
from dfota.formats.zipio import ZipItem, ZipSource, entry_info, in_zip_order
from dfota.state.store import file_stamp

if TYPE_CHECKING:
    from typing_extensions import Unpack

_CHUNK = 1 << 20
_IN_MEMORY = 4 << 20  # a file whose CRC is not known is read whole up to this size
# (a file, its fstat, the sha1 it should have) -> its CRC-32, when the caller knows the file
# as it is (none: it is read to learn it)
KnownCrc = Callable[[Path, os.stat_result, str], "int | None"]


@dataclass
class Traffic:
    """What a write moved, for the log and the tests: members whose bytes went through this
    process, members the kernel copied from the layout zip, and the bytes of each."""

    written: list[str] = field(default_factory=list)  # members written, by name
    copied: int = 0  # members copied by the kernel
    bytes_read: int = 0  # member contents read from the inputs (files, other zips)
    bytes_written: int = 0  # everything this process wrote (headers, data, directory)
    bytes_copied: int = 0  # by the kernel
    bytes_hashed: int = 0  # member contents hashed to learn their sha1


@dataclass(frozen=True, slots=True)
class Layout:
    """A zip whose members may be copied as they are (`zip`, open), with the sha1s of its file
    members by name, as recorded when it was archived (trusted while the zip is intact)."""

    zip: ZipSource
    sha1s: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Written:
    sha256: str
    size: int
    sha1s: dict[str, str]  # every file member's, by name
    traffic: Traffic


class _Out:
    """The zip being written: sequential writes only, each hashed; zipfile writes its central
    directory through it (its `seek` only ever asks for where it is)."""

    def __init__(self, f: IO[bytes], traffic: Traffic) -> None:
        self.f, self.traffic = f, traffic
        self.pos = 0
        self.sha256 = hashlib.sha256()
        self._written_back = 0  # the disk was asked to write up to here

    def write(self, data: bytes) -> int:
        self.f.write(data)
        self.sha256.update(data)
        self.pos += len(data)
        self.traffic.bytes_written += len(data)
        self._write_back()
        return len(data)

    def _write_back(self) -> None:
        """The disk writes while the zip is written: its sync at the end waits less."""
        if self.pos - self._written_back >= atomic.WRITEBACK_BYTES:
            self.f.flush()
            atomic.start_writeback(self.f.fileno(), self._written_back,
                                   self.pos - self._written_back)
            self._written_back = self.pos

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = 0) -> int:
        if (pos, whence) != (self.pos, 0):
            raise ValueError("the zip is written in one pass")
        return pos

    def flush(self) -> None:
        self.f.flush()

    def copy_from(self, fd: int, start: int, length: int, name: Path) -> None:
        """`length` bytes of `fd` from `start` appended by the kernel, hashed as read."""
        self.f.flush()
        out = self.f.fileno()
        at, left = start, length
        while left:
            chunk = os.pread(fd, min(left, _CHUNK), at)
            if not chunk:
                raise DfotaError("changed while the zip was being written; run again", name)
            self.sha256.update(chunk)
            done = 0
            while done < len(chunk):
                try:
                    moved = os.copy_file_range(fd, out, len(chunk) - done, at + done)
                except OSError as exc:  # not between these file systems: the bytes read
                    if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS):
                        raise
                    moved = os.write(out, chunk[done:])
                if moved == 0:
                    raise DfotaError("changed while the zip was being written; run again",
                                     name)
                done += moved
            at, left = at + len(chunk), left - len(chunk)
            self.pos += len(chunk)
            self._write_back()
        self.f.seek(self.pos)
        self.traffic.bytes_copied += length


class _Content(NamedTuple):
    """What a member holds: its CRC-32 and size, and its sha1 or its bytes."""

    crc: int
    size: int
    sha1: str | None
    data: bytes | None = None


def _file_header(info: zipfile.ZipInfo, crc: int, size: int, offset: int) -> bytes:
    """The local header zipfile writes for a stored member (the state it leaves `info` in)."""
    info.flag_bits = 0
    info.CRC, info.file_size, info.compress_size = crc, size, size
    info.header_offset = offset
    return info.FileHeader(size * 1.05 > zipfile.ZIP64_LIMIT)


class _Writer:
    def __init__(self, out: _Out, zf: zipfile.ZipFile, layout: Layout | None,
                 known_crc: KnownCrc | None, sources: Mapping[Path, ZipSource]) -> None:
        self.out, self.zf, self.layout = out, zf, layout
        self.known_crc, self.sources = known_crc, sources
        self.traffic = out.traffic
        self.sha1s: dict[str, str] = {}
        self._layout_fd = layout.zip.raw_fd() if layout else -1
        self._run: list[int] = []  # the layout's range pending copy: [start, end]

    # the members --------------------------------------------------------------------

    def write(self, item: ZipItem) -> None:
        info = entry_info(item, 0, False)
        if item.kind == DIR:
            self._small(item, info, b"")
        elif item.kind == SYMLINK:
            self._small(item, info, item.link.encode("utf-8"))
        elif item.data is not None:
            sha1, crc = hashlib.sha1(item.data).hexdigest(), zlib.crc32(item.data)
            self.sha1s[item.name] = sha1
            if not self._copied(item.name, info, _Content(crc, len(item.data), sha1)):
                self._put(item.name, info, crc, item.data)
        elif item.source_path is not None:
            self._path(item, info)
        elif item.source_zip is not None and item.source_member is not None:
            self._member(item, info, self.sources[item.source_zip], item.source_member)
        else:
            raise ValueError(f"zip item {quoted(item.name)} has no data")

    def _small(self, item: ZipItem, info: zipfile.ZipInfo, data: bytes) -> None:
        crc = zlib.crc32(data)
        if not self._copied(item.name, info, _Content(crc, len(data), None, data)):
            self._put(item.name, info, crc, data)

    def _put(self, name: str, info: zipfile.ZipInfo, crc: int, data: bytes) -> None:
        self._flush_run()
        self.out.write(_file_header(info, crc, len(data), self.out.pos))
        self.out.write(data)
        self._done(name, info)

    def _done(self, name: str, info: zipfile.ZipInfo) -> None:
        self.zf.filelist.append(info)
        self.zf.NameToInfo[info.filename] = info
        self.zf.start_dir = self.out.pos  # where zipfile writes the central directory
        self.traffic.written.append(name)

    def _path(self, item: ZipItem, info: zipfile.ZipInfo) -> None:
        """A regular file: copied from the layout when it holds the same content (the file
        is not even read), else read once: whole when small or its CRC is known, in two
        passes (CRC, then data, which must give the same CRC) only when neither."""
        path = item.source_path
        assert path is not None
        if item.sha1 and self.layout is not None:
            member = self.layout.zip.members.get(item.name)
            if member is not None and self.layout.sha1s.get(item.name) == item.sha1 and \
                    self._copied(item.name, info, _Content(member.info.CRC, member.size,
                                                           item.sha1)):
                self.sha1s[item.name] = item.sha1
                return
        with _open_regular(path, bool(item.sha1)) as (f, st):
            crc = self.known_crc(path, st, item.sha1) if (self.known_crc and item.sha1) \
                else None
            if crc is None and st.st_size <= _IN_MEMORY:
                data = _read_all(f, path, st.st_size)
                self.traffic.bytes_read += len(data)
                self._check_sha1(item, hashlib.sha1(data).hexdigest(), len(data))
                self._put(item.name, info, zlib.crc32(data), data)
                return
            if crc is None:  # large, unknown: its CRC (and sha1) first
                crc, sha1 = _crc_and_sha1(f, path)
                self._check_sha1(item, sha1, st.st_size)
                f.seek(0)
            else:
                self.sha1s[item.name] = item.sha1
            self._flush_run()
            self.out.write(_file_header(info, crc, st.st_size, self.out.pos))
            if _stream(f, self.out, st.st_size, path, self.traffic) != crc or \
                    file_stamp(os.fstat(f.fileno())) != file_stamp(st):
                raise _changed(path)
            self._done(item.name, info)

    def _check_sha1(self, item: ZipItem, sha1: str, size: int) -> None:
        self.traffic.bytes_hashed += size
        if item.sha1 and sha1 != item.sha1:
            assert item.source_path is not None
            raise _changed(item.source_path)
        self.sha1s[item.name] = sha1

    def _member(self, item: ZipItem, info: zipfile.ZipInfo, src: ZipSource,
                member: str) -> None:
        """A member of another zip: copied from the layout when it is the same content,
        else streamed (stored: read in place, its CRC checked; deflated: inflated)."""
        found = src.members[member].info
        if item.sha1 and self._copied(item.name, info,
                                      _Content(found.CRC, found.file_size, item.sha1)):
            self.sha1s[item.name] = item.sha1
            return
        self._flush_run()
        self.out.write(_file_header(info, found.CRC, found.file_size, self.out.pos))
        # hashed only when its sha1 is not known (its CRC is checked either way)
        digest = None if item.sha1 else hashlib.sha1()
        crc = 0
        for chunk in src.chunks(member):
            crc = zlib.crc32(chunk, crc)
            if digest is not None:
                digest.update(chunk)
                self.traffic.bytes_hashed += len(chunk)
            self.out.write(chunk)
            self.traffic.bytes_read += len(chunk)
        src.check_crc(member, crc)
        self.sha1s[item.name] = digest.hexdigest() if digest is not None else item.sha1
        self._done(item.name, info)

    # copies from the layout ---------------------------------------------------------

    def _copied(self, name: str, info: zipfile.ZipInfo, content: _Content) -> bool:
        """Copy member `name` from the layout when its local header is the one this member
        gets and its content is the same (its sha1 against the recorded one, or its bytes
        against the layout's); False, with nothing written, otherwise."""
        crc, size, sha1, data = content
        layout = self.layout
        member = layout.zip.members.get(name) if layout is not None else None
        if layout is None or member is None or member.info.compress_type != zipfile.ZIP_STORED:
            return False
        if sha1 is not None and layout.sha1s.get(name) != sha1:
            return False
        header = _file_header(info, crc, size, self.out.pos)
        start = member.info.header_offset
        end = layout.zip.data_offset(name) + member.info.compress_size
        if end - start != len(header) + size or \
                os.pread(self._layout_fd, len(header), start) != header:
            return False
        if data is not None and data and os.pread(self._layout_fd, size, end - size) != data:
            return False
        # the header was made for where the run ends: the same once the run is copied
        if self._run and self._run[1] == start:
            self._run[1] = end
        else:
            self._flush_run()
            self._run = [start, end]
        info.header_offset = self.out.pos + (self._run[1] - self._run[0]) - (end - start)
        self.zf.filelist.append(info)
        self.zf.NameToInfo[info.filename] = info
        self.traffic.copied += 1
        return True

    def _flush_run(self) -> None:
        if self._run:
            start, end = self._run
            self._run = []
            assert self.layout is not None
            self.out.copy_from(self._layout_fd, start, end - start, self.layout.zip.path)
            self.zf.start_dir = self.out.pos

    def finish(self) -> None:
        self._flush_run()


class StoredWriting(TypedDict, total=False):
    """How `write_stored_zip` writes (each optional)."""

    layout: Layout | None  # a zip whose members may be copied as they are
    known_crc: KnownCrc | None  # the CRC-32 of a file the caller knows
    sources: Mapping[Path, ZipSource] | None  # the open zips member items come from
    meter: Meter  # shows the progress


def write_stored_zip(dest: Path, items: Iterable[ZipItem],
                     **how: Unpack[StoredWriting]) -> Written:
    """Write `items` (sorted by name, stored) to `dest`, a new file of the caller's, in one
    pass; the members of `layout` that would be written as they are there are copied from it
    by the kernel. `known_crc` gives the CRC-32 of a file it knows (so it is read once);
    `sources`: the open zips member items are taken from. Not synced. A failure to read an
    input is a DfotaError naming it; a failure to write (a full disk) is the OSError, for the
    caller to name its folder."""
    layout, meter = how.get("layout"), how.get("meter", SILENT)
    ordered = in_zip_order(items, dest)
    traffic = Traffic()
    with open(dest, "wb") as f:
        out = _Out(f, traffic)
        zf = zipfile.ZipFile(cast(IO[bytes], out), "w", allowZip64=True)
        try:
            writer = _Writer(out, zf, layout, how.get("known_crc"),
                             dict(how.get("sources") or {}))
            bar = meter.progress(f"zipping {dest.name}", len(ordered))
            for item in ordered:
                writer.write(item)
                bar.advance()
            writer.finish()
            bar.finish()
        except BaseException:
            zf.fp = None  # no central directory after a failure: the caller drops the file
            raise
        zf.close()
        f.flush()
    return Written(out.sha256.hexdigest(), out.pos, writer.sha1s, traffic)


@contextlib.contextmanager
def _open_regular(path: Path, checked: bool) -> Iterator[tuple[IO[bytes], os.stat_result]]:
    """A file opened for reading without blocking on a FIFO; refused unless regular
    (`checked`: it was seen before, so its going away is a change)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        if checked and exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise _changed(path) from exc
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _changed(path) if checked else DfotaError("is not a regular file", path)
        yield f, st


def _changed(path: Path) -> DfotaError:
    return DfotaError("changed while the zip was being written; run again", path)


def _read_all(f: IO[bytes], path: Path, size: int) -> bytes:
    try:
        data = f.read(size + 1)
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    if len(data) != size:
        raise _changed(path)
    return data


def _crc_and_sha1(f: IO[bytes], path: Path) -> tuple[int, str]:
    crc, digest = 0, hashlib.sha1()
    try:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            digest.update(chunk)
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    return crc, digest.hexdigest()


def _stream(f: IO[bytes], out: _Out, size: int, path: Path, traffic: Traffic) -> int:
    """Copy `size` bytes of `f` into `out`; their CRC-32 (a file that grew or shrank
    meanwhile is refused)."""
    crc, left = 0, size
    while left:
        try:
            chunk = f.read(min(left, _CHUNK))
        except OSError as exc:
            raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
        if not chunk:
            raise _changed(path)
        crc = zlib.crc32(chunk, crc)
        out.write(chunk)  # a failed write is the caller's to name
        left -= len(chunk)
        traffic.bytes_read += len(chunk)
    return crc
