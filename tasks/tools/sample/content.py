"""The bytes of the sample's files, every one drawn from SHAKE-256 of a fixed seed: ARM-looking
code and ELF programs, Qualcomm PIL images, gzip with a fixed header, PEM blocks and the few
texts whose shape matters (System.map, init scripts, the default configuration)."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

SEED = b"quecopen-dfota-sample/1"


def prng(label: str, size: int) -> bytes:
    return hashlib.shake_256(SEED + b"/" + label.encode()).digest(size)


def code(label: str, size: int) -> bytes:
    """ARM-looking code: words drawn from a small per-file vocabulary (compresses like code)."""
    vocab = prng(label + "#vocab", 1024)
    words = [vocab[i : i + 4] for i in range(0, 1024, 4)]
    return b"".join(words[b] for b in prng(label + "#code", (size + 3) // 4))[:size]


def edit(data: bytes, label: str, count: int, *, grow: int = 0) -> bytes:
    """`data` with `count` small patches (24 bytes each) and `grow` bytes inserted mid-way."""
    out = bytearray(data)
    picks = prng(label + "#edits", 4 * count)
    for i in range(count):
        pos = int.from_bytes(picks[4 * i : 4 * i + 4], "little") % max(1, len(out) - 24)
        out[pos : pos + 24] = prng(f"{label}#edit{i}", 24)
    if grow:
        mid = len(out) // 2
        out[mid:mid] = code(label + "#grow", grow)
    return bytes(out)


_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")
_PHDR = struct.Struct("<8I")
_INTERP = b"/lib/ld-linux-armhf.so.3\0"
_EF_ARM_HARD_FLOAT_EABI5 = 0x05000400


def _arm_elf(text: bytes, rodata: bytes, *, shared: bool) -> bytes:
    """A small ELF32 ARM executable or shared object: one PT_LOAD over the whole file."""
    base = 0 if shared else 0x00010000
    phnum = 1 if shared else 3
    head = _EHDR.size + phnum * _PHDR.size
    interp_off = head
    body_off = head + (0 if shared else len(_INTERP))
    body_off += -body_off % 16
    total = body_off + len(text) + len(rodata)
    phdrs = []
    if not shared:
        phdrs.append(_PHDR.pack(6, _EHDR.size, base + _EHDR.size, base + _EHDR.size,
                                phnum * _PHDR.size, phnum * _PHDR.size, 4, 4))  # PT_PHDR
        phdrs.append(_PHDR.pack(3, interp_off, base + interp_off, base + interp_off,
                                len(_INTERP), len(_INTERP), 4, 1))  # PT_INTERP
    phdrs.append(_PHDR.pack(1, 0, base, base, total, total, 5, 0x10000))  # PT_LOAD r-x
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    ehdr = _EHDR.pack(ident, 3 if shared else 2, 40, 1, base + body_off, _EHDR.size, 0,
                      _EF_ARM_HARD_FLOAT_EABI5, _EHDR.size, _PHDR.size, phnum, 40, 0, 0)
    out = bytearray(ehdr + b"".join(phdrs))
    if not shared:
        out += _INTERP
    out += bytes(body_off - len(out))
    return bytes(out + text + rodata)


@dataclass(frozen=True, slots=True)
class Program:
    """A binary of about `size` bytes; `edits`/`grow` give the next build of the same program."""

    name: str
    size: int
    shared: bool = False  # a shared object rather than an executable
    version: str = "1.0.0"
    edits: int = 0  # small patches (24 bytes each)
    grow: int = 0  # bytes inserted mid-way

    def elf(self) -> bytes:
        label = f"elf:{self.name}"
        rodata = "\0".join((
            f"{self.name} {self.version}", f"Usage: {self.name} [options]", "GLIBC_2.4",
            "libc.so.6", "/etc/ql_manager.conf", "%s: %s\n",
            f"Copyright (c) Quectel Wireless Solutions {self.name}",
        )).encode() + b"\0"
        text = code(label, max(256, self.size - 128 - len(rodata)))
        if self.edits or self.grow:
            text = edit(text, label, self.edits, grow=self.grow)
        return _arm_elf(text, rodata, shared=self.shared)


def gzip(data: bytes) -> bytes:
    """gzip with a fixed header (no name, mtime 0, OS Unix), whatever the Python version."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00" + bytes(4) + b"\x02\x03" + body + trailer


def pem(label: str, kind: str, count: int, size: int) -> str:
    blocks = []
    for i in range(count):
        raw = base64.b64encode(prng(f"{label}:{i}", size)).decode()
        lines = "\n".join(raw[j : j + 64] for j in range(0, len(raw), 64))
        blocks.append(f"-----BEGIN {kind}-----\n{lines}\n-----END {kind}-----\n")
    return "".join(blocks)


