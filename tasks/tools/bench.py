"""The production-size benchmark: a generated SDK pair on the scale of a real RG520N build, the
project's commands run on it side by side with the alternatives a user has, and a table of
ratios against the goals.

The pair (`generate_bench(root, scale)`), from a fixed seed and nothing else:

- `root/firmware/upgrade/targetfiles.zip`: the base version, packed by Info-ZIP like the vendor's;
- `root/ql-ol-extsdk/`: the next SDK build (`target/sdxlemur-boot.img`, `target/abl.elf`,
  `ql-ol-rootfs/`).

At scale 1 the rootfs holds about 150 MB in about 5,500 entries (ARM ELF programs, libraries
and kernel modules, Python and configuration text, gzip documentation, locale and data files,
symlinks), the modem firmware about 60 MB and the boot image about 8 MB. The sample SDK's own
rootfs is the core of it (`dfota.tools.sample`), so the sample's config lists apply. The next
version modifies about 2 % of the files with small edits, adds 1 %, removes 1 %, changes some
modes and symlinks, the kernel and abl. `scale` multiplies every count and every size (floors
apply).

The cross-baseline package (goal 6b): the sample's release firmware (`generate_sample`, its
`firmware/upgrade/targetfiles.zip`) as source, the pair's next SDK as target, the sample's
lists; nearly the whole rootfs is new to it (at scale 1, 3,880 files, 628 symlinks and 693
folders: `cross_baseline_new`), so its package has thousands of steps for `doit verify`.

`run_benchmark(work_dir, scale, say)` runs each measured command as a subprocess of a small
wrapper and measures its wall time, the largest single process (the wrapper's
`getrusage(RUSAGE_CHILDREN).ru_maxrss`: exact, every waited-for descendant) and the process
tree (the sum of PSS over the wrapper's descendants, or the RSS of the only one, sampled from
/proc every 0.1 s). `python -m dfota.tools.bench` runs it from the command line;
`python -m dfota.tools.bench --cases verify` runs only `doit targetfiles`, `doit delta` and
`doit verify` of both packages (the pair's and the cross-baseline one) and prints goals 6 and
6b, leaving BENCHMARKS.md as it is unless `--report` names it.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import stat
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfota.core import atomic
from dfota.core.errors import DfotaError
from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.formats.bootimg import build_boot_image, make_arm_zimage, make_dtb
from dfota.settings import PROJECT_DIR, SAMPLE_DIR
from dfota.tools.sample import (
    BASE,
    CHANGES,
    NEXT,
    ROOTFS_DIR,
    Node,
    Tree,
    _code,
    _edit,
    _file,
    _fix_modes_and_times,
    _gzip,
    _link,
    _mbn,
    _pil_image,
    _prng,
    _program,
    _sysfs_ubi,
    _under_kept,
    _with_parents,
    _write_tree,
    _zip_tree,
    abl_image,
    base_rootfs,
    base_targetfiles_tree,
    generate_sample,
    next_rootfs,
    sample_is_current,
    sample_stamp,
)

Say = Callable[[str], None]

KB = 1024
MB = 1024 * 1024
STAMP_NAME = ".bench-stamp"
CONFIG_DIR = SAMPLE_DIR / "config"
REPORT = PROJECT_DIR / "BENCHMARKS.md"
_SEED = "bench"

# ---------------------------------------------------------------------------------------------
# The plan: every path, kind and size, and the changes; no content yet (cheap at any scale)


@dataclass(frozen=True, slots=True)
class _Kind:
    """A category of rootfs files: how many at scale 1, their size range, content and mode."""

    name: str
    count: int
    low: int
    high: int
    mode: int


_KINDS = (
    _Kind("module", 700, 4 * KB, 160 * KB, 0o644),
    _Kind("library", 260, 8 * KB, 800 * KB, 0o755),
    _Kind("program", 380, 4 * KB, 200 * KB, 0o755),
    _Kind("python", 1100, 300, 30 * KB, 0o644),
    _Kind("config", 300, 60, 6 * KB, 0o644),
    _Kind("script", 150, 400, 120 * KB, 0o644),
    _Kind("locale", 360, 1 * KB, 60 * KB, 0o644),
    _Kind("doc", 300, 1600, 160 * KB, 0o644),  # size of the text before gzip
    _Kind("data", 120, 2 * KB, 400 * KB, 0o644),
    _Kind("zoneinfo", 200, 100, 3 * KB, 0o644),
)
# (path, size at scale 1, kind): the few large files of a real rootfs
_BIG = (
    ("usr/lib/libQt5Core.so.5.12.8", 6656 * KB, "library"),
    ("usr/lib/libicudata.so.66.1", 10 * MB, "library"),
    ("usr/lib/libpython3.8.so.1.0", 3584 * KB, "library"),
    ("usr/bin/ql_ai_engine", 4 * MB, "program"),
)
MODIFIED_BIG = "usr/lib/libQt5Core.so.5.12.8"  # the largest diff of the rootfs
BOOT_SIZE = 8 * MB
MODEM_SEGMENTS = (18 * MB, 14 * MB, 9 * MB, 6 * MB, 4 * MB, 2 * MB, 512 * KB, 64 * KB)
MODEM_EXTRA = (("image/qdsp6m.qdb", 3 * MB), ("image/modem_pr/so/895_0_0.mbn", 1 * MB),
               ("image/modem_pr/so/896_0_0.mbn", 900 * KB),
               ("image/modem_pr/mcfg/configs/mcfg_sw/generic/mcfg_sw.mbn", 400 * KB),
               ("image/adsp.mbn", 1536 * KB), ("image/tz.mbn", 1 * MB))

MODIFIED_SHARE = 0.02
ADDED_SHARE = 0.01
REMOVED_SHARE = 0.01
MODE_SHARE = 0.003
RETARGET_SHARE = 0.08  # of the alternatives links

_WORDS = ("ql", "msm", "qcom", "ubi", "mtd", "usb", "gsi", "ipa", "rmnet", "smd", "glink",
          "pcie", "clk", "gpio", "tz", "scm", "rpmh", "spmi", "i2c", "uart", "net", "dsi",
          "qmi", "wlan", "audio", "gnss", "sim", "sms", "voice", "nw", "fota", "diag")
_GROUPS = ("drivers/net", "drivers/usb", "drivers/gpio", "drivers/char", "drivers/mtd",
           "net/ipv4", "net/ipv6", "net/netfilter", "fs/ubifs", "sound/soc", "crypto", "lib")
_LANGS = ("de", "en_GB", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt_BR", "ru", "sv", "tr",
          "uk", "vi", "zh_CN", "zh_TW", "cs", "da", "fi", "hu", "id", "nb", "ro")
_REGIONS = ("Africa", "America", "Antarctica", "Asia", "Atlantic", "Australia", "Europe",
            "Indian", "Pacific")


@dataclass(frozen=True, slots=True)
class Planned:
    """One generated rootfs file: its kind decides the content, `label` seeds it."""

    path: str
    kind: str
    size: int
    mode: int
    label: str


@dataclass(frozen=True, slots=True)
class BenchChanges:
    """How the next rootfs differs from the base (paths relative to the rootfs)."""

    modified: tuple[str, ...]  # files, other content
    added: tuple[str, ...]  # every new path, folders and links included
    removed: tuple[str, ...]  # every path gone, folders included
    mode_changed: tuple[str, ...]  # same content, other mode
    retargeted: tuple[str, ...]  # symlinks pointing elsewhere
    replaced: tuple[str, ...]  # a file that became a symlink or the other way round
    one_file: str  # the file edited for the "one-file change" run
    kernel_changed: bool = True
    abl_changed: bool = True


@dataclass(frozen=True, slots=True)
class BenchPlan:
    scale: float
    files: tuple[Planned, ...]  # the generated files of the base (sample core excluded)
    links: tuple[tuple[str, str], ...]  # the generated symlinks of the base: (path, target)
    added_files: tuple[Planned, ...]  # the generated files of the next version only
    changes: BenchChanges
    boot_size: int
    modem_segments: tuple[int, ...]
    modem_extra: tuple[tuple[str, int], ...]


def _scaled(value: int, scale: float) -> int:
    return max(1, round(value * scale))


def _uniform(label: str) -> float:
    return int.from_bytes(_prng(label, 8), "little") / 2**64


def _log_size(label: str, low: int, high: int, scale: float) -> int:
    return max(64, round(low * (high / low) ** _uniform(label) * scale))


def _pick(label: str, seq: Sequence[str]) -> str:
    return seq[int(_uniform(label) * len(seq))]


def _ranked(items: Iterable[str], label: str) -> list[str]:
    """A fixed shuffle: by the hash of each item and the label."""
    return sorted(items, key=lambda p: hashlib.sha1(f"{_SEED}:{label}:{p}".encode()).digest())


def _path_for(kind: str, i: int, tag: str) -> str:  # noqa: C901
    label = f"{tag}{kind}:{i}"
    word = _pick(label + "#w", _WORDS)
    pkg = f"{_pick(label + '#p', _WORDS)}{int(_uniform(label + '#n') * 4)}"
    name = f"{tag}{i}"
    if kind == "module":
        return f"usr/lib/modules/5.4.180/kernel/{_pick(label, _GROUPS)}/{word}_{name}.ko"
    if kind == "library":
        return f"usr/lib/lib{word}{name}.so.{i % 5}.{i % 7}.0"
    if kind == "program":
        return f"{_pick(label, ('usr/bin', 'usr/sbin', f'usr/libexec/{pkg}'))}/{word}-{name}"
    if kind == "python":
        return f"usr/lib/python3.8/site-packages/{pkg}/{word}_{name}.py"
    if kind == "config":
        return f"etc/{pkg}/{word}_{name}.conf"
    if kind == "script":
        return f"usr/share/webui/{pkg}/{word}_{name}.js"
    if kind == "locale":
        return f"usr/share/locale/{_pick(label, _LANGS)}/LC_MESSAGES/{word}{name}.mo"
    if kind == "doc":
        if i % 3:
            return f"usr/share/doc/{pkg}/changelog-{name}.gz"
        return f"usr/share/man/man{1 + i % 8}/{word}{name}.{1 + i % 8}.gz"
    if kind == "data":
        return f"usr/share/{pkg}/{word}_{name}.bin"
    return f"usr/share/zoneinfo/{_pick(label, _REGIONS)}/{word.capitalize()}_{name}"


def _planned(kind: _Kind, i: int, scale: float, tag: str = "") -> Planned:
    path = _path_for(kind.name, i, tag)
    return Planned(path, kind.name, _log_size(f"size:{path}", kind.low, kind.high, scale),
                   kind.mode, f"{kind.name}:{path}")


_REMOVABLE = ("module", "python", "config", "locale", "doc", "data", "zoneinfo")


@functools.cache
def bench_plan(scale: float = 1.0) -> BenchPlan:
    """Every generated path and size, and the changes of the next version (no content)."""
    if not 0 < scale <= 4:
        raise ValueError("scale must be in (0, 4]")
    files = [_planned(kind, i, scale) for kind in _KINDS
             for i in range(_scaled(kind.count, scale))]
    files += [Planned(path, kind, max(64, round(size * scale)), 0o755, f"big:{path}")
              for path, size, kind in _BIG]
    files.sort(key=lambda f: f.path)
    links: set[tuple[str, str]] = set()
    for f in files:
        if f.kind == "library":  # lib.so.N and lib.so point to lib.so.N.M.P
            stem, _, version = f.path.partition(".so.")
            real = f.path.rsplit("/", 1)[1]
            links |= {(f"{stem}.so.{version.split('.')[0]}", real), (f"{stem}.so", real)}
    programs = [f.path for f in files if f.kind == "program"]
    links |= {(f"etc/alternatives/alt-{i}", "/" + _pick(f"alt:{i}", programs))
              for i in range(_scaled(100, scale))}

    count = len(files) + len(CHANGES.modified)  # the sample core's changed files count too
    removed = set(_ranked([f.path for f in files if f.kind in _REMOVABLE],
                          "removed")[:max(1, round(count * REMOVED_SHARE))])
    modified = {MODIFIED_BIG, *_ranked([f.path for f in files if f.path not in removed
                                        and f.path != MODIFIED_BIG], "modified")[
        :max(1, round(count * MODIFIED_SHARE)) - 1]}
    mode_changed = _ranked([f.path for f in files if f.path not in removed | modified
                            and f.kind in ("python", "program", "config")],
                           "mode")[:max(1, round(count * MODE_SHARE))]
    alternatives = sorted(p for p, _t in links if p.startswith("etc/alternatives/"))
    retargeted = _ranked(alternatives, "retarget")[
        :max(1, round(len(alternatives) * RETARGET_SHARE))]
    added_files = []
    for n in range(max(1, round(count * ADDED_SHARE))):
        kind = _KINDS[n % len(_KINDS)]
        new = _planned(kind, n, scale, tag="new")
        if n % 2 == 0:  # half of them in a package of its own: new folders
            new = Planned(f"usr/lib/ql_next_pkg/{kind.name}/{new.path.rsplit('/', 1)[1]}",
                          new.kind, new.size, new.mode, new.label)
        added_files.append(new)
    one_file = min((f for f in files if f.path in modified and f.kind in ("program",
                                                                           "library")),
                   key=lambda f: (abs(f.size - 512 * KB * scale), f.path)).path

    core_base, core_next = base_rootfs(), next_rootfs()
    kept = [f.path for f in files if f.path not in removed]
    base_paths = set(core_base) | _parents([f.path for f in files]) | _parents(
        p for p, _t in links)
    next_paths = set(core_next) | _parents(kept) | _parents(f.path for f in added_files) | \
        _parents(p for p, _t in links)
    sample_modes = [p for p, _a, _b in CHANGES.mode_changed]
    sample_links = [p for p, _a, _b in CHANGES.retargeted]
    changes = BenchChanges(
        modified=tuple(sorted(modified | set(CHANGES.modified))),
        added=tuple(sorted(next_paths - base_paths)),
        removed=tuple(sorted(base_paths - next_paths)),
        mode_changed=tuple(sorted([*mode_changed, *sample_modes])),
        retargeted=tuple(sorted([*retargeted, *sample_links])),
        replaced=tuple(sorted([*(p for p, _t in CHANGES.file_to_symlink),
                               *CHANGES.symlink_to_file])),
        one_file=one_file,
    )
    return BenchPlan(scale, tuple(files), tuple(sorted(links)),
                     tuple(sorted(added_files, key=lambda f: f.path)), changes,
                     max(64 * KB, round(BOOT_SIZE * scale)),
                     tuple(max(4 * KB, round(s * scale)) for s in MODEM_SEGMENTS),
                     tuple((p, max(4 * KB, round(s * scale))) for p, s in MODEM_EXTRA))


def _parents(paths: Iterable[str]) -> set[str]:
    """The paths and every folder above them."""
    out: set[str] = set()
    for path in paths:
        parts = path.split("/")
        out.update("/".join(parts[:d]) for d in range(1, len(parts) + 1))
    return out


@dataclass(frozen=True, slots=True)
class CrossNew:
    """What the cross-baseline package creates: the entries of the pair's next rootfs that
    the sample's base lacks (`firmware/` and `dev/` inside stay the source's)."""

    files: int
    symlinks: int
    folders: int

    @property
    def least_steps(self) -> int:
        """Each new file and each new symlink is a mutating step of its own."""
        return self.files + self.symlinks


def cross_baseline_new(plan: BenchPlan) -> CrossNew:
    """The cross-baseline package's new entries, from the plan alone (no content)."""
    kinds = {path: node.kind for path, node in next_rootfs().items()}
    removed = set(plan.changes.removed)
    kinds.update((f.path, FILE) for f in plan.files if f.path not in removed)
    kinds.update((f.path, FILE) for f in plan.added_files)
    kinds.update((path, SYMLINK) for path, _target in plan.links)
    for path in _parents(list(kinds)):
        kinds.setdefault(path, DIR)
    source = base_rootfs()
    new = [kind for path, kind in kinds.items() if path not in source and not _under_kept(path)]
    return CrossNew(new.count(FILE), new.count(SYMLINK), new.count(DIR))


