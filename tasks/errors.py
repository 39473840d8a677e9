"""The one exception type for problems a user can fix."""

from __future__ import annotations

import os


class DfotaError(Exception):
    """A user-facing failure: the message is one line naming the file and what is wrong."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