_SYMBOL_WORDS = ("ql", "msm", "qcom", "ubi", "mtd", "usb", "gsi", "ipa", "rmnet", "smd",
                 "glink", "pcie", "clk", "gpio", "tz", "scm", "rpmh", "spmi", "i2c", "uart")
_SYMBOL_VERBS = ("init", "probe", "remove", "read", "write", "ioctl", "open", "release",
                 "suspend", "resume", "irq_handler", "work_fn", "get", "put", "alloc", "free")


def system_map(shifted: bool) -> str:
    picks = prng("system.map", 4000)
    lines, addr = [], 0xC0008000
    for i in range(2000):
        a, b = picks[2 * i], picks[2 * i + 1]
        sym = f"{_SYMBOL_WORDS[a % 20]}_{_SYMBOL_VERBS[b % 16]}_{i}"
        kind = "T" if a % 3 else "t"
        shift = 0x40 if shifted and 1200 <= i < 1260 else 0
        lines.append(f"{addr + shift:08x} {kind} {sym}\n")
        addr += 0x20 + (b % 8) * 0x10
    return "".join(lines)


def default_config(next_version: bool) -> bytes:
    entries = [{"key": f"ql.config.item{i}", "value": prng(f"cfg:{i}", 6).hex(),
                "persist": i % 3 == 0} for i in range(600)]
    if next_version:
        entries[17]["value"] = "enabled"
        entries.append({"key": "ql.config.new_app", "value": "1", "persist": True})
    return gzip(json.dumps(entries, indent=1, sort_keys=True).encode() + b"\n")


def tzif(name: str) -> bytes:
    return b"TZif2" + bytes(15) + prng(f"tz:{name}", 120 + len(name) * 13)


def init_script(name: str, daemon: str, extra: str = "") -> str:
    return (
        "#!/bin/sh\n"
        f"# /etc/init.d/{name}: start and stop {daemon}\n"
        f"DAEMON=/usr/sbin/{daemon}\n"
        f"{extra}"
        "case \"$1\" in\n"
        f"  start) echo \"Starting {daemon}\"; start-stop-daemon -S -b -x $DAEMON -- $OPTS ;;\n"
        f"  stop) echo \"Stopping {daemon}\"; start-stop-daemon -K -x $DAEMON ;;\n"
        "  restart) $0 stop; $0 start ;;\n"
        "  *) echo \"Usage: $0 {start|stop|restart}\"; exit 1 ;;\n"
        "esac\nexit 0\n"
    )


_EM_QDSP6 = 164
_QC_PHDR_FLAGS = 0x07000000
_QC_HASH_FLAGS = 0x02200000


def pil_image(label: str, segment_sizes: Sequence[int], base: int) -> tuple[bytes, list[bytes]]:
    """A Qualcomm PIL image: (ELF headers + hash segment = the .mdt, [segment bytes...])."""
    phnum = 2 + len(segment_sizes)
    head = _EHDR.size + phnum * _PHDR.size
    hash_off, hash_size = 0x1000, 40 + 32 * phnum
    payloads = [code(f"{label}:seg{i}", size) for i, size in enumerate(segment_sizes)]
    phdrs = [
        _PHDR.pack(0, 0, 0, 0, head, 0, _QC_PHDR_FLAGS, 0),
        _PHDR.pack(0, hash_off, base - 0x1000, base - 0x1000, hash_size, 0x1000,
                   _QC_HASH_FLAGS, 0x1000),
    ]
    offset, vaddr = 0x2000, base
    for blob in payloads:
        phdrs.append(_PHDR.pack(1, offset, vaddr, vaddr, len(blob), len(blob), 5, 0x1000))
        offset += len(blob) + (-len(blob) % 0x1000)
        vaddr += len(blob) + (-len(blob) % 0x100000)
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    ehdr = _EHDR.pack(ident, 2, _EM_QDSP6, 1, base, _EHDR.size, 0, 0x73, _EHDR.size,
                      _PHDR.size, phnum, 40, 0, 0)
    headers = ehdr + b"".join(phdrs)
    digests = hashlib.sha256(headers).digest() + bytes(32)
    digests += b"".join(hashlib.sha256(p).digest() for p in payloads)
    hash_seg = struct.pack("<10I", 0, 3, 0, base - 0x1000 + 40, len(digests), len(digests),
                           0, 0, 0, 0) + digests
    mdt = headers + bytes(hash_off - len(headers)) + hash_seg
    return mdt, [headers, hash_seg, *payloads]


def mbn(label: str, size: int, base: int) -> bytes:
    mdt, segments = pil_image(label, [size], base)
    return mdt + bytes(0x2000 - len(mdt)) + segments[2]
