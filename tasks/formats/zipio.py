"""Read and write the zips of the project: targetfiles.zip and update.zip.

Conventions (those of Info-ZIP `zip -qry0` and of Android's releasetools):
- the Unix mode lives in the high 16 bits of `external_attr`, with `create_system = 3`;
- a symlink is an entry whose mode has S_IFLNK and whose data is the link text, stored;
- a directory is an entry whose name ends in '/';
- entries are written in byte-sorted name order with one fixed timestamp and no extra fields,
  so the same items always give the same bytes.
Reading refuses what could escape the extraction folder or mislead a reader: absolute names,
`..` components, duplicate names, sizes the file cannot hold, and entries over the limits
(`dfota.formats.ziplimits`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NamedTuple, TypedDict, cast

from dfota.core.atomic import atomic_path
from dfota.core.errors import DfotaError, bad_zip_name, quoted
from dfota.core.runlog import SILENT, Meter
from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.formats.ziplimits import (
    ZipLimits,
    check_below_links,
    check_declared,
    check_name,
    zip_limits,
)
from dfota.state.store import file_stamp

if TYPE_CHECKING:
    from typing_extensions import Unpack

FIXED_DATE_TIME = (2009, 1, 1, 0, 0, 0)
_UNIX = 3
_MSDOS_DIR_ATTR = 0x10
_COPY_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class ZipItem:
    """One entry to write. Exactly one data source is set for a file; none for a dir or link."""

    name: str  # without a trailing '/'
    kind: str
    mode: int  # permission bits (0o7777)
    data: bytes | None = None
    source_path: Path | None = None
    source_zip: Path | None = None  # copy member `source_member` of this zip
    source_member: str | None = None
    link: str = ""
    sha1: str = ""  # for `source_path`: the content checked earlier; other bytes are refused

    @property
    def arcname(self) -> str:
        return self.name + "/" if self.kind == DIR else self.name


def dir_item(name: str, mode: int) -> ZipItem:
    return ZipItem(name, DIR, mode)


def bytes_item(name: str, data: bytes, mode: int = 0o644) -> ZipItem:
    return ZipItem(name, FILE, mode, data=data)


def path_item(name: str, path: Path, mode: int, sha1: str = "") -> ZipItem:
    """A file copied from `path`; with `sha1`, only if its content is still that."""
    return ZipItem(name, FILE, mode, source_path=path, sha1=sha1)


def link_item(name: str, target: str) -> ZipItem:
    return ZipItem(name, SYMLINK, 0o777, link=target)


def member_item(name: str, zip_path: Path, member: str, mode: int) -> ZipItem:
    """A file copied from entry `member` of another zip (`ZipSource.item`: any kind)."""
    return ZipItem(name, FILE, mode, source_zip=zip_path, source_member=member)


def entry_info(item: ZipItem, size: int, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(item.arcname, FIXED_DATE_TIME)
    info.create_system = _UNIX
    type_bits = {FILE: stat.S_IFREG, DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}[item.kind]
    info.external_attr = ((type_bits | (item.mode & 0o7777)) << 16) | (
        _MSDOS_DIR_ATTR if item.kind == DIR else 0
    )
    info.compress_type = (
        zipfile.ZIP_DEFLATED if compress and item.kind == FILE else zipfile.ZIP_STORED
    )
    info.file_size = size
    return info


# (file, its fstat, the sha1 it should have) -> the caller knows the file has that content
Vouch = Callable[[Path, os.stat_result, str], bool]
# an entry's whole bytes -> a compressor for zipfile that gives back a deflate stream made
# before for them, or None (`dfota.formats.zipdeflate`)
Reuse = Callable[[bytes], Any]
_REUSE_MAX = 16 << 20  # an entry up to this size is read whole to look for its stream


class ZipWriting(TypedDict, total=False):
    """How `write_zip` writes (each optional)."""

    compress: bool  # deflated files (default: stored)
    meter: Meter  # shows the progress
    open_zips: Mapping[Path, zipfile.ZipFile] | None  # zips the caller has open already
    vouch: Vouch | None  # knows a file as it is: it need not be hashed again
    durable: bool  # False: not synced to disk (`atomic_path`)
    reuse: Reuse | None  # deflate streams made before (`dfota.formats.zipdeflate`)


def in_zip_order(items: Iterable[ZipItem], dest: Path) -> list[ZipItem]:
    """`items` in the order every zip of the project has (by name's bytes), one per name."""
    ordered = sorted(items, key=lambda i: i.arcname.encode("utf-8"))
    seen: set[str] = set()
    for item in ordered:
        if item.name in seen:
            raise DfotaError(f"two entries named {quoted(item.name)} would be written", dest)
        seen.add(item.name)
    return ordered


def write_zip(dest: Path, items: Iterable[ZipItem], **how: Unpack[ZipWriting]) -> None:
    """Write `items` to `dest` atomically, sorted by name, stored unless `compress`;
    `meter` shows the progress. Members are copied from `open_zips` (`ZipSource.zipfile`)
    where the caller has their zip open already. A file item with a `sha1` is hashed again
    as it is copied, unless `vouch` knows the file as it is (then its `file_stamp` must not
    move while it is copied). `durable=False`: not synced to disk (`atomic_path`)."""
    ordered = in_zip_order(items, dest)
    with contextlib.ExitStack() as sources, \
            atomic_path(dest, durable=how.get("durable", True)) as tmp, \
            zipfile.ZipFile(tmp, "w", allowZip64=True) as out:
        writer = _ZipWriter(out, how, sources)
        bar = how.get("meter", SILENT).progress(f"zipping {dest.name}", len(ordered))
        for item in ordered:
            writer.write(item)
            bar.advance()
        bar.finish()


class _ZipWriter:
    """The items written one by one into `out`. A zip that members are copied from is opened
    once, on `sources` (closed with it), unless the caller has it open already."""

    def __init__(self, out: zipfile.ZipFile, how: ZipWriting,
                 sources: contextlib.ExitStack) -> None:
        self.out, self.sources = out, sources
        self.compress, self.vouch = how.get("compress", False), how.get("vouch")
        self.reuse = how.get("reuse")
        self.opened: dict[Path, zipfile.ZipFile] = dict(how.get("open_zips") or {})

    def write(self, item: ZipItem) -> None:
        out, compress = self.out, self.compress
        if item.kind == DIR:
            out.writestr(entry_info(item, 0, compress), b"")
        elif item.kind == SYMLINK:
            out.writestr(entry_info(item, 0, compress), item.link.encode("utf-8"))
        elif item.data is not None:
            out.writestr(entry_info(item, len(item.data), compress), item.data)
        elif item.source_path is not None:
            self.write_path(item)
        elif item.source_zip is not None and item.source_member is not None:
            self.copy_member(item, item.source_zip, item.source_member)
        else:
            raise ValueError(f"zip item {quoted(item.name)} has no data")

    def copy_member(self, item: ZipItem, source: Path, member: str) -> None:
        zf = self.opened.get(source)
        if zf is None:
            zf = self.opened[source] = self.sources.enter_context(open_zip(source))
        info = zf.getinfo(member)
        try:
            src = zf.open(info)
        except _CORRUPT as exc:
            raise DfotaError(f"entry {quoted(member)} is corrupt ({exc})", source) from exc
        with src:
            self.stream(entry_info(item, info.file_size, self.compress), src,
                        lambda exc: DfotaError(f"entry {quoted(member)} is corrupt ({exc})",
                                               source))

    def write_path(self, item: ZipItem) -> None:
        """Copy a regular file. Never blocks on a FIFO; with `item.sha1`, the bytes written
        must be the bytes checked before (a file swapped meanwhile, for a link to a host file
        say, is refused rather than packed): hashed again, or vouched for by the caller and
        unchanged."""
        path = item.source_path
        assert path is not None
        def changed() -> DfotaError:
            return DfotaError("changed while the zip was being written; run again", path)

        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            if item.sha1 and exc.errno in (errno.ENOENT, errno.ENOTDIR):  # gone since checked
                raise changed() from exc
            raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
        with os.fdopen(fd, "rb") as src:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise changed() if item.sha1 else DfotaError("is not a regular file", path)
            vouched = bool(item.sha1) and self.vouch is not None and \
                self.vouch(path, st, item.sha1)
            digest = hashlib.sha1() if item.sha1 and not vouched else None
            self.stream(entry_info(item, st.st_size, self.compress), src,
                        lambda exc: DfotaError(f"cannot read file ({_reason(exc)})", path),
                        digest)
            if vouched and file_stamp(os.fstat(fd)) != file_stamp(st):
                raise changed()
        if digest is not None and digest.hexdigest() != item.sha1:
            raise changed()

    def stream(self, info: zipfile.ZipInfo, src: IO[bytes],
               read_error: Callable[[Exception], DfotaError], digest: Any = None) -> None:
        """Copy `src` into a new entry, feeding `digest` (a hashlib object) when given. A
        deflated entry of at most `_REUSE_MAX` is read whole first, to take the stream
        `reuse` has for its bytes, if any.

        A failure to read is the source's fault (`read_error`); a failure to write (a full disk)
        is left to the caller, which names the zip being written.
        """
        whole = self.reuse is not None and info.compress_type == zipfile.ZIP_DEFLATED and \
            info.file_size <= _REUSE_MAX
        with self.out.open(info, "w", force_zip64=info.file_size >= zipfile.ZIP64_LIMIT) as dst:
            while True:
                try:
                    chunk = src.read(_REUSE_MAX + 1 if whole else _COPY_CHUNK)
                except _CORRUPT as exc:
                    raise read_error(exc) from exc
                if not chunk:
                    break
                if whole and self.reuse is not None and len(chunk) <= _REUSE_MAX:
                    replay = self.reuse(chunk)
                    if replay is not None:  # in place of the compressor zipfile chose
                        cast(Any, dst)._compressor = replay
                whole = False
                if digest is not None:
                    digest.update(chunk)
                dst.write(chunk)


# what reading a damaged zip member can raise
_CORRUPT = (zipfile.BadZipFile, OSError, EOFError, zlib.error)


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "strerror", None) or exc)


