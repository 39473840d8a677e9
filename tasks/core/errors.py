"""The one exception type for problems a user can fix, and the one way a name is printed."""

from __future__ import annotations

import os
from collections.abc import Iterable

# the exit codes of `dfota` (see dfota.cli)
EXIT_OK, EXIT_INPUT, EXIT_INTERNAL, EXIT_USAGE, EXIT_CHECK = 0, 1, 2, 3, 4
EXIT_BUSY = 5  # another run holds the workspace (see dfota.state.lock)
# `dfota upgrade` (see dfota.upgrade.upgrade): refused before anything was pushed, the
# module reported a failure, contact lost or timed out
EXIT_REFUSED, EXIT_FAILED, EXIT_LOST = 6, 7, 8
_SEVERITY = (EXIT_OK, EXIT_REFUSED, EXIT_FAILED, EXIT_LOST)  # upgrade's codes, worst last
EXIT_INTERRUPTED = 130  # Ctrl-C (SIGINT), as a shell reports it
_SURROGATES = range(0xDC80, 0xDD00)  # bytes 0x80-0xff that are not UTF-8 (surrogateescape)


def shown_path(name: str | bytes | os.PathLike[str]) -> str:
    """A name (a path, a zip entry, a link target) fit for a message, a warning or a log line.

    Every byte a terminal could act on is shown as `\\xHH`: control bytes, DEL, C1 controls
    (as their UTF-8 bytes), any other character that does not print as itself, and bytes
    that are not UTF-8; a backslash is doubled. The text thus stays on its line, and the
    name's bytes can be read back from it exactly.
    """
    text = name.decode("utf-8", "surrogateescape") if isinstance(name, bytes) \
        else os.fspath(name)
    if text.isascii() and text.isprintable() and "\\" not in text:
        return text  # most names: nothing to escape
    return "".join(_shown_char(c) for c in text)


def _shown_char(char: str) -> str:
    if char == "\\":
        return "\\\\"
    if ord(char) in _SURROGATES:
        return f"\\x{ord(char) - 0xDC00:02x}"
    if char.isprintable():
        return char
    return "".join(f"\\x{b:02x}" for b in char.encode("utf-8", "surrogatepass"))


def quoted(name: str | bytes | os.PathLike[str]) -> str:
    """`shown_path` between single quotes, for a name inside a sentence."""
    return f"'{shown_path(name)}'"


class DfotaError(Exception):
    """A user-facing failure: the message is one line naming the file and what is wrong."""

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{shown_path(self.path)}: {message}" if self.path is not None
                         else message)


def bad_zip_name(raw: bytes, zip_path: str | os.PathLike[str]) -> DfotaError:
    """The refusal of a zip entry name that is not UTF-8 (decisions: names), from its bytes."""
    return DfotaError(f"entry name {quoted(raw)} is not valid UTF-8", zip_path)


class CheckFailed(DfotaError):
    """A product of the tool failed a check (a package that does not prove out on the host)."""


class UsageError(DfotaError):
    """The command line is wrong (an unknown option, a missing value)."""


def worst_upgrade(codes: Iterable[int]) -> int:
    """The worst of several modules' upgrade exit codes (lost over failed over refused)."""
    return max(codes, key=lambda c: _SEVERITY.index(c) if c in _SEVERITY else len(_SEVERITY),
               default=EXIT_OK)


class UpgradeFailed(DfotaError):
    """`doit upgrade` did not upgrade every module: `code` is the worst module's exit code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)

    @property
    def failure(self) -> str:
        return f"exit:{self.code}"
