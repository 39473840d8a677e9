"""The DFOTA package: the updater-script's steps from a plan, and the zip entries that carry them.

The script is written for the module's updater as `device-updater.md` describes it: patched
files inherit the source's mode, extracted files are created 0644, symlink entries would become
files (so links are made by `symlink()`), `apply_patch` never aborts by itself, `755` without a
leading 0 is decimal, and nothing is written before every source has passed its check.
"""

from __future__ import annotations

import contextlib
import threading
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import jinja2

from dfota.core.errors import DfotaError
from dfota.core.tree import DIR, FILE, SYMLINK, Entry
from dfota.formats import edify
from dfota.formats.filelists import ChmodRule
from dfota.formats.version import VERSION_FILE
from dfota.formats.zipdeflate import DEFLATER, EarlierStreams
from dfota.formats.zipio import ZipSource
from dfota.package.mode import Part
from dfota.package.plan import Change, Kind, Span, covers
from dfota.settings import TEMPLATES, Workspace
from dfota.state.store import State

SCRIPT_ENTRY = "META-INF/com/google/android/updater-script"
BINARY_ENTRY = "META-INF/com/google/android/update-binary"
VERSION_ENTRY = "quectel-project-version"
PLACEHOLDER = ".dfota_keep"  # carries an empty directory; deleted by the script
MAX_ENTRIES = 65535  # the module's zip reader has no ZIP64
# record: a workspace's last package (by where `delta` writes it) -> its sha256 and deflater
PACKAGE_DEFLATER = "package-deflater"


def device_path(rel: str) -> str:
    return f"/system/{rel}"


def whole_entry(rel: str) -> str:
    return f"system/{rel}"


def patch_entry(rel: str) -> str:
    return f"patch/system/{rel}.p"


@dataclass(frozen=True, slots=True)
class FileCheck:
    check_path: str  # what apply_patch_check reads: a file, or MTD:<partition>:...
    shown: str
    source_sha1: str
    target_sha1: str


@dataclass(frozen=True, slots=True)
class FilePatch:
    path: str
    entry: str
    source_sha1: str
    target_sha1: str
    target_size: int
    progress: str = "0"


@dataclass(frozen=True, slots=True)
class PartitionWrite:
    partition: str
    entry: str
    entry_is_patch: bool
    source_size: int
    source_sha1: str
    target_size: int
    target_sha1: str

    @property
    def check_path(self) -> str:
        return (f"MTD:{self.partition}:{self.source_size}:{self.source_sha1}:"
                f"{self.target_size}:{self.target_sha1}")


@dataclass(frozen=True, slots=True)
class Perm:
    path: str
    uid: int
    gid: int
    mode: int
    dir_mode: int = 0
    recursive: bool = False


@dataclass(frozen=True)
class Script:
    """Everything the updater-script template needs, in the order the script runs."""

    source_key: str
    target_key: str
    parts: str
    version_file: str
    version_sha1s: tuple[str, ...]
    verify: tuple[FileCheck, ...]
    cache_space: int
    deletes: tuple[str, ...]
    delete_dirs: tuple[str, ...]
    patches: tuple[FilePatch, ...]
    boot: PartitionWrite | None
    stale_links: tuple[str, ...]
    extract: bool
    placeholders: tuple[str, ...]
    symlinks: tuple[tuple[str, tuple[str, ...]], ...]
    perms: tuple[Perm, ...]
    minor: tuple[PartitionWrite, ...]
    system_mount: tuple[str, str, str] = ("ubifs", "UBI", "system")
    progress: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Writes:
    """What a package changes on the module: /system's entries, the boot partition, the
    minor (MULTIFOTA) partitions."""

    changes: Sequence[Change]
    boot: PartitionWrite | None = None
    minor: Sequence[PartitionWrite] = ()


@dataclass(frozen=True)
class TargetSystem:
    """The target's /system as the script leaves it: its entries, the chmod list's rules, and
    how the module mounts it (file system type, device, volume)."""

    tree: Mapping[str, Entry]
    chmod: Sequence[ChmodRule]
    mount: tuple[str, str, str] = ("ubifs", "UBI", "system")


def empty_new_dirs(changes: Iterable[Change], target: Mapping[str, Entry]) -> list[str]:
    """Directories the module must create that nothing else would create: empty in the target."""
    with_children = {p.rsplit("/", 1)[0] for p in target if "/" in p}
    return [c.path for c in changes
            if c.target is not None and c.target.kind == DIR and c.path not in with_children
            and c.kind in (Kind.NEW_DIR, Kind.REPLACED)]


