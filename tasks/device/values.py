"""The values a script works with, and the C number readers the device's functions use.

A value is a string (bytes) or a blob (a file or entry read whole). Numbers are read as the
updater's C library reads them (strtol, strtoul, sscanf, strtod), whitespace and all.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dfota.device.contents import Content
from dfota.formats.edify_parse import Node

SPACE = b" \t\n\v\f\r"
_HEXDIGITS = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True)
class Blob:
    """A binary value (a file or an entry, as held or left where it lies); None when the read
    failed."""

    data: Content | None


Value = bytes | Blob


class Abort(Exception):
    """The script aborts with `message`; `check`: the function whose failed `assert` stopped
    it ("apply_patch_check" or "apply_patch_space"), when one did."""

    def __init__(self, message: str, check: str | None = None) -> None:
        self.message = message
        self.check = check
        super().__init__(message)


def argc(name: str, args: Sequence[Node], *allowed: int) -> None:
    """Abort unless the function `name` got one of the `allowed` numbers of arguments."""
    if len(args) not in allowed:
        expected = " or ".join(str(n) for n in allowed)
        raise Abort(f"{name}() expects {expected} args, got {len(args)}")


@functools.lru_cache(maxsize=4096)  # scripts pass the same few numbers again and again
def c_number(text: bytes, base: int) -> tuple[int, int]:
    """(value, end) as strtol/strtoul read `text`; end 0 when no digit was read."""
    i, size = 0, len(text)
    while i < size and text[i] in SPACE:
        i += 1
    negative = False
    if i < size and text[i] in b"+-":
        negative = text[i] == 0x2D
        i += 1
    if (base in (0, 16) and text[i : i + 2] in (b"0x", b"0X") and i + 2 < size
            and text[i + 2] in _HEXDIGITS):
        base, i = 16, i + 2
    elif base == 0:
        base = 8 if text[i : i + 1] == b"0" else 10
    start, value = i, 0
    while i < size:
        digit = int(chr(text[i]), 36) if chr(text[i]).isalnum() and text[i] < 0x80 else 99
        if digit >= base:
            break
        value, i = value * base + digit, i + 1
    if i == start:
        return 0, 0
    return (-value if negative else value), i


def strtoul_whole(text: bytes) -> int | None:
    """strtoul(text, &end, 0) that must use the whole non-empty text, stored in a C int."""
    value, end = c_number(text, 0)
    if not text or end != len(text):
        return None
    value = min(value, (1 << 64) - 1) if value >= 0 else value % (1 << 64)
    return value & 0xFFFFFFFF


def strtol10(text: bytes) -> tuple[int, bool]:
    """strtol(text, &end, 10): (value, whether any digit was read)."""
    value, end = c_number(text, 10)
    return max(min(value, (1 << 63) - 1), -(1 << 63)), end > 0


def scanf_int(text: bytes, base: int) -> int | None:
    value, end = c_number(text, base)
    return value if end else None


def strtod(text: bytes) -> float:
    found = re.match(rb"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", text)
    return float(found.group(0)) if found else 0.0


@functools.lru_cache(maxsize=4096)  # the same sums are parsed at every re-run
def parse_sha1(text: bytes) -> bytes | None:
    if len(text) != 40 or any(c not in _HEXDIGITS for c in text):
        return None
    return bytes.fromhex(text.decode())


def chown_id(value: int) -> int | None:
    """A uid/gid as chown takes it: (uid_t)-1 leaves the field alone."""
    value &= 0xFFFFFFFF
    return None if value == 0xFFFFFFFF else value


def as_text(value: bytes) -> str:
    return value.decode("utf-8", "surrogateescape")