# ---------------------------------------------------------------------------------------------
# Content

_VOCAB = (*_WORDS, "def", "return", "self", "import", "from", "class", "if", "else", "for",
          "in", "not", "None", "True", "False", "try", "except", "raise", "with", "as", "yield",
          "=", "==", "+=", "(", ")", "[", "]", ":", ",", "args", "value", "result", "config",
          "path", "name", "data", "buffer", "socket", "handle", "status", "error", "timeout",
          "retry", "modem", "apn", "profile", "logger", "debug", "len", "range", "dict", "str")
_POOL = 4096


@functools.cache
def _lines(style: str) -> tuple[bytes, ...]:
    """A pool of lines in one style; a text file is lines drawn from it."""
    raw = _prng(f"{_SEED}:lines:{style}", _POOL * 10)
    out = []
    for i in range(_POOL):
        r = raw[10 * i : 10 * i + 10]
        text = " ".join(_VOCAB[b % len(_VOCAB)] for b in r[1 : 3 + r[0] % 7])
        if style == "python":
            line = "    " * (r[9] % 3) + text
        elif style == "config":
            line = f"{_VOCAB[r[8] % len(_VOCAB)]}_{r[9]} = {text}"
        elif style == "script":
            line = "  " * (r[9] % 4) + text.replace(" ", "_", 1) + ";"
        else:
            line = text.capitalize() + "."
        out.append(line.encode() + b"\n")
    return tuple(out)


