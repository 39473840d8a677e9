"""The bytes of the module's files and partitions: held in memory when small, else left where
they lie (a member of the source's zip, an entry of the package, a temporary file) and read in
pieces each time they are used.

A content is `bytes` or `Stored`, and never changes once made. What the updater asks of most
contents is their size and sha1, both known without holding them: only a patch's work (its
source, its patch and its output) is held whole, one patch at a time (`whole`). Small contents
are held once read, up to `HOLD` bytes in all; others are read again when used, and outputs not
held go to a temporary file of their run (`Spill`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from itertools import chain

PIECE = 1 << 20  # bytes read or hashed at a time
KEEP = 1 << 20  # a content up to this size may be held in memory ...
HOLD = 64 << 20  # ... while all those held by this process stay under this
_held = [0]


def start_holding() -> None:
    """A new run begins: what earlier runs held is gone, or soon will be."""
    _held[0] = 0


def may_hold(size: int, most: int = KEEP) -> bool:
    """Whether a content of `size` bytes (at most `most`) may be held in memory (then it
    counts as held)."""
    if size > most or _held[0] + size > HOLD:
        return False
    _held[0] += size
    return True

Pieces = Callable[[], Iterator[bytes]]


class Stored:
    """Bytes left where they are until used: `pieces()` reads them again each time, in order
    (each reader checks that they are still what was hashed, where that is known). Every copy
    of a device shares one; a small one is held once read whole."""

    __slots__ = ("_data", "_pieces", "_sha1", "size")

    def __init__(self, size: int, pieces: Pieces, *, sha1: str | None = None,
                 data: bytes | None = None) -> None:
        """`data`: the bytes, when read already (kept); `sha1`: theirs, when known."""
        self.size = size
        self._pieces = pieces
        self._sha1 = sha1
        self._data = data

    def pieces(self) -> Iterator[bytes]:
        if self._data is not None:
            return iter((self._data,))
        return _counted(self._pieces(), self.size)

    def sha1(self) -> str:
        if self._sha1 is None:
            digest = hashlib.sha1()
            for piece in self.pieces():
                digest.update(piece)
            self._sha1 = digest.hexdigest()
        return self._sha1

    def get(self) -> bytes:
        """The bytes whole: a patch's work, or a small file."""
        if self._data is not None:
            return self._data
        data = b"".join(self.pieces())
        if may_hold(self.size):
            self._data = data
        return data

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        if not isinstance(other, (bytes, Stored)):
            return NotImplemented
        return same_content(self, other)

    __hash__ = None  # type: ignore[assignment]  # equal by content, which may be unread


Content = bytes | Stored


def _counted(pieces: Iterator[bytes], size: int) -> Iterator[bytes]:
    """`pieces`, which must come to `size` bytes."""
    seen = 0
    for piece in pieces:
        seen += len(piece)
        if seen > size:
            break
        yield piece
    if seen != size:
        raise ValueError(f"stored bytes: {seen} read, {size} expected")


def size_of(content: Content) -> int:
    return content.size if isinstance(content, Stored) else len(content)


def sha1_of(content: Content) -> str:
    if isinstance(content, Stored):
        return content.sha1()
    return hashlib.sha1(content).hexdigest()


def pieces_of(content: Content) -> Iterator[bytes]:
    if isinstance(content, Stored):
        return content.pieces()
    return iter((content,))


def whole(content: Content) -> bytes:
    """The bytes whole (a patch's work)."""
    return content.get() if isinstance(content, Stored) else content


def same_content(a: Content, b: Content) -> bool:
    """Whether two contents are the same bytes: by their sha1s when either is stored."""
    if a is b:
        return True
    if isinstance(a, bytes) and isinstance(b, bytes):
        return a == b
    return size_of(a) == size_of(b) and sha1_of(a) == sha1_of(b)


def prefix(content: Content, count: int) -> Content:
    """The first `count` bytes (`count` at most the size)."""
    if isinstance(content, bytes):
        return content[:count]
    if count <= KEEP:
        return b"".join(_take(content.pieces(), count))
    return Stored(count, lambda: _take(content.pieces(), count))


def _take(pieces: Iterator[bytes], count: int) -> Iterator[bytes]:
    for piece in pieces:
        if count <= 0:
            return
        yield piece[:count]
        count -= len(piece)


def joined(parts: Iterable[Content]) -> Content:
    """The contents one after the other."""
    items = list(parts)
    size = sum(size_of(c) for c in items)
    if size <= KEEP:
        return b"".join(whole(c) for c in items)
    return Stored(size, lambda: chain.from_iterable(pieces_of(c) for c in items))


def filled(content: Content, count: int, fill: bytes) -> Content:
    """`content` followed by `fill` bytes (one byte value) up to `count` bytes."""
    more = count - size_of(content)
    if more <= 0:
        return content
    if size_of(content) + more <= KEEP:
        return whole(content) + fill * more
    return joined([content, Stored(more, lambda: _repeat(fill, more))])


def _repeat(fill: bytes, count: int) -> Iterator[bytes]:
    block = fill * min(count, PIECE)
    while count > 0:
        yield block[:count]
        count -= len(block)


def write_to(content: Content, path: str | os.PathLike[str]) -> None:
    """The content written to a new file, in pieces."""
    with open(path, "wb") as out:
        for piece in pieces_of(content):
            out.write(piece)


def checked(pieces: Iterator[bytes], sha1: str, changed: Callable[[], Exception]
            ) -> Iterator[bytes]:
    """`pieces`, which must still have `sha1` once all are read (else `changed()` is
    raised)."""
    digest = hashlib.sha1()
    for piece in pieces:
        digest.update(piece)
        yield piece
    if digest.hexdigest() != sha1:
        raise changed()


def file_sha1(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            digest.update(piece)
    return digest.hexdigest()


class Spill:
    """Where a run keeps the large contents it makes (patch outputs): one temporary file per
    process (a forked worker opens its own), appended to, each content read back by offset.
    `close` removes them."""

    def __init__(self) -> None:
        self._files: dict[int, tuple[int, int]] = {}  # pid -> (fd, size)

    def keep(self, data: bytes, sha1: str | None = None) -> Content:
        """`data` as a content: itself when it may be held, else written out and read back
        when used."""
        if may_hold(len(data)):
            return data
        pid = os.getpid()
        if pid not in self._files:
            fd, name = tempfile.mkstemp(prefix="dfota-spill.")
            os.unlink(name)  # gone with its last descriptor
            self._files[pid] = (fd, 0)
        fd, at = self._files[pid]
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, at + len(data) - len(view)):]
        self._files[pid] = (fd, at + len(data))
        size = len(data)
        return Stored(size, lambda: _read_range(fd, at, size),
                      sha1=sha1 or hashlib.sha1(data).hexdigest())

    def close(self) -> None:
        files, self._files = self._files, {}
        for pid, (fd, _) in files.items():
            if pid == os.getpid():
                os.close(fd)


def _read_range(fd: int, at: int, size: int) -> Iterator[bytes]:
    end = at + size
    while at < end:
        piece = os.pread(fd, min(PIECE, end - at), at)
        if not piece:
            return
        at += len(piece)
        yield piece