def _new_dir_roots(changes: Sequence[Change]) -> list[str]:
    new_dirs = {c.path for c in changes if c.target is not None and c.target.kind == DIR
                and c.kind in (Kind.NEW_DIR, Kind.REPLACED)}
    return sorted(p for p in new_dirs if p.rpartition("/")[0] not in new_dirs)


def permission_steps(changes: Sequence[Change], target: Mapping[str, Entry],
                     chmod: Sequence[ChmodRule], parts: frozenset[Part]) -> list[Perm]:
    """Recursive defaults for each new folder tree, then each touched entry that differs from
    its default, then the chmod list (rules whose path is in the target)."""
    touched = [c.target for c in changes if c.target is not None and c.target.kind != SYMLINK
               and c.kind not in (Kind.UNCHANGED, Kind.LINK_RETARGETED)]
    steps: list[Perm] = []
    defaults: dict[str, tuple[int, int, int, int]] = {}
    for root in _new_dir_roots(changes):
        inside = [e for e in touched if e.path == root or e.path.startswith(root + "/")]
        dirs = Counter((e.uid, e.gid, e.mode) for e in inside if e.kind == DIR)
        files = Counter((e.uid, e.gid, e.mode) for e in inside if e.kind == FILE)
        uid, gid, dir_mode = dirs.most_common(1)[0][0]
        file_mode = max(((n, m) for (u, g, m), n in files.items() if (u, g) == (uid, gid)),
                        default=(0, 0o644))[1]
        defaults[root] = (uid, gid, dir_mode, file_mode)
        steps.append(Perm(device_path(root), uid, gid, file_mode, dir_mode, recursive=True))
    for entry in touched:
        top = next((r for r in defaults if entry.path == r or entry.path.startswith(r + "/")),
                   None)
        if top is not None:
            uid, gid, dir_mode, file_mode = defaults[top]
            expected = dir_mode if entry.kind == DIR else file_mode
            if (entry.uid, entry.gid, entry.mode) == (uid, gid, expected):
                continue
        steps.append(Perm(device_path(entry.path), entry.uid, entry.gid, entry.mode))
    # folders outermost first, then files: the most specific rule is applied last and wins
    for rule in sorted(chmod, key=lambda r: (not r.is_folder, r.path.count("/"), r.line)):
        rel = rule.path.removeprefix("SYSTEM/")
        found = target.get(rel)
        if found is None or found.kind == SYMLINK or not covers(parts, rel):
            continue  # set_perm on a missing path would abort the whole update
        if rule.is_folder and found.kind == DIR:
            steps.append(Perm(device_path(rel), rule.uid, rule.gid, rule.mode, rule.dir_mode,
                              recursive=True))
        elif not rule.is_folder:
            steps.append(Perm(device_path(rel), rule.uid, rule.gid, rule.mode))
    return steps


