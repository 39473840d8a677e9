"""Write files so that a reader sees either the old file or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tasks.errors import DfotaError


@contextlib.contextmanager
def atomic_path(dest: Path, mode: int = 0o644) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success it is synced and renamed over `dest`.

    On any exception (or a kill) the temporary file is removed or left under a dot-name that no
    reader looks at; `dest` keeps its old content.
    """
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise DfotaError(f"cannot write here ({exc.strerror})", parent) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, mode)  # mkstemp makes 0600; the result should not depend on the umask
        _fsync(tmp)
        os.replace(tmp, dest)
        _fsync(parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise DfotaError(f"cannot write file ({exc.strerror})", dest) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(dest: Path, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: Path, text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