class Member(NamedTuple):
    """One entry of a zip being read (a tuple: a targetfiles.zip has thousands to make)."""

    name: str  # without a trailing '/'
    kind: str
    mode: int
    size: int
    info: zipfile.ZipInfo


def member_kind_and_mode(info: zipfile.ZipInfo) -> tuple[str, int]:
    unix = info.external_attr >> 16 if info.create_system == _UNIX else 0
    if info.filename.endswith("/") or stat.S_ISDIR(unix):
        return DIR, stat.S_IMODE(unix) if unix else 0o755
    if stat.S_ISLNK(unix):
        return SYMLINK, 0o777
    return FILE, stat.S_IMODE(unix) if unix else 0o644


def open_zip(path: Path) -> zipfile.ZipFile:
    """A zip opened for reading, every entry named from its raw bytes as UTF-8.

    With the UTF-8 flag (0x800) the names are UTF-8; without it they are taken as UTF-8 too
    when they are valid UTF-8 (Info-ZIP on Linux writes them so; zipfile alone would read
    them as code page 437: `münchen.bin` as `m├╝nchen.bin`); any other name is refused.
    """
    try:
        return zipfile.ZipFile(path, metadata_encoding="utf-8")
    except UnicodeDecodeError as exc:  # `object` holds the name's bytes
        raise bad_zip_name(bytes(exc.object), path) from None


