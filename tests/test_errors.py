"""How a name is printed: `shown_path`, the one escaping of every message, warning and log."""

from __future__ import annotations

import re

import pytest

from dfota.core.errors import DfotaError, quoted, shown_path


@pytest.mark.parametrize(("name", "shown"), [
    ("usr/bin/plain name-1.0", "usr/bin/plain name-1.0"),
    ("x\nerror: forged line", "x\\x0aerror: forged line"),
    ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
    ("tab\there\rcr", "tab\\x09here\\x0dcr"),
    ("del\x7f", "del\\x7f"),
    ("c1 csi\x9b2J", "c1 csi\\xc2\\x9b2J"),  # U+009B, as its UTF-8 bytes
    ("back\\slash", "back\\\\slash"),
    ("ünï cödé 日本", "ünï cödé 日本"),  # printable UTF-8 stays as it is
    ("rtl\u202eexe.txt", "rtl\\xe2\\x80\\xaeexe.txt"),  # a character that is not printed
    (b"bad\xffname", "bad\\xffname"),  # bytes that are not UTF-8
    ("bad\udcffname", "bad\\xffname"),  # the same, as os.fsdecode gives them
    (b"\xc3", "\\xc3"),  # a cut UTF-8 sequence
])
def test_shown_path_escapes_every_byte_a_terminal_could_act_on(name: str | bytes,
                                                                shown: str) -> None:
    assert shown_path(name) == shown
    assert not re.search(r"[\x00-\x1f\x7f-\x9f]", shown_path(name))


@pytest.mark.parametrize("raw", [b"a\\x41", b"\\", b"x\n\x1b\\\xff\xc2\x85\xe6\x97\xa5"])
def test_shown_path_gives_the_bytes_back(raw: bytes) -> None:
    """A backslash is doubled, so the shown text reads back to the very bytes."""
    def back(text: str) -> bytes:
        out, at = bytearray(), 0
        while at < len(text):
            if text.startswith("\\\\", at):
                out += b"\\"
                at += 2
            elif text.startswith("\\x", at):
                out.append(int(text[at + 2: at + 4], 16))
                at += 4
            else:
                out += text[at].encode()
                at += 1
        return bytes(out)

    assert back(shown_path(raw)) == raw


def test_errors_and_quoted_names_use_it() -> None:
    error = DfotaError("entry " + quoted("a\nb") + " is bad", "/tmp/zip\x1b.zip")
    assert str(error) == "/tmp/zip\\x1b.zip: entry 'a\\x0ab' is bad"
