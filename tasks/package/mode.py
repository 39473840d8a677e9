"""What a package covers, `--mode`: its parts and how the option names them. Apart from the
plan (dfota.package.plan) so that checking the option, which every command does, imports
nothing else.
"""

from __future__ import annotations

from enum import Enum

from dfota.core.errors import DfotaError


class Part(str, Enum):
    """What a package covers (update_gen.sh's letters in brackets)."""

    ROOTFS = "rootfs"  # l: SYSTEM minus firmware/
    MODEM = "modem"  # m: SYSTEM/firmware/
    KERNEL = "kernel"  # o: the boot image
    MINOR = "minor"  # the MULTIFOTA images (only in `all`)


_MODE_ALIASES = {"a": "all", "l": "rootfs", "m": "modem", "o": "kernel"}


def parse_mode(text: str) -> frozenset[Part]:
    """`all`, `rootfs`, `modem`, `kernel`, the vendor letters, or a combination (`l,m`, `lm`)."""
    words = [w for w in text.replace(",", " ").split() if w]
    if len(words) == 1 and words[0] not in _MODE_ALIASES and words[0] not in (
            "all", "rootfs", "modem", "kernel") and set(words[0]) <= set(_MODE_ALIASES):
        words = list(words[0])  # vendor letters run together: "lm"
    parts: set[Part] = set()
    for word in words:
        name = _MODE_ALIASES.get(word, word)
        if name == "all":
            parts |= set(Part)
        elif name in ("rootfs", "modem", "kernel"):
            parts.add(Part(name))
        else:
            raise DfotaError(f"unknown --mode {word!r}: use all, rootfs, modem, kernel "
                             "(or a, l, m, o), alone or combined")
    if not parts:
        raise DfotaError("--mode is empty: use all, rootfs, modem or kernel")
    return frozenset(parts)