class ZipSource:
    """A zip opened once for reading, checked as a whole before any entry is used."""

    def __init__(self, path: Path, limits: ZipLimits | None = None) -> None:
        """`limits`: what an entry may declare (default: the command's, `zip_limits`)."""
        self.path = path
        self.limits = limits or zip_limits()
        self._sha1s: dict[str, str] = {}  # by entry, once hashed
        self._raw: IO[bytes] | None = None  # the file, for hashing stored entries in place
        try:
            self._zf = open_zip(path)
        except FileNotFoundError as exc:
            raise DfotaError("file not found", path) from exc
        except (zipfile.BadZipFile, zipfile.LargeZipFile) as exc:
            raise DfotaError(f"not a usable zip file ({exc})", path) from exc
        except OSError as exc:
            raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
        try:
            self.members = self._check()
        except BaseException:
            self._zf.close()
            raise

    def _check(self) -> dict[str, Member]:
        members: dict[str, Member] = {}
        file_size = self.path.stat().st_size
        declared = 0
        for info in self._zf.infolist():
            name = check_name(info.filename, self.path)
            if name in members:
                raise DfotaError(f"entry {quoted(name)} appears twice", self.path)
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise DfotaError(f"entry {quoted(name)} uses an unsupported compression method "
                                 f"{info.compress_type}", self.path)
            check_declared(name, info, self.limits, self.path)
            declared += info.compress_size
            kind, mode = member_kind_and_mode(info)
            members[name] = Member(name, kind, mode, info.file_size, info)
        check_below_links(members, {n for n, m in members.items() if m.kind == SYMLINK},
                          self.path)
        if declared > file_size:
            raise DfotaError(f"entries declare {declared} bytes of data but the file holds "
                             f"{file_size}; it is truncated or forged", self.path)
        return members

    def __enter__(self) -> ZipSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._raw is not None:
            self._raw.close()
        self._zf.close()

    @property
    def zipfile(self) -> zipfile.ZipFile:
        """The open zip, for readers that take one (write_zip, the diff reader)."""
        return self._zf

    def names(self, prefix: str = "") -> Iterator[str]:
        return (n for n in self.members if n.startswith(prefix))

    def open(self, name: str) -> IO[bytes]:
        return self._zf.open(self.members[name].info)

    def read(self, name: str) -> bytes:
        info = self.members[name].info
        if info.compress_type == zipfile.ZIP_STORED:
            # read in place, its CRC checked: zipfile's reader costs more than the copy
            data = self._pread(info.file_size, self.data_offset(name), name)
            self.check_crc(name, zlib.crc32(data))
            return data
        try:
            return self._zf.read(info)
        except _CORRUPT as exc:
            raise DfotaError(f"entry {quoted(name)} is corrupt ({exc})", self.path) from exc

    def check_crc(self, name: str, crc: int) -> None:
        """`crc`, computed over the bytes of member `name`, is the one its entry declares."""
        if crc != self.members[name].info.CRC:
            raise DfotaError(f"entry {quoted(name)} is corrupt (Bad CRC-32 for file "
                             f"{quoted(name)})",
                             self.path)

    def read_hashed(self, name: str) -> bytes:
        """`read`, the sha1 of the bytes kept for `sha1` (one pass where both are needed)."""
        data = self.read(name)
        self._sha1s[name] = hashlib.sha1(data).hexdigest()
        return data

    def link_target(self, name: str) -> str:
        return self.read(name).decode("utf-8", "surrogateescape")

    def item(self, name: str) -> ZipItem:
        """Entry `name` as an item of another zip, of the same name, kind and mode: a file
        copied, a directory or a link made again."""
        member = self.members[name]
        if member.kind == FILE:
            return member_item(name, self.path, member.info.filename, member.mode)
        if member.kind == SYMLINK:
            return ZipItem(name, SYMLINK, member.mode, link=self.link_target(name))
        return dir_item(name, member.mode)

    def _pread(self, size: int, at: int, name: str) -> bytes:
        """`size` bytes of the file from offset `at` (an entry's data read in place)."""
        try:
            if self._raw is None:
                self._raw = open(self.path, "rb")  # noqa: SIM115 (closed by close())
            data = os.pread(self._raw.fileno(), size, at)
        except OSError as exc:
            raise DfotaError(f"cannot read file ({exc.strerror})", self.path) from exc
        if len(data) != size:
            raise DfotaError(f"entry {quoted(name)} is corrupt (cut short)", self.path)
        return data

    def raw_fd(self) -> int:
        """The zip's file, opened for reading in place (closed by `close`)."""
        if self._raw is None:
            self._pread(0, 0, "")
        assert self._raw is not None
        return self._raw.fileno()

    def chunks(self, name: str) -> Iterator[bytes]:
        """An entry's content in pieces: a stored one read in place (its CRC left to the
        caller), a deflated one inflated (its CRC checked)."""
        info = self.members[name].info
        if info.compress_type == zipfile.ZIP_STORED:
            at, left = self.data_offset(name), info.file_size
            while left:
                chunk = self._pread(min(left, _COPY_CHUNK), at, name)
                yield chunk
                at, left = at + len(chunk), left - len(chunk)
            return
        try:
            with self.open(name) as f:
                while chunk := f.read(_COPY_CHUNK):
                    yield chunk
        except _CORRUPT as exc:
            raise DfotaError(f"entry {quoted(name)} is corrupt ({exc})", self.path) from exc

    def data_offset(self, name: str) -> int:
        """Where an entry's data starts (after its local header)."""
        info = self.members[name].info
        header = self._pread(30, info.header_offset, name)
        if header[:4] != b"PK\x03\x04":
            raise DfotaError(f"entry {quoted(name)} is corrupt (no local header)", self.path)
        name_len, extra_len = struct.unpack_from("<HH", header, 26)
        return info.header_offset + 30 + int(name_len) + int(extra_len)

    def _stored_sha1(self, name: str) -> str | None:
        """The sha1 of a stored entry read straight from the file (zipfile's reader costs
        more than hashing a small file), its CRC checked; None for a compressed entry."""
        info = self.members[name].info
        if info.compress_type != zipfile.ZIP_STORED:
            return None
        at, left = self.data_offset(name), info.file_size
        digest, crc = hashlib.sha1(), 0
        while left:
            chunk = self._pread(min(left, _COPY_CHUNK), at, name)
            digest.update(chunk)
            crc = zlib.crc32(chunk, crc)
            at, left = at + len(chunk), left - len(chunk)
        self.check_crc(name, crc)
        return digest.hexdigest()

    def known_sha1s(self) -> dict[str, str]:
        """The sha1s of the entries hashed so far, by name (for a record the caller keys by
        this zip's bytes, its sha256)."""
        return dict(self._sha1s)

    def learn_sha1s(self, kept: object) -> bool:
        """Take sha1s `known_sha1s` gave for this very zip (the caller vouches that they are
        this zip's); False when there are none to take."""
        if not isinstance(kept, dict):
            return False
        self._sha1s.update({name: sha1 for name, sha1 in kept.items()
                            if name in self.members and isinstance(sha1, str)})
        return bool(kept)

    def sha1(self, name: str) -> str:
        """An entry's sha1 (kept: the zip is read, never written, while open)."""
        if name not in self._sha1s:
            self._sha1s[name] = self._stored_sha1(name) or self._streamed_sha1(name)
        return self._sha1s[name]

    def _streamed_sha1(self, name: str) -> str:
        digest = hashlib.sha1()
        try:
            with self.open(name) as f:
                while chunk := f.read(_COPY_CHUNK):
                    digest.update(chunk)
        except _CORRUPT as exc:
            raise DfotaError(f"entry {quoted(name)} is corrupt ({exc})", self.path) from exc
        return digest.hexdigest()
