"""Write files so that a reader sees either the old file or the whole new one, never a part
(and read back the JSON records written so)."""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import os
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar

from dfota.core import owner
from dfota.core.errors import DfotaError

T = TypeVar("T")


@contextlib.contextmanager
def atomic_path(dest: Path, mode: int = 0o644, *, durable: bool = True,
                failure: Callable[[OSError], DfotaError] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is synced and renamed over `dest`
    (`durable=False`: not synced, for a file the caller syncs itself, `background_sync`).
    `failure`: the error that reports a failed write (default: one naming `dest`, or its
    folder when no temporary file can be made there).

    On any exception (or a kill) the temporary file is removed or left under a dot-name that no
    reader looks at, `.<name>.<random>.<run tag>.tmp` (dfota.core.owner); `dest` keeps its old
    content. A successful write removes what killed writers of `dest` left behind (so a kill
    does not cost the disk space of a file for good), never the file of a live writer.
    """
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f"{owner.suffix()}.tmp",
                                        dir=parent)
    except OSError as exc:
        raise (failure(exc) if failure else
               DfotaError(f"cannot write here ({exc.strerror})", parent)) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp makes 0600; the result should not depend on the umask
        if durable:
            fsync_path(tmp)
        os.replace(tmp, dest)
        if durable:
            fsync_path(parent)
        remove_leftovers(dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise (failure(exc) if failure else
               DfotaError(f"cannot write file ({exc.strerror})", dest)) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_leftovers(dest: Path) -> None:
    """Remove the temporary files that killed writers of `dest` left beside it (the files of
    writers still running are theirs: dfota.core.owner)."""
    for stale in dest.parent.glob(f".{glob.escape(dest.name)}.*.tmp"):
        if owner.is_leftover(stale.name):
            with contextlib.suppress(OSError):
                stale.unlink()


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object this tool wrote (a cache or record); {} when it is missing or damaged."""
    try:
        found = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_text(dest: Path, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


class Background(Generic[T]):
    """`work` in a thread from now on (a wait for the disk or the kernel, or hashing, which
    lets the interpreter go: the caller goes on meanwhile)."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._done: list[T] = []
        self._failed: list[Exception] = []
        self._work = work
        self._thread = threading.Thread(target=self._run, name=name)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._done.append(self._work())
        except Exception as exc:  # raised in the caller's thread by `wait`
            self._failed.append(exc)

    def wait(self) -> T:
        """Wait for the work: what it returned, or what it raised."""
        self._thread.join()
        if self._failed:
            raise self._failed.pop()
        return self._done[0]

    def join(self) -> None:
        """Wait for the work, whatever it met (the caller is failing already)."""
        self._thread.join()


def background_sync(path: Path) -> Callable[[], None]:
    """Start syncing `path` to disk in a thread; the function returned waits for it, raising
    what it met."""

    def sync() -> None:
        try:
            fsync_path(path)
        except OSError as exc:
            raise DfotaError(f"cannot write file ({exc.strerror})", path) from exc

    return Background(sync, f"sync {path.name}").wait


# what the disk is asked to write at a time while a large file is written
WRITEBACK_BYTES = 16 << 20
_SYNC_FILE_RANGE_WRITE = 2  # start the writing of the range's dirty pages; do not wait


def start_writeback(fd: int, start: int, length: int) -> bool:
    """Have the kernel start writing `length` bytes of `fd` from `start` to the disk, without
    waiting (Linux's sync_file_range): the sync of the whole file then finds less left to
    write. Only advice (False: not given, where it is not offered or not for this file); a
    failure to write is the sync's to say."""
    call = _sync_file_range()
    return call is not None and call(fd, start, length, _SYNC_FILE_RANGE_WRITE) == 0


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    import ctypes  # here: a run with nothing to write need not load it

    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux's C library
        return None
    call.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    call.restype = ctypes.c_int
    return call


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_synced(inp: BinaryIO, dest: Path, name: Path) -> None:
    """The open file `inp`, whole, copied by the kernel to the new file `dest` (sendfile:
    across file systems too) and synced; `inp` cut short meanwhile is an error naming
    `name`."""
    with open(dest, "wb") as out:
        left, done = os.fstat(inp.fileno()).st_size, 0
        while left:
            moved = os.sendfile(out.fileno(), inp.fileno(), None,
                                min(left, WRITEBACK_BYTES))
            if moved == 0:
                raise DfotaError("changed while it was being copied; run again", name)
            start_writeback(out.fileno(), done, moved)
            left, done = left - moved, done + moved
        os.fsync(out.fileno())
