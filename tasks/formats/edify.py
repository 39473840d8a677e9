"""Writing edify, the language of the updater-script: string literals, modes and calls."""

from __future__ import annotations

import re

from dfota.core.errors import DfotaError

_NAME = re.compile(r"[A-Za-z0-9_]+")
_SIMPLE = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t"}
_PLAIN = re.compile(r'[^\x00-\x1f\x7f"\\]*')  # nothing to escape (and no NUL)


def _escape(char: str) -> str:
    simple = _SIMPLE.get(char)
    if simple is not None:
        return simple
    if char < " " or char == "\x7f":
        return f"\\x{ord(char):02x}"
    return char


def quote(value: str) -> str:
    """A double-quoted edify literal that the device's lexer reads back as exactly `value`.

    Non-ASCII text stays as its UTF-8 bytes; the device lexer copies them through.
    """
    plain = _PLAIN.fullmatch(value) is not None
    if not plain and "\0" in value:
        raise DfotaError(f"an edify string cannot hold a NUL byte: {value!r}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise DfotaError(f"an edify string must be valid UTF-8: {value!r}") from None
    if plain:
        return f'"{value}"'
    return '"' + "".join(_escape(char) for char in value) + '"'


def mode(value: int) -> str:
    """Octal text with a leading 0, because the device reads `755` as decimal."""
    if value < 0:
        raise ValueError(f"a mode cannot be negative: {value}")
    return "0" if value == 0 else f"0{value:o}"


def call(name: str, *args: str) -> str:
    """`name(arg1, arg2)`; each argument is an already rendered edify expression."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"not an edify function name: {name!r}")
    return f"{name}({', '.join(args)})"