def _text(label: str, size: int, style: str) -> bytes:
    pool = _lines(style)
    picks = _prng(label + "#lines", 2 * (size // 8 + 4))
    out = bytearray()
    i = 0
    while len(out) < size:
        out += pool[int.from_bytes(picks[2 * i : 2 * i + 2], "little") % _POOL]
        i += 1
    return bytes(out[:size])


def _edit_text(data: bytes, label: str, count: int) -> bytes:
    """`data` with `count` lines replaced."""
    lines = data.split(b"\n")
    picks = _prng(label + "#text-edits", 4 * count)
    for i in range(count):
        pos = int.from_bytes(picks[4 * i : 4 * i + 4], "little") % len(lines)
        lines[pos] = f"# {label}: changed in the next version ({i})".encode()
    return b"\n".join(lines)


_MO_MAGIC = b"\xde\x12\x04\x95"
_TEXT_STYLE = {"python": "python", "config": "config", "script": "script", "locale": "prose",
               "doc": "prose"}
_ELF_KINDS = ("module", "library", "program")


def _content(f: Planned, modified: bool) -> bytes:
    """The bytes of a planned file in the base, or in the next version when `modified`."""
    edits = 1 + int(_uniform(f.label + "#n-edits") * 5)
    if f.kind in _ELF_KINDS:
        grow = 64 * KB if modified and f.path == MODIFIED_BIG else 0
        return _program(f.label, f.size, shared=f.kind != "program",
                        edits=(40 if grow else edits) if modified else 0,
                        grow=round(grow * min(1.0, f.size / (6 * MB))))
    if f.kind in _TEXT_STYLE:
        text = _text(f.label, f.size, _TEXT_STYLE[f.kind])
        if modified:
            text = _edit_text(text, f.label, edits)
        if f.kind == "doc":
            return _gzip(text)
        return _MO_MAGIC + bytes(24) + text if f.kind == "locale" else text
    data = _prng(f.label, f.size)
    if f.kind == "zoneinfo":
        data = b"TZif2" + bytes(15) + data
    return _edit(data, f.label, edits) if modified else data


def _other_mode(f: Planned) -> int:
    return 0o750 if f.kind == "program" else 0o755


def bench_rootfs_pair(plan: BenchPlan) -> tuple[Tree, Tree]:
    """The base rootfs and the next one: the sample's, with the generated files."""
    changes = plan.changes
    modified, modes = set(changes.modified), set(changes.mode_changed)
    retargeted = set(changes.retargeted)
    base: Tree = dict(base_rootfs())
    nxt: Tree = dict(next_rootfs())
    programs = [f.path for f in plan.files if f.kind == "program"]
    for f in plan.files:
        node = _file(_content(f, False), f.mode)
        base[f.path] = node
        if f.path in modified:
            nxt[f.path] = _file(_content(f, True), f.mode)
        elif f.path in modes:
            nxt[f.path] = Node(FILE, _other_mode(f), node.data)
        elif f.path not in changes.removed:
            nxt[f.path] = node
    for path, target in plan.links:
        base[path] = _link(target)
        nxt[path] = _link("/" + _pick(f"retarget:{path}", [p for p in programs
                                                          if "/" + p != target])
                          if path in retargeted else target)
    for f in plan.added_files:
        nxt[f.path] = _file(_content(f, False), f.mode)
    return _with_parents(base), _with_parents(nxt)


@functools.cache
def bench_boot_image(size: int, next_version: bool) -> bytes:
    """An Android boot image of about `size` bytes; the next kernel has edits throughout."""
    payload = _code(f"{_SEED}:kernel", size - 8 * KB)
    if next_version:
        payload = _edit(payload, f"{_SEED}:kernel", 200, grow=size // 128)
    dtb = make_dtb("Qualcomm Technologies, Inc. SDXLEMUR MTP",
                   ["qcom,sdxlemur-mtp", "qcom,sdxlemur", "qcom,mtp"])
    return build_boot_image(make_arm_zimage(payload, [dtb]),
                            cmdline=(NEXT if next_version else BASE).cmdline)


def bench_modem(plan: BenchPlan) -> Tree:
    """The modem firmware (`SYSTEM/firmware/`): a PIL image in segments, databases, mbn files."""
    mdt, segments = _pil_image(f"{_SEED}:modem", plan.modem_segments, 0x8CC00000)
    tree: Tree = {"image/modem.mdt": _file(mdt)}
    for i, blob in enumerate(segments):
        tree[f"image/modem.b{i:02d}"] = _file(blob)
    for n, (path, size) in enumerate(plan.modem_extra):
        tree[path] = _file(_mbn(path, size, 0x9E000000 + n * 0x100000) if path.endswith(".mbn")
                           else b"QDB\0" + _prng(path, size))
    return _with_parents(tree)


def bench_base_targetfiles(plan: BenchPlan, base: Tree) -> Tree:
    """The base targetfiles.zip: the sample's layout with the benchmark's SYSTEM and boot."""
    tree = {name: node for name, node in base_targetfiles_tree().items()
            if not name.startswith("SYSTEM/") or name.startswith("SYSTEM/dev/")}
    tree["BOOTABLE_IMAGES/boot.img"] = _file(bench_boot_image(plan.boot_size, False))
    for rel, node in base.items():
        if not _under_kept(rel):
            tree[f"SYSTEM/{rel}"] = node
    for rel, node in bench_modem(plan).items():
        tree[f"SYSTEM/firmware/{rel}"] = node
    return _with_parents(tree)


def bench_stamp(scale: float) -> str:
    digest = hashlib.sha256(f"{sample_stamp()}\0{scale!r}\0".encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()


def bench_is_current(root: Path, scale: float) -> bool:
    try:
        return (root / STAMP_NAME).read_text().strip() == bench_stamp(scale)
    except OSError:
        return False


def generate_bench(root: Path, scale: float = 1.0) -> None:
    """Write the pair under `root`: `firmware/upgrade/targetfiles.zip` (the base) and
    `ql-ol-extsdk/` (the next SDK build), replacing anything there."""
    root = Path(root)
    plan = bench_plan(scale)
    base, nxt = bench_rootfs_pair(plan)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    work = root / "work"
    _write_tree(bench_base_targetfiles(plan, base), work / "targetfiles", BASE.epoch)
    upgrade = root / "firmware" / "upgrade"
    upgrade.mkdir(parents=True)
    _zip_tree(work / "targetfiles", upgrade / "targetfiles.zip")
    shutil.rmtree(work)
    sdk = root / "ql-ol-extsdk"
    target = sdk / "target"
    target.mkdir(parents=True)
    (target / "sdxlemur-boot.img").write_bytes(bench_boot_image(plan.boot_size, True))
    (target / "abl.elf").write_bytes(abl_image(True))
    _sysfs_ubi(nxt, work, target / "sdxlemur-sysfs.ubi", "next", NEXT.epoch)
    shutil.rmtree(work)
    _fix_modes_and_times(target, NEXT.epoch)
    _write_tree(nxt, sdk / ROOTFS_DIR, NEXT.epoch)
    os.chmod(sdk, 0o755)
    (root / STAMP_NAME).write_text(bench_stamp(scale) + "\n")


def tree_changes(base: Mapping[str, Node], nxt: Mapping[str, Node]) -> dict[str, list[str]]:
    """What differs between two trees, by kind of change (the generator's declared changes
    must equal this)."""
    out: dict[str, list[str]] = {k: [] for k in ("modified", "added", "removed", "mode_changed",
                                                 "retargeted", "replaced")}
    for path in sorted(set(base) | set(nxt)):
        a, b = base.get(path), nxt.get(path)
        if a is None:
            out["added"].append(path)
        elif b is None:
            out["removed"].append(path)
        elif a.kind != b.kind:
            out["replaced"].append(path)
        elif a.kind == SYMLINK:
            if a.link != b.link:
                out["retargeted"].append(path)
        elif a.kind == FILE and a.data != b.data:
            out["modified"].append(path)
        elif a.mode != b.mode:
            out["mode_changed"].append(path)
    return out


# ---------------------------------------------------------------------------------------------
# Measuring

# Runs the command and reports its wall time and the largest resident set of any process of
# its tree (every descendant that was waited for counts in RUSAGE_CHILDREN).
_WRAPPER = (
    "import json, resource, subprocess, sys, time\n"
    "start = time.monotonic()\n"
    "code = subprocess.call(sys.argv[2:])\n"
    "seconds = time.monotonic() - start\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "with open(sys.argv[1], 'w') as f:\n"
    "    json.dump({'seconds': seconds, 'maxrss_kb': usage.ru_maxrss, 'returncode': code,\n"
    "               'user': usage.ru_utime, 'system': usage.ru_stime}, f)\n"
)
SAMPLE_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Measure:
    """One measured command."""

    step: str
    seconds: float
    tree_kb: int  # the largest memory of the command's process tree (sampled, see tree_kb)
    process_kb: int  # the largest single process of the tree (ru_maxrss, exact)
    returncode: int = 0
    runs: tuple[float, ...] = ()  # every wall time when the step was repeated
    user_s: float = 0.0  # CPU time of the whole tree, in user space and in the kernel
    system_s: float = 0.0

    @property
    def peak_kb(self) -> int:
        return max(self.tree_kb, self.process_kb)


def combine(measures: Sequence[Measure]) -> Measure:
    """One step measured several times: the median wall and CPU times, the largest memory."""
    if not measures:
        raise ValueError("nothing to combine")
    return Measure(measures[0].step, statistics.median(m.seconds for m in measures),
                   max(m.tree_kb for m in measures), max(m.process_kb for m in measures),
                   max(m.returncode for m in measures), tuple(m.seconds for m in measures),
                   statistics.median(m.user_s for m in measures),
                   statistics.median(m.system_s for m in measures))


def process_tree(root: int) -> list[int]:
    """Every live descendant of `root` (not `root` itself), from /proc."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
            ppid = int(raw[raw.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(name))
    found, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def rss_kb(pid: int) -> int:
    """A process's resident set size in KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return 0


def pss_kb(pid: int) -> int:
    """A process's proportional set size (shared pages split between their users), in KiB;
    its resident set size where smaps_rollup cannot be read; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss_kb(pid)


def tree_kb(root: int) -> int:
    """The memory of `root`'s descendants: the sum of their PSS, or the RSS of the only one
    (reading PSS walks the page tables: too slow to sample a large process often)."""
    pids = process_tree(root)
    if len(pids) == 1:
        return rss_kb(pids[0])
    return sum(pss_kb(pid) for pid in pids)


class _TreeSampler:
    """Samples the memory of a process tree in a thread until stopped."""

    def __init__(self, root: int) -> None:
        self.root = root
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, tree_kb(self.root))
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# the UBI wrapper reading the SDK's sysfs image whole: the tree, then every file's data
_READ_UBI = """
import sys
from pathlib import Path
from dfota.formats.ubifs import read_ubifs
tree = read_ubifs(Path(sys.argv[1]), "rootfs")
total = sum(len(c) for p, e in tree.entries.items() if e.kind == "file" for c in tree.chunks(p))
print(f"{len(tree.entries)} entries, {total} bytes of file data")
"""


# the commands run as in a user's shell: Python writes the bytecode of the modules it compiles
# (a machine that sets PYTHONDONTWRITEBYTECODE would compile the tool's modules in every run)
_USERS_ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def measure(step: str, argv: Sequence[str], log: Path, *, cwd: Path = PROJECT_DIR,
            env: Mapping[str, str] | None = None) -> Measure:
    """Run `argv` under the wrapper, its output into `log`; raise when it fails."""
    result = log.with_suffix(".json")
    result.unlink(missing_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, str(result), *map(str, argv)],
                                cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                env={**_USERS_ENVIRONMENT, **(env or {})})
        sampler = _TreeSampler(proc.pid)
        proc.wait()
        tree_peak = sampler.stop()
    try:
        data = json.loads(result.read_text())
    except (OSError, ValueError) as exc:
        raise DfotaError(f"{step}: the measuring wrapper left no result", log) from exc
    if data["returncode"] != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise DfotaError(f"{step} failed (exit {data['returncode']}): {tail[0]}", log)
    return Measure(step, float(data["seconds"]), tree_peak, int(data["maxrss_kb"]),
                   user_s=float(data["user"]), system_s=float(data["system"]))


# ---------------------------------------------------------------------------------------------
# The table

@dataclass(frozen=True, slots=True)
class Goal:
    """One ratio (or figure) of the issue against its goal: passed when at most `limit`."""

    number: str
    what: str
    value: float
    limit: float
    unit: str  # "x" (a ratio) or "MB"

    @property
    def passed(self) -> bool:
        return self.value <= self.limit


@dataclass(frozen=True, slots=True)
class Table:
    scale: float
    machine: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]
    measures: tuple[Measure, ...]
    goals: tuple[Goal, ...]
    notes: tuple[str, ...] = ()
    cases: str = "all"  # what ran (`--cases`)


def _figure(value: float, unit: str) -> str:
    if unit == "x":
        return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"
    if unit == "s":
        return f"{value:.2f} s"
    return f"{value:,.0f} {unit}"


def format_goals(goals: Sequence[Goal]) -> str:
    lines = ["| # | ratio | measured | goal | result |", "|---|---|---:|---:|---|"]
    lines += [f"| {g.number} | {g.what} | {_figure(g.value, g.unit)} | "
              f"<= {_figure(g.limit, g.unit)} | {'PASS' if g.passed else 'MISS'} |"
              for g in goals]
    return "\n".join(lines)


def format_measures(measures: Sequence[Measure]) -> str:
    lines = ["| step | wall s | runs (s) | CPU user s | CPU system s | tree peak MB "
             "| largest process MB |", "|---|---:|---|---:|---:|---:|---:|"]
    lines += [f"| {m.step} | {m.seconds:.1f} | {', '.join(f'{s:.1f}' for s in m.runs) or '1'} "
              f"| {m.user_s:.1f} | {m.system_s:.1f} "
              f"| {m.tree_kb / 1024:.0f} | {m.process_kb / 1024:.0f} |" for m in measures]
    return "\n".join(lines)


def format_pairs(pairs: Sequence[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in pairs)])


def format_table(table: Table) -> str:
    """What the benchmark prints: the steps, then the ratios against their goals."""
    return f"{format_measures(table.measures)}\n\n{format_goals(table.goals)}\n"


def render_report(table: Table) -> str:
    """BENCHMARKS.md."""
    passed = sum(g.passed for g in table.goals)
    notes = "".join(f"- {n}\n" for n in table.notes)
    only = "" if table.cases == "all" else f" (`--cases {table.cases}` only)"
    return f"""# Benchmarks

Latest figures of the production-size benchmark (`python -m dfota.tools.bench`,
`tasks/tools/bench.py`), scale {table.scale:g}{only}: {passed} of {len(table.goals)} goals met.
The machine is shared and noisy: read the ratios (each measured in the same run), not the
absolute times.

## How it is measured

- Each command runs as a subprocess of a small Python wrapper. **wall s**: the wrapper's
  monotonic clock around the command. **largest process MB**: the wrapper's
  `getrusage(RUSAGE_CHILDREN).ru_maxrss`, the peak resident set of the largest single process
  of the tree (exact). **tree peak MB**: the largest sum of PSS (`/proc/PID/smaps_rollup`;
  shared pages split between their users, so forked workers are not counted twice) over every
  descendant of the wrapper, RSS when there is only one, sampled every {SAMPLE_SECONDS:g} s
  (a shorter spike can be missed).
  Goal 5 takes the larger of the two. **CPU user s, system s**: the wrapper's
  `getrusage(RUSAGE_CHILDREN)`, the CPU time of every process of the tree (worker processes
  included), in user space and in the kernel (copying into the page cache, say).
- The shell procedure is the note's section 2.2.2, command for command (`unzip -qK`, `cp`,
  `mv firmware dev ../`, `rm -rf *`, `cp -prafR`, `zip -qry0`).
- The bsdiff loop is Debian's `bsdiff old new patch`, one after the other, over every regular
  file that changed in `SYSTEM/` and over `boot.img`. Both trees are extracted with `unzip`
  before the timed part (extraction is not timed). Its size is its patches plus the new files
  and the changed `MULTIFOTA` images, uncompressed; `update.zip` is deflated.
- `doit delta` and `doit verify` are timed alone (`doit -s`); the first chain is the sum of
  the three steps. The first chain is also run as one command, `doit targetfiles delta
  verify`, in fresh folders as often as the first steps. The repeated chains are one
  `doit targetfiles delta verify` each.
- The cross-baseline package (goal 6b) is made from the sample's release firmware
  (`sample_sdk/firmware/upgrade/targetfiles.zip`, generated beside the pair) to the pair's
  next SDK with the sample's lists (`sample_sdk/config`), in a workspace of its own: nearly
  the whole rootfs is new to it, thousands of files, symlinks and permission steps for
  `doit verify` to replay. Its `doit targetfiles` and `doit delta` run like the pair's, in
  fresh folders, `doit delta` and `doit verify` timed alone.
- The kernel's patch and the base's sha1s that `delta` asks for are made by the task
  `_delta_ahead` (`tasks/package/ahead.py`), which a command that runs `delta` runs in a task
  process beside targetfiles: `doit targetfiles` alone does not run it and `doit -s delta`
  skips it, so that work is in delta's time, and the one-command chain shows what running it
  beside targetfiles saves. The notes compare targetfiles and delta together with the shell
  procedure and the bsdiff loop.
- Commands run with Python writing bytecode as usual (`PYTHONDONTWRITEBYTECODE`, which this
  machine sets, is removed from their environment).
- The first steps but verify run several times, in turns, in fresh folders; the median counts
  (see the runs column and the notes).
- The machine itself: how much work two busy Python processes get done at once against one
  alone (2.00x: two whole cores; a shared machine gives less), before the steps and after
  them, and the rate at which 256 MB written to the run's disk are synced. The archive's
  versions are synced to the disk; the shell procedure leaves its zip to the page cache.
- The one-file change edits one rootfs file (24-byte patches) and bumps `Package Time`
  (a changed version must be a new version); the target is still built on the same base, so
  every other patch can come from the cache.

## Machine

{format_pairs(table.machine)}

## Data set

{format_pairs(table.data)}

## Steps

{format_measures(table.measures)}

## Goals

{format_goals(table.goals)}

## Notes

{notes}"""


# ---------------------------------------------------------------------------------------------
# The run

SHELL_PROCEDURE = r"""set -e
mkdir -p targetfiles && cd targetfiles
unzip -qK "$SOURCE"
cp -rf "$SDK/target/sdxlemur-boot.img" ./BOOTABLE_IMAGES/boot.img
cp -rf "$SDK/target/abl.elf" ./MULTIFOTA/abl.elf
cd SYSTEM
mv firmware dev ../
rm -rf *
cp -prafR "$SDK/ql-ol-rootfs/"* ./
rm -rf firmware dev
mv ../firmware ../dev ./
cd ..
zip -qry0 ../targetfiles.zip ./*
"""
BUMPED_TIME = "2022-07-16,10:00"


def _first_line(command: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, check=False)
    except OSError:
        return "?"
    return (done.stdout.strip().splitlines() or ["?"])[0]


def machine() -> tuple[tuple[str, str], ...]:
    """What the figures came from."""
    cpu = mem = "?"
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in
                    Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "?")
        found = re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text())
        if found:
            mem = f"{int(found[1]) / MB:.1f} GiB"
    except (OSError, ValueError):
        pass
    import bsdiff4
    import detools

    debian = _first_line(["dpkg-query", "-W", "-f", "${Version}\n", "bsdiff"])
    return (("CPU", cpu), ("cores (nproc)", str(len(os.sched_getaffinity(0)))),
            ("memory", mem), ("Python", platform.python_version()),
            ("system", platform.platform()), ("Debian bsdiff", debian),
            ("bsdiff4", bsdiff4.__version__), ("detools", detools.__version__))


_SPIN = "import sys\nx = 0\nfor i in range(int(sys.argv[1])):\n    x += i\n"


def _spin_seconds(processes: int, loops: int) -> float:
    """Wall time of `processes` Pythons each counting to `loops`, started together."""
    started = time.monotonic()
    spinning = [subprocess.Popen([sys.executable, "-c", _SPIN, str(loops)])
                for _ in range(processes)]
    for proc in spinning:
        proc.wait()
    return time.monotonic() - started


def parallel_throughput(loops: int = 5_000_000, repeat: int = 3) -> float:
    """How much more CPU work two busy processes get done at once than one alone (2.0: two
    whole cores): twice one's time alone over the pair's time (medians of `repeat`)."""
    alone = statistics.median(_spin_seconds(1, loops) for _ in range(repeat))
    pair = statistics.median(_spin_seconds(2, loops) for _ in range(repeat))
    return 2 * alone / pair


def disk_sync_rate(folder: Path, size: int = 256 * MB) -> float:
    """MB/s of writing `size` bytes to a new file in `folder` and syncing them to the disk:
    what each byte the archive keeps costs (a copy left to the page cache costs no disk)."""
    os.sync()  # nothing else's dirty pages in the way
    block = os.urandom(MB)
    path = folder / ".disk-rate"
    started = time.monotonic()
    try:
        with open(path, "wb") as out:
            for _ in range(size // MB):
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        seconds = time.monotonic() - started
    finally:
        path.unlink(missing_ok=True)
    return size / MB / seconds


def loop_inputs(old: Path, new: Path) -> tuple[list[str], list[str]]:
    """(files to diff, files shipped whole) between two extracted targetfiles trees: every
    regular file of `SYSTEM/` that changed, and `boot.img`; new files and changed
    `MULTIFOTA` images whole."""
    diffs: list[str] = []
    whole: list[str] = []
    for top in ("SYSTEM", "BOOTABLE_IMAGES", "MULTIFOTA"):
        for dirpath, _dirs, names in os.walk(new / top):
            for name in names:
                path = Path(dirpath, name)
                rel = path.relative_to(new).as_posix()
                if path.is_symlink() or not path.is_file():
                    continue
                before = old / rel
                if before.is_symlink() or not before.is_file():
                    whole.append(rel)
                elif _differ(before, path):
                    (whole if top == "MULTIFOTA" else diffs).append(rel)
    return sorted(diffs), sorted(whole)


def _differ(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return True
    return hashlib.sha1(a.read_bytes()).digest() != hashlib.sha1(b.read_bytes()).digest()


def _tasks_run(log: Path) -> list[str]:
    """The doit tasks that ran (not up to date) according to doit's output."""
    return [line[3:].strip() for line in log.read_text(errors="replace").splitlines()
            if line.startswith(".  ")]


def _cache_line(state: Path) -> str:
    """The patch cache lines of the newest delta log (the kernel's, then the files')."""
    logs = sorted((state / "logs").glob("*-delta.log"))
    found = [line[line.index("patches: "):]
             for line in (logs[-1].read_text(errors="replace").splitlines() if logs else [])
             if "patches: " in line]
    return "; ".join(found) or "no patch line in the delta log"


def _size_mb(size: int) -> str:
    if size < MB:
        return f"{size / KB:.1f} KB"
    return f"{size / MB:.1f} MB"


def tool_digest() -> str:
    """What doit's up-to-date checks hash as the tool's code: editing it during a run makes
    the repeated chains rebuild everything."""
    digest = hashlib.sha1()
    for path in sorted([*(PROJECT_DIR / "tasks").rglob("*.py"),
                        *(PROJECT_DIR / "templates").glob("*")]):
        digest.update(path.relative_to(PROJECT_DIR).as_posix().encode() + b"\0"
                      + path.read_bytes())
    return digest.hexdigest()


CASES = ("all", "verify")  # every step, or only `doit verify` against `doit delta` (goals 6, 6b)
CROSS_STEPS = 4000  # the cross-baseline package: 4,000 steps or more at scale 1
StepRunner = Callable[..., Measure]


@dataclass(frozen=True, slots=True)
class PackageRun:
    """One package made and proven, each command timed alone, and its `update.json`."""

    targetfiles: Measure
    delta: Measure
    verify: Measure
    summary: Mapping[str, Any]


def _doit(where: Path, logs: Path, profile: bool, label: str) -> list[str]:
    base = [sys.executable]
    if profile:
        base += ["-m", "cProfile", "-o", str(logs / f"{label}.prof")]
    return [*base, "-m", "doit", "--db-file", str(where / "doit.db")]


def _workspace(where: Path) -> list[object]:
    """The options of a workspace of its own under `where`: out/, archive/, state/."""
    return ["--out", where / "out", "--archive", where / "archive", "--state", where / "state"]


def verify_goals(delta: Measure, verify: Measure, cross: PackageRun) -> tuple[Goal, Goal]:
    """Goals 6 and 6b: `doit verify` against `doit delta`, each timed alone, on the pair and
    on the cross-baseline package."""
    steps = cross.summary.get("verify", {}).get("steps", 0)
    return (Goal("6", "doit verify / doit delta", verify.seconds / delta.seconds, 1.0, "x"),
            Goal("6b", f"doit verify / doit delta, cross-baseline package ({steps:,} steps)",
                 cross.verify.seconds / cross.delta.seconds, 2.0, "x"))


def _sample_release(work_dir: Path, say: Say) -> Path:
    """The sample's release firmware (the cross-baseline source), generated under
    `work_dir/sample` unless a current one is there."""
    sample = work_dir / "sample"
    if sample_is_current(sample):
        say(f"bench: reusing the sample in {sample}")
    else:
        say(f"bench: generating the sample in {sample}")
        generate_sample(sample)
    return sample / "firmware" / "upgrade" / "targetfiles.zip"


def cross_baseline(step: StepRunner, run: Path, sdk: Path, source: Path, profile: bool,  # noqa: PLR0913
                   repeat: int) -> PackageRun:
    """The cross-baseline package: `source` (the sample's release firmware) to `sdk` (the
    pair's next SDK) with the sample's lists, in its own workspaces `run/cross/trialN`:
    targetfiles and delta `repeat` times in fresh folders (the median counts), verify once."""
    logs = run / "logs"
    made: dict[str, list[Measure]] = {"targetfiles": [], "delta": []}
    for i in range(repeat):
        where = run / "cross" / f"trial{i}"
        where.mkdir(parents=True)
        lists = ["--config", CONFIG_DIR, *_workspace(where)]
        made["targetfiles"].append(step(
            f"cross-targetfiles-{i}", "doit targetfiles, cross-baseline",
            [*_doit(where, logs, profile, f"cross-targetfiles-{i}"), "targetfiles", "--sdk", sdk,
             "--source", source, *lists]))
        made["delta"].append(step(
            f"cross-delta-{i}", "doit delta, cross-baseline (fresh state but for targetfiles')",
            [*_doit(where, logs, profile, f"cross-delta-{i}"), "-s", "delta", *lists]))
    first = run / "cross" / "trial0"
    proven = step("cross-verify", "doit verify, cross-baseline",
                  [*_doit(first, logs, profile, "cross-verify"), "-s", "verify",
                   *_workspace(first)])
    summary = json.loads((first / "out" / "update.json").read_text())
    return PackageRun(combine(made["targetfiles"]), combine(made["delta"]), proven, summary)


def _plan_line(summary: Mapping[str, Any]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(summary.get("counts", {}).items()))


def _package_line(summary: Mapping[str, Any]) -> str:
    return (f"{_size_mb(summary['package_size'])} (patches "
            f"{_size_mb(summary['bytes']['patches'])}, whole files "
            f"{_size_mb(summary['bytes']['whole_files'])}, uncompressed)")


def _verify_line(summary: Mapping[str, Any]) -> str:
    verify = summary.get("verify", {})
    steps, replays = verify.get("steps"), verify.get("power_loss_replays")
    return (f"{steps:,} steps, " if isinstance(steps, int) else "? steps, ") + (
        f"{replays:,} power-loss replays" if isinstance(replays, int) else "? replays")


def _replay_detail(summary: Mapping[str, Any]) -> str:
    """What verify said of its power-loss replays (which steps it replayed)."""
    return next((str(check.get("detail", "")) for check in summary.get("verify", {}).get(
        "checks", []) if str(check.get("name", "")).startswith("power loss")), "?")


def _clocks(summary: Mapping[str, Any]) -> str:
    timings = summary.get("timings", {})
    return (f"delta's own clock: diffing {timings.get('diff_seconds', '?')} s of "
            f"{timings.get('total_seconds', '?')} s; verify's own clock: "
            f"{summary.get('verify', {}).get('seconds', '?')} s")


def run_benchmark(work_dir: Path, scale: float = 1.0, say: Say = print,  # noqa: C901, PLR0913, PLR0915
                  report: Path | None = None, profile: bool = False, repeat: int = 3,
                  cases: str = "all") -> Table:
    """Generate (or reuse) the pair under `work_dir/data` and the sample under
    `work_dir/sample`, run every measured command in `work_dir/run`, print the table through
    `say` and return it; write it to `report` (e.g. BENCHMARKS.md) when given. `profile` runs
    the doit commands under cProfile (`run/logs/<step>.prof`); the times are then inflated and
    nothing is written to `report`. The shell procedure, `doit targetfiles`, `doit delta` and
    the bsdiff loop run `repeat` times each (fresh folders every time) and count by their
    median. `cases`: "all", or "verify": only `doit targetfiles`, `doit delta` and
    `doit verify` of the pair and of the cross-baseline package (goals 6 and 6b).
    """
    if repeat < 1:
        raise ValueError("repeat must be at least 1")
    if cases not in CASES:
        raise ValueError(f"cases must be one of: {', '.join(CASES)}")
    full = cases == "all"
    work_dir = Path(work_dir).resolve()
    data = work_dir / "data"
    plan = bench_plan(scale)
    if bench_is_current(data, scale):
        say(f"bench: reusing the pair in {data}")
    else:
        say(f"bench: generating the pair (scale {scale:g}) in {data}")
        started = time.monotonic()
        generate_bench(data, scale)
        say(f"bench: generated in {time.monotonic() - started:.0f} s")
    cross_source = _sample_release(work_dir, say)
    tool = tool_digest()
    run = work_dir / "run"
    shutil.rmtree(run, ignore_errors=True)
    logs = run / "logs"
    logs.mkdir(parents=True)
    sdk = run / "sdk"
    shutil.copytree(data / "ql-ol-extsdk", sdk, symlinks=True)
    source = data / "firmware" / "upgrade" / "targetfiles.zip"
    measures: list[Measure] = []
    say("bench: the machine's cores and disk ..." if full else "bench: the machine's cores ...")
    cores = [parallel_throughput()]  # again at the end: a shared machine's second core varies
    disk_rate = disk_sync_rate(run) if full else 0.0

    def step(label: str, name: str, argv: Sequence[object], cwd: Path = PROJECT_DIR,
             env: Mapping[str, str] | None = None) -> Measure:
        say(f"bench: {name} ...")
        m = measure(name, [str(a) for a in argv], logs / f"{label}.log", cwd=cwd, env=env)
        say(f"bench: {name}: {m.seconds:.1f} s, {m.peak_kb / 1024:.0f} MB")
        return m

    def folders(trial: int) -> list[object]:
        return _workspace(run / f"trial{trial}")

    def doit(trial: int, label: str) -> list[str]:
        return _doit(run / f"trial{trial}", logs, profile, label)

    # the first steps, each run `repeat` times in turns (shell, targetfiles, delta, loop) so a
    # change of the machine's load touches them alike; the median counts
    loop = run / "loop"
    runs: dict[str, list[Measure]] = {}
    diffs: list[str] = []
    whole: list[str] = []
    for i in range(repeat):
        (run / f"trial{i}").mkdir()
        if full:
            (run / "shell").mkdir()
            runs.setdefault("shell", []).append(step(
                f"shell-{i}", "shell procedure (note 2.2.2)", ["bash", "-c", SHELL_PROCEDURE],
                cwd=run / "shell", env={"SOURCE": str(source), "SDK": str(sdk)}))
            shutil.rmtree(run / "shell")
        runs.setdefault("targetfiles", []).append(step(
            f"targetfiles-{i}", "doit targetfiles",
            [*doit(i, f"targetfiles-{i}"), "targetfiles", "--sdk", sdk, "--source", source,
             *folders(i)]))
        runs.setdefault("delta", []).append(step(
            f"delta-{i}", "doit delta (fresh state but for targetfiles')",
            [*doit(i, f"delta-{i}"), "-s", "delta", "--config", CONFIG_DIR, *folders(i)]))
        # the same three steps as one command: _delta_ahead beside targetfiles
        one = run / f"chain{i}"
        one.mkdir()
        runs.setdefault("chain", []).append(step(
            f"chain-{i}", "doit targetfiles delta verify, one command",
            [*_doit(one, logs, profile, f"chain-{i}"), "targetfiles", "--sdk", sdk, "--source",
             source, *_workspace(one), "delta", "--config", CONFIG_DIR, *_workspace(one),
             "verify", *_workspace(one)]))
        if not full:
            continue
        if i == 0:  # the loop's inputs, extracted once and not timed
            target_zip = run / "trial0" / "out" / "targetfiles.zip"
            loop.mkdir()
            for side, zip_path in (("old", source), ("new", target_zip)):
                subprocess.run(["unzip", "-qK", str(zip_path), "-d", str(loop / side)],
                               check=True)
            diffs, whole = loop_inputs(loop / "old", loop / "new")
            script = ["set -e"]
            for rel in diffs:
                (loop / "patch" / rel).parent.mkdir(parents=True, exist_ok=True)
                script.append(f"bsdiff {shlex.quote(str(loop / 'old' / rel))} "
                              f"{shlex.quote(str(loop / 'new' / rel))} "
                              f"{shlex.quote(str(loop / 'patch' / rel))}.p")
            (loop / "loop.sh").write_text("\n".join(script) + "\n")
        runs.setdefault("bsdiff", []).append(step(
            f"bsdiff-{i}", "Debian bsdiff loop", ["bash", loop / "loop.sh"]))
    image = sdk / "target" / "sdxlemur-sysfs.ubi"
    if full:
        read_ubi = step("ubi", "read sdxlemur-sysfs.ubi (every file's data)",
                        [sys.executable, "-c", _READ_UBI, image])
        measures.append(read_ubi)
    first_tf, first_dl = combine(runs["targetfiles"]), combine(runs["delta"])
    first_vf = step("verify", "doit verify", [*doit(0, "verify"), "-s", "verify",
                                              *folders(0)])
    one_command = combine(runs["chain"])
    if full:
        shell, bsdiff_loop = combine(runs["shell"]), combine(runs["bsdiff"])
        measures += [shell, first_tf, first_dl, first_vf, one_command, bsdiff_loop]
    else:
        measures += [first_tf, first_dl, first_vf, one_command]
    steps_alone = first_tf.seconds + first_dl.seconds + first_vf.seconds
    chain_line = (f"the pair's first chain: {steps_alone:.1f} s as three commands (targetfiles "
                  f"{first_tf.seconds:.1f} + delta {first_dl.seconds:.1f} + verify "
                  f"{first_vf.seconds:.1f}), {one_command.seconds:.1f} s as one "
                  "(`_delta_ahead` beside targetfiles)")
    out, state = run / "trial0" / "out", run / "trial0" / "state"
    summary = json.loads((out / "update.json").read_text())

    if full:
        patch_bytes = sum(p.stat().st_size for p in (loop / "patch").rglob("*.p"))
        whole_bytes = sum((loop / "new" / rel).stat().st_size for rel in whole)
        with zipfile.ZipFile(loop / "loop.zip", "w", zipfile.ZIP_DEFLATED) as zf:
            for p in sorted((loop / "patch").rglob("*.p")):
                zf.write(p, "patch/" + p.relative_to(loop / "patch").as_posix())
            for rel in whole:
                zf.write(loop / "new" / rel, rel)
        loop_zip = (loop / "loop.zip").stat().st_size
        shutil.rmtree(loop)

        tf = ["targetfiles", "--sdk", sdk, "--source", source, *folders(0)]
        dl = ["delta", "--config", CONFIG_DIR, *folders(0)]
        vf = ["verify", *folders(0)]
        chain = [*tf, *dl, *vf]
        again = step("again", "second chain, nothing changed", [*doit(0, "again"), *chain])
        measures.append(again)
        ran_again = _tasks_run(logs / "again.log")
        one = sdk / ROOTFS_DIR / plan.changes.one_file
        one.write_bytes(_edit(one.read_bytes(), f"{_SEED}:one-file", 3))
        version = sdk / ROOTFS_DIR / "etc" / "quectel-project-version"
        version.write_text(version.read_text().replace(NEXT.package_time, BUMPED_TIME))
        one_change = step("one-file", "chain after a one-file change",
                          [*doit(0, "one-file"), *chain])
        measures.append(one_change)
        cache_line = _cache_line(state)

    # the pair's SDK as generated (the one-file change above edits only the run's copy)
    cross = cross_baseline(step, run, data / "ql-ol-extsdk", cross_source, profile, repeat)
    measures += [cross.targetfiles, cross.delta, cross.verify]
    cores.append(parallel_throughput())

    package = summary["package_size"]
    verify_pair, verify_cross = verify_goals(first_dl, first_vf, cross)
    goals: tuple[Goal, ...] = (verify_pair, verify_cross)
    if full:
        first_chain = first_tf.seconds + first_dl.seconds + first_vf.seconds
        peak = max(m.peak_kb for m in (first_tf, first_dl, first_vf, again, one_change))
        goals = (
            Goal("1", "doit targetfiles / shell procedure", first_tf.seconds / shell.seconds,
                 0.5, "x"),
            Goal("2", "doit delta / Debian bsdiff loop (wall)", first_dl.seconds
                 / bsdiff_loop.seconds, 0.5, "x"),
            Goal("2b", "update.zip / loop's patches + whole files (bytes)",
                 package / (patch_bytes + whole_bytes), 1.0, "x"),
            Goal("3", "second chain, nothing changed / first chain",
                 again.seconds / first_chain, 0.05, "x"),
            Goal("4", "chain after a one-file change / first chain", one_change.seconds
                 / first_chain, 0.2, "x"),
            Goal("5", "peak memory of the chain (MB)", peak / 1024, 1536, "MB"),
            verify_pair,
            verify_cross,
            Goal("U1", f"read the {_size_mb(image.stat().st_size)} sysfs image (s)",
                 read_ubi.seconds, 5.0, "s"),
            Goal("U2", "peak memory reading it (MB)", read_ubi.peak_kb / 1024, 300, "MB"),
        )
    with zipfile.ZipFile(source) as zf:
        base_entries = len(zf.infolist())
    with zipfile.ZipFile(cross_source) as zf:
        cross_entries = len(zf.infolist())
    next_tree = folder_counts(sdk / ROOTFS_DIR)
    new = cross_baseline_new(plan)
    data_rows = [
        ("rootfs (next SDK)", f"{next_tree[0]:,} entries ({next_tree[1]:,} files, "
                              f"{next_tree[2]:,} symlinks, {next_tree[3]:,} folders), "
                              f"{_size_mb(next_tree[4])}"),
        ("modem firmware", _size_mb(sum(plan.modem_segments)
                                    + sum(s for _p, s in plan.modem_extra))),
        ("boot image", _size_mb(plan.boot_size)),
        ("base targetfiles.zip", f"{base_entries:,} entries, {_size_mb(source.stat().st_size)}"),
        ("changes", f"{len(plan.changes.modified)} files modified, "
                    f"{len(plan.changes.added)} paths added, {len(plan.changes.removed)} "
                    f"removed, {len(plan.changes.mode_changed)} modes, "
                    f"{len(plan.changes.retargeted)} symlinks retargeted, "
                    f"{len(plan.changes.replaced)} replaced by another type; kernel and abl"),
        ("delta plan", _plan_line(summary)),
        ("update.zip", _package_line(summary)),
    ]
    if full:
        data_rows.append(("bsdiff loop", f"{len(diffs)} diffs: patches {_size_mb(patch_bytes)}; "
                                         f"whole files {_size_mb(whole_bytes)} ({len(whole)}); "
                                         f"zipped {_size_mb(loop_zip)}"))
    data_rows += [
        ("verify", _verify_line(summary)),
        ("cross-baseline source", f"the sample's release targetfiles.zip, {cross_entries:,} "
                                  f"entries, {_size_mb(cross_source.stat().st_size)}"),
        ("cross-baseline new entries", f"{new.files:,} files, {new.symlinks:,} symlinks, "
                                       f"{new.folders:,} folders"),
        ("cross-baseline delta plan", _plan_line(cross.summary)),
        ("cross-baseline update.zip", _package_line(cross.summary)),
        ("cross-baseline verify", _verify_line(cross.summary)),
    ]
    times = f"{repeat} time{'s' if repeat > 1 else ''} each, in turns"
    times = (f"the shell procedure, doit targetfiles, doit delta and the bsdiff loop ran {times}"
             if full else f"only the verify cases ran (--cases {cases}): doit targetfiles and "
             f"doit delta ran {times}")
    notes: tuple[str, ...] = (
        f"{times}, each time in fresh folders (empty archive, state and patch cache before "
        "targetfiles); wall s is their median, the memory their largest; doit verify ran once.",
    )
    if full:
        synced = 2 * (out / "targetfiles.zip").stat().st_size + source.stat().st_size
        notes += (
            f"{chain_line}; {_clocks(summary)}.",
            f"doit targetfiles + doit delta: {first_tf.seconds + first_dl.seconds:.1f} s; shell "
            f"procedure + bsdiff loop: {shell.seconds + bsdiff_loop.seconds:.1f} s "
            f"({(first_tf.seconds + first_dl.seconds) / (shell.seconds + bsdiff_loop.seconds):.2f}"
            "x).",
            f"doit targetfiles syncs {_size_mb(synced)} to the disk (the zip, which is archived "
            "as it is, its copy in out/, the archived source): at the disk's rate measured "
            f"above, {synced / MB / disk_rate:.1f} s, "
            f"{synced / MB / disk_rate / shell.seconds:.2f}x the shell procedure's time by itself"
            " (the shell procedure syncs nothing).",
            f"second chain: tasks that ran: {', '.join(ran_again) or 'none'}.",
            f"one-file change ({plan.changes.one_file}): {cache_line}.",
        )
    else:
        notes += (f"{chain_line}; {_clocks(summary)}.",)
    notes += (
        "cross-baseline package (goal 6b): the sample's release firmware as source, the pair's"
        " next SDK as target, the sample's lists, in a workspace of its own; delta "
        f"{cross.delta.seconds:.1f} s, verify {cross.verify.seconds:.1f} s; "
        f"{_clocks(cross.summary)}.",
        f"verify's power-loss replays: the pair: {_replay_detail(summary)}; cross-baseline: "
        f"{_replay_detail(cross.summary)}.",
    )
    if full and tool_digest() != tool:
        notes += ("the tool's code changed during the run (tasks/**/*.py or templates/): doit "
                  "took every output as out of date; goals 3 and 4 are not meaningful",)
    machine_rows: tuple[tuple[str, str], ...] = (
        *machine(), ("two busy processes at once", f"{cores[0]:.2f}x the work of one alone "
                                                   f"before the steps, {cores[1]:.2f}x after"))
    if full:
        machine_rows += (("disk, written and synced", f"{disk_rate:.0f} MB/s"),)
    table = Table(scale, machine_rows, tuple(data_rows), tuple(measures), goals, notes, cases)
    say(format_table(table))
    for note in notes:
        say(f"- {note}")
    if report is not None and not profile:
        atomic.write_text(report, render_report(table))
        say(f"bench: written {report}")
    return table


def folder_counts(root: Path) -> tuple[int, int, int, int, int]:
    """(entries, files, symlinks, folders, bytes of the files) under `root`."""
    files = links = dirs = size = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISLNK(st.st_mode):
                links += 1
            elif stat.S_ISDIR(st.st_mode):
                dirs += 1
            else:
                files += 1
                size += st.st_size
    return files + links + dirs, files, links, dirs, size


def profile_summary(prof: Path, limit: int = 25) -> str:
    """The functions of a cProfile output that take the most time, inner time first."""
    import io
    import pstats

    text = io.StringIO()
    stats = pstats.Stats(str(prof), stream=text)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return text.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dfota.tools.bench", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--work", type=Path, default=PROJECT_DIR / "build" / "bench",
                        help="folder for the generated pair and the runs [build/bench]")
    parser.add_argument("--scale", type=float, default=1.0, help="size of the pair [1]")
    parser.add_argument("--report", type=Path, default=None,
                        help="write the figures here [BENCHMARKS.md at scale 1, else none]")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each of the first steps; the median counts [3]")
    parser.add_argument("--profile", action="store_true",
                        help="run the doit steps under cProfile (times inflated, no report)")
    parser.add_argument("--cases", choices=CASES, default="all",
                        help="all: every step; verify: only doit verify against doit delta, "
                             "on the pair and on the cross-baseline package (goals 6 and 6b; "
                             "BENCHMARKS.md only with --report) [all]")
    args = parser.parse_args(argv)
    report = args.report or (REPORT if args.scale == 1.0 and args.cases == "all" else None)
    try:
        run_benchmark(args.work, args.scale, lambda line: print(line, flush=True), report,
                      args.profile, args.repeat, args.cases)
    except DfotaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.profile:
        for prof in sorted((args.work.resolve() / "run" / "logs").glob("*.prof")):
            (prof.with_suffix(".txt")).write_text(profile_summary(prof))
            print(f"bench: profile of {prof.stem}: {prof.with_suffix('.txt')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