def _fraction(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def script_steps(span: Span, writes: Writes, target_system: TargetSystem,
                 version_sha1s: Sequence[str]) -> Script:
    """The updater-script's steps for `writes`, from a source whose version file has one of
    `version_sha1s` (the source's, and the target's for a re-run) to `target_system`."""
    changes, boot, minor = writes.changes, writes.boot, writes.minor
    target = target_system.tree
    patched = [c for c in changes if c.kind is Kind.PATCHED]
    verify = []
    for c in patched:
        assert c.source is not None and c.target is not None
        verify.append(FileCheck(device_path(c.path), device_path(c.path), c.source.sha1,
                                c.target.sha1))
    if boot is not None and boot.entry_is_patch:
        verify.append(FileCheck(boot.check_path, f"the {boot.partition} partition",
                                boot.source_sha1, boot.target_sha1))
    sources = [c.source.size for c in patched if c.source is not None]
    if boot is not None and boot.entry_is_patch:
        sources.append(boot.source_size)

    deleted_files = [c.path for c in changes if c.source is not None and c.source.kind == FILE
                     and (c.target is None or c.target.kind != FILE)]
    stale_links = [c.path for c in changes if c.source is not None and c.source.kind == SYMLINK
                   and (c.target is None or c.target.kind != SYMLINK)]
    removed_dirs = _removal_roots(changes)
    # a removed tree takes everything under it along
    deleted_files = [p for p in deleted_files if not _under_any(p, removed_dirs)]
    stale_links = [p for p in stale_links if not _under_any(p, removed_dirs)]

    links: dict[str, list[str]] = {}
    for c in changes:
        if c.target is not None and c.target.kind == SYMLINK and c.kind is not Kind.UNCHANGED:
            links.setdefault(c.target.link, []).append(device_path(c.path))

    placeholders = [device_path(f"{d}/{PLACEHOLDER}") for d in empty_new_dirs(changes, target)]
    whole = [c for c in changes if c.shipped_whole]

    weights = {
        "verify": sum(sources) * 0.1,
        "patches": float(sum(c.target.size for c in patched if c.target is not None)),
        "boot": float(boot.target_size if boot else 0),
        "extract": float(sum(c.target.size for c in whole if c.target is not None)),
        "minor": float(sum(m.target_size for m in minor)),
    }
    total = sum(weights.values()) or 1.0
    progress = {k: _fraction(v / total) for k, v in weights.items()}
    last = next((k for k in reversed(weights) if weights[k]), None)
    if last is not None:  # the segments add up to exactly 1 despite rounding
        others = sum(round(v / total, 4) for k, v in weights.items() if k != last)
        progress[last] = _fraction(1 - others)
    else:  # nothing weighs (every file empty): the whole bar at the end
        progress["end"] = _fraction(1)
    patch_total = weights["patches"] or 1.0
    done = 0.0
    patches = []
    for c in patched:
        assert c.source is not None and c.target is not None
        done += c.target.size
        patches.append(FilePatch(device_path(c.path), patch_entry(c.path), c.source.sha1,
                                 c.target.sha1, c.target.size, _fraction(done / patch_total)))

    return Script(
        source_key=span.source_key, target_key=span.target_key,
        parts=",".join(sorted(p.value for p in span.parts)),
        version_file=device_path(VERSION_FILE), version_sha1s=tuple(version_sha1s),
        verify=tuple(verify), cache_space=max(sources, default=0),
        deletes=tuple(device_path(p) for p in deleted_files),
        delete_dirs=tuple(device_path(p) for p in removed_dirs),
        patches=tuple(patches), boot=boot,
        stale_links=tuple(device_path(p) for p in stale_links),
        extract=bool(whole or placeholders), placeholders=tuple(placeholders),
        symlinks=tuple((t, tuple(sorted(ls))) for t, ls in sorted(links.items())),
        perms=tuple(permission_steps(changes, target, target_system.chmod, span.parts)),
        minor=tuple(minor), system_mount=target_system.mount, progress=progress,
    )


def _under_any(path: str, roots: Iterable[str]) -> bool:
    return any(path.startswith(root + "/") for root in roots)


def _removal_roots(changes: Iterable[Change]) -> list[str]:
    """Source directories that go (removed, or replaced by a file or link), outermost only."""
    dirs = sorted(c.path for c in changes if c.source is not None and c.source.kind == DIR
                  and (c.target is None or c.target.kind != DIR))
    roots: list[str] = []
    for path in dirs:
        if not _under_any(path, roots):
            roots.append(path)
    return roots


def render_script(script: Script) -> bytes:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = edify.quote
    env.filters["mode"] = edify.mode
    text = env.get_template("updater-script.j2").render(s=script)
    return text.encode("utf-8")


_CLASSIC_LIMIT = 0xFFFFFFFF - 1  # sizes and offsets a zip holds without ZIP64
_ZIP64_SWITCH = threading.Lock()


@contextlib.contextmanager
def without_zip64() -> Iterator[None]:
    """Zips written meanwhile use ZIP64 only for what 32 bits cannot hold: the module's zip
    reader takes no ZIP64, and Python's zipfile uses it from 2 GiB on (a signed limit)."""
    with _ZIP64_SWITCH:
        was = zipfile.ZIP64_LIMIT
        zipfile.ZIP64_LIMIT = _CLASSIC_LIMIT  # type: ignore[misc]
        try:
            yield
        finally:
            zipfile.ZIP64_LIMIT = was  # type: ignore[misc]


def note_package(ws: Workspace, state: State, sha256: str) -> None:
    """The package just written at `ws.pending_zip`, with these bytes, was deflated by this
    process's `DEFLATER`: the next package may take its streams (`earlier_streams`)."""
    state.records.put(PACKAGE_DEFLATER, str(ws.pending_zip),
                      {"sha256": sha256, "deflater": DEFLATER})


@contextlib.contextmanager
def earlier_streams(ws: Workspace, state: State) -> Iterator[EarlierStreams | None]:
    """The deflate streams of the workspace's last package, unverified or published since,
    when it is still the one `note_package` noted and the deflater is this process's."""
    kept = state.records.get(PACKAGE_DEFLATER, str(ws.pending_zip))
    source = None
    if isinstance(kept, dict) and kept.get("deflater") == DEFLATER:
        with contextlib.suppress(DfotaError):  # gone or damaged: every entry deflated again
            earlier = next((p for p in (ws.pending_zip, ws.update_zip) if p.is_file() and
                            state.digests.file_digest(p, "sha256") == kept.get("sha256")), None)
            source = ZipSource(earlier) if earlier is not None else None
    if source is None:
        yield None
        return
    with source:
        yield EarlierStreams(source)
