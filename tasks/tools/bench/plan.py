"""The benchmark's plan: every generated path, kind and size of the pair, and how the next
version differs from the base, from a fixed seed and the scale alone (no content, cheap at any
scale). The sample SDK's own rootfs is the core of it, so the sample's config lists apply.

At scale 1 the rootfs holds about 150 MB in about 5,500 entries (ARM ELF programs, libraries
and kernel modules, Python and configuration text, gzip documentation, locale and data files,
symlinks), the modem firmware about 60 MB and the boot image about 8 MB. The next version
modifies about 2 % of the files with small edits, adds 1 %, removes 1 %, changes some modes and
symlinks, the kernel and abl. `scale` multiplies every count and every size (floors apply).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.tools.sample.content import prng
from dfota.tools.sample.nodes import under_kept
from dfota.tools.sample.rootfs import base_rootfs, next_rootfs
from dfota.tools.sample.versions import CHANGES

KB = 1024
MB = 1024 * 1024
SEED = "bench"



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

WORDS = ("ql", "msm", "qcom", "ubi", "mtd", "usb", "gsi", "ipa", "rmnet", "smd", "glink",
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


def uniform(label: str) -> float:
    return int.from_bytes(prng(label, 8), "little") / 2**64


def _log_size(label: str, low: int, high: int, scale: float) -> int:
    return max(64, round(low * (high / low) ** uniform(label) * scale))


def pick(label: str, seq: Sequence[str]) -> str:
    return seq[int(uniform(label) * len(seq))]


def _ranked(items: Iterable[str], label: str) -> list[str]:
    """A fixed shuffle: by the hash of each item and the label."""
    return sorted(items, key=lambda p: hashlib.sha1(f"{SEED}:{label}:{p}".encode()).digest())


@dataclass(frozen=True, slots=True)
class _Naming:
    """What a generated path is made of: its label, a word, a package and a name."""

    label: str
    i: int
    word: str
    pkg: str
    name: str


def _program_path(n: _Naming) -> str:
    return f"{pick(n.label, ('usr/bin', 'usr/sbin', f'usr/libexec/{n.pkg}'))}/{n.word}-{n.name}"


def _doc_path(n: _Naming) -> str:
    if n.i % 3:
        return f"usr/share/doc/{n.pkg}/changelog-{n.name}.gz"
    return f"usr/share/man/man{1 + n.i % 8}/{n.word}{n.name}.{1 + n.i % 8}.gz"


_PATHS: dict[str, Callable[[_Naming], str]] = {
    "module": lambda n: (f"usr/lib/modules/5.4.180/kernel/{pick(n.label, _GROUPS)}/"
                         f"{n.word}_{n.name}.ko"),
    "library": lambda n: f"usr/lib/lib{n.word}{n.name}.so.{n.i % 5}.{n.i % 7}.0",
    "program": _program_path,
    "python": lambda n: f"usr/lib/python3.8/site-packages/{n.pkg}/{n.word}_{n.name}.py",
    "config": lambda n: f"etc/{n.pkg}/{n.word}_{n.name}.conf",
    "script": lambda n: f"usr/share/webui/{n.pkg}/{n.word}_{n.name}.js",
    "locale": lambda n: (f"usr/share/locale/{pick(n.label, _LANGS)}/LC_MESSAGES/"
                         f"{n.word}{n.name}.mo"),
    "doc": _doc_path,
    "data": lambda n: f"usr/share/{n.pkg}/{n.word}_{n.name}.bin",
    "zoneinfo": lambda n: (f"usr/share/zoneinfo/{pick(n.label, _REGIONS)}/"
                           f"{n.word.capitalize()}_{n.name}"),
}


def _path_for(kind: str, i: int, tag: str) -> str:
    label = f"{tag}{kind}:{i}"
    return _PATHS[kind](_Naming(label, i, pick(label + "#w", WORDS),
                                f"{pick(label + '#p', WORDS)}{int(uniform(label + '#n') * 4)}",
                                f"{tag}{i}"))


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
    links |= {(f"etc/alternatives/alt-{i}", "/" + pick(f"alt:{i}", programs))
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
    new = [kind for path, kind in kinds.items() if path not in source and not under_kept(path)]
    return CrossNew(new.count(FILE), new.count(SYMLINK), new.count(DIR))
