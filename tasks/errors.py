"""The one exception type for problems a user can fix."""

from __future__ import annotations

import os

# the exit codes of `dfota` (see tasks.cli)
EXIT_OK, EXIT_INPUT, EXIT_INTERNAL, EXIT_USAGE, EXIT_CHECK = 0, 1, 2, 3, 4


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path fit for a one-line message: bytes that are not UTF-8, and control characters,
    are shown escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class DfotaError(Exception):
    """A user-facing failure: the message is one line naming the file and what is wrong."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{shown_path(self.path)}: {message}" if self.path is not None
                         else message)


class CheckFailed(DfotaError):
    """A product of the tool failed a check (a package that does not prove out on the host)."""
