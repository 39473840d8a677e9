"""Where a file's bytes are (a zip member or a file on disk, with its sha1 and size), and a
reader that keeps each zip open once; a read error said in one short line.
"""

from __future__ import annotations

import hashlib
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from dfota.core.errors import DfotaError, quoted
from dfota.formats.zipio import open_zip

_HEAD = 8
_REASON_MAX = 300
READ_ERRORS = (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class Blob:
    """Where a file's bytes are: member `member` of the zip `zip_path`, or the file `path`."""

    zip_path: Path | None
    member: str | None
    path: Path | None
    sha1: str
    size: int

    def __post_init__(self) -> None:
        in_zip = self.zip_path is not None and self.member is not None
        on_disk = self.path is not None
        if in_zip == on_disk or (self.zip_path is None) != (self.member is None):
            raise ValueError("a blob is either a zip member or a file on disk")

    @classmethod
    def in_zip(cls, zip_path: Path, member: str, sha1: str, size: int) -> Blob:
        return cls(zip_path, member, None, sha1, size)

    @classmethod
    def on_disk(cls, path: Path, sha1: str, size: int) -> Blob:
        return cls(None, None, path, sha1, size)

    @property
    def where(self) -> str:
        if self.path is not None:
            return str(self.path)
        return f"{self.zip_path}:{self.member}"


def check_blob(data: bytes, blob: Blob, role: str, name: str) -> None:
    if len(data) != blob.size or hashlib.sha1(data).hexdigest() != blob.sha1:
        raise DfotaError(f"{role} of {quoted(name)} does not match its recorded size and sha1 "
                         f"({blob.size} bytes, {blob.sha1})", blob.zip_path or blob.path)


class BlobReader:
    """Reads blobs, keeping each zip open once; `opened` are zips the caller keeps open."""

    def __init__(self, opened: Mapping[Path, zipfile.ZipFile] | None = None) -> None:
        self._opened = dict(opened or {})
        self._zips: dict[Path, zipfile.ZipFile] = {}

    def __enter__(self) -> BlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for zf in self._zips.values():
            zf.close()

    def open(self, blob: Blob) -> IO[bytes]:
        if blob.path is not None:
            return open(blob.path, "rb")
        assert blob.zip_path is not None and blob.member is not None
        zf = self._opened.get(blob.zip_path) or self._zips.get(blob.zip_path)
        if zf is None:
            zf = self._zips[blob.zip_path] = open_zip(blob.zip_path)
        return zf.open(blob.member)

    def read(self, blob: Blob) -> bytes:
        with self.open(blob) as f:
            return f.read()

    def head(self, blob: Blob) -> bytes:
        try:
            with self.open(blob) as f:
                return f.read(_HEAD)
        except READ_ERRORS as exc:
            raise DfotaError(f"cannot read {blob.member or 'the file'} ({describe_error(exc)})",
                             blob.zip_path or blob.path) from exc


def describe_error(exc: BaseException) -> str:
    """What went wrong, in one line of at most a few hundred characters."""
    if isinstance(exc, KeyError) and exc.args:
        text = str(exc.args[0])
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    elif isinstance(exc, MemoryError):
        text = "out of memory"
    else:
        text = f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= _REASON_MAX else text[: _REASON_MAX - 3] + "..."
