"""Random source and target trees, end to end: what the rootfs scan makes of the target, the
package `build_delta` writes for the pair, `verify_package`'s proof of it, and, with the real
updater (`DFOTA_ORACLE`), the same package applied by the module's own code: both updaters
must agree and reach the target.

The trees hold files (empty, small, larger, patched, replaced), folders and symlinks (dangling,
retargeted, long targets) under names of every length up to the kernel's limits made of every
character the project accepts, deep paths, set-id and odd modes, owners, type changes, and
fullota, noota and chmod list entries; FIFOs, sockets and device nodes only in the rootfs, which
must leave them out with a warning. `DFOTA_EXAMPLES` sets the number of pairs (100 by default).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.vendor.pretty import RepresentationPrinter

from dfota.core.tree import DIR, FILE, SYMLINK, Entry, scan_folder, sha1_bytes
from dfota.device.updater import apply_package
from dfota.formats.elf import build_abl_elf
from dfota.formats.filelists import (
    CHMOD_LIST,
    FULLOTA_LIST,
    NOOTA_LIST,
    REQUIRED_LISTS,
    lists_in,
)
from dfota.formats.version import VERSION_FILE
from dfota.package.delta import build_delta
from dfota.package.mode import parse_mode
from dfota.package.plan import DEVICE_NAME_MAX, DEVICE_PATH_MAX
from dfota.package.writer import PLACEHOLDER
from dfota.proof.verify import VerifyInputs, verify_package
from dfota.settings import DeltaSettings
from dfota.settings import Workspace as Folders
from tests.builders import (
    BASE_REV,
    NEXT_REV,
    Node,
    binary,
    boot_image,
    d,
    edited,
    f,
    ln,
    make_tree,
    set_modes,
    version_text,
    with_parents,
    write_targetfiles,
)
from tests.oracle import differences, model_device, model_outcome, oracle_folder, real_run_device
from tests.test_delta import quiet

# a hundred random pairs, each built, verified and applied by the real updater: minutes
pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("DFOTA_EXAMPLES", "100"))
# a path must leave room for `/system/` before it and an empty folder's placeholder after it
PATH_ROOM = DEVICE_PATH_MAX - 1 - len("/system/") - len("/" + PLACEHOLDER)
FILE_MODES = [0o644, 0o755, 0o600, 0o4755, 0o2755, 0o6711, 0o1755, 0o444, 0o000, 0o640, 0o700]
DIR_MODES = [0o755, 0o700, 0o750, 0o1777, 0o2775, 0o555, 0o711, 0o500]
OWNERS = [(0, 0), (1000, 1000), (0, 1000), (65534, 65534)]
SPECIALS = ("FIFO", "socket", "device node")

Path_ = tuple[str, ...]

# every character the project accepts in a name: valid UTF-8 without NUL or '/'
CHARACTERS = st.characters(blacklist_categories=["Cs"], blacklist_characters="/\0")


def _name_fits(name: str) -> bool:
    return name not in (".", "..", PLACEHOLDER) and len(name.encode()) <= DEVICE_NAME_MAX


def _longest(char: str, short_by: int) -> str:
    """A name of `char` repeated up to the kernel's 255 bytes, `short_by` bytes shorter."""
    return char * ((DEVICE_NAME_MAX - short_by) // len(char.encode()))


NAMES = st.one_of(
    st.text(CHARACTERS, min_size=1, max_size=6),
    st.text(CHARACTERS, min_size=7, max_size=70),
    st.builds(_longest, st.sampled_from(["n", "ü", "€", "𝄞", " "]), st.integers(0, 12)),
).filter(_name_fits)


def _bytes(path: Path_) -> int:
    return len("/".join(path).encode())


@dataclass
class Case:
    """One generated pair: the trees, what the target's rootfs holds besides, the lists."""

    source: dict[str, Node]
    target: dict[str, Node]
    specials: list[tuple[str, str]] = field(default_factory=list)
    lists: dict[str, str] = field(default_factory=dict)
    mode: str = "all"
    boot_changed: bool = True
    abl_changed: bool = True

    def _repr_pretty_(self, printer: RepresentationPrinter, cycle: bool) -> None:
        printer.text(repr(self))  # how hypothesis prints a failing case

    def __repr__(self) -> str:  # what a failure prints: content by size and sha1
        def tree(nodes: Mapping[str, Node]) -> str:
            return "".join(f"\n    {p!r}: {n.kind} {n.mode:04o} {n.uid}:{n.gid} "
                           + (f"{len(n.data)} bytes {sha1_bytes(n.data)[:10]}"
                              if n.kind == FILE else repr(n.link)[:80])
                           for p, n in sorted(nodes.items()))
        return (f"Case(mode={self.mode}, boot_changed={self.boot_changed}, abl_changed="
                f"{self.abl_changed}, specials={self.specials}, lists={self.lists},"
                f"\n  source:{tree(self.source)}\n  target:{tree(self.target)})")


def _settle(kinds: dict[Path_, str | None]) -> None:
    """Nothing below a file or a link; the folders above anything present are folders."""
    for path in sorted(kinds, key=len):
        if any(kinds.get(path[:n]) in (FILE, SYMLINK) for n in range(1, len(path))):
            kinds[path] = None
    for path in sorted(kinds, key=len, reverse=True):
        if kinds[path] is not None:
            for n in range(1, len(path)):
                if kinds.get(path[:n]) is None:
                    kinds[path[:n]] = DIR


Draw = st.DrawFn


def _content(draw: Draw) -> bytes:
    kind = draw(st.sampled_from(["empty", "text", "small", "large"]))
    seed = draw(st.integers(0, 1 << 16))
    if kind == "empty":
        return b""
    if kind == "text":
        return draw(st.text(max_size=40)).encode()
    return binary(seed, draw(st.integers(1, 4096) if kind == "small"
                             else st.integers(20_000, 160_000)))


def _file(draw: Draw, data: bytes) -> Node:
    uid, gid = draw(st.sampled_from(OWNERS))
    return f(data, draw(st.sampled_from(FILE_MODES)), uid, gid)


def _folder(draw: Draw) -> Node:
    uid, gid = draw(st.sampled_from(OWNERS))
    return d(draw(st.sampled_from(DIR_MODES)), uid, gid)


def _link(draw: Draw, pool: list[Path_]) -> Node:
    choice = draw(st.sampled_from(["pool", "absolute", "dangling", "name", "long"]))
    if choice in ("pool", "absolute"):
        other = "/".join(draw(st.sampled_from(pool)))
        return ln(other.split("/", 1)[-1] if choice == "pool" else "/" + other)
    if choice == "dangling":
        return ln("../nowhere/at/all")
    if choice == "long":
        return ln("x/" * draw(st.integers(100, 2000)))
    return ln(draw(NAMES))


def _target_node(draw: Draw, old: Node | None, kind: str, pool: list[Path_]) -> Node:
    """The target's node of a path that is `kind` there, often related to the source's."""
    if old is not None and old.kind == kind:
        how = draw(st.sampled_from(["same", "changed", "metadata", "new"]))
        if how == "same":
            return old
        if kind == FILE and how == "changed" and len(old.data) > 16:
            offsets = draw(st.lists(st.integers(0, len(old.data) - 1), min_size=1, max_size=4))
            return Node(FILE, old.mode, edited(old.data, *offsets), uid=old.uid, gid=old.gid)
        if kind == FILE and how == "metadata":
            return _file(draw, old.data)
        if kind == DIR:
            return _folder(draw)
    if kind == FILE:
        return _file(draw, _content(draw))
    if kind == DIR:
        return _folder(draw)
    return _link(draw, pool)


def _pool(draw: Draw) -> list[Path_]:
    """Paths below SYSTEM/r and SYSTEM/firmware: a few of any depth, and a chain of names
    that may reach the kernel's path limit."""
    pool: list[Path_] = []
    for _ in range(draw(st.integers(1, 10))):
        parent = draw(st.sampled_from([("r",), ("firmware",), *pool]))
        path = (*parent, draw(NAMES))
        if path not in pool and _bytes(path) <= PATH_ROOM:
            pool.append(path)
    chain: Path_ = ("r",)
    for name in draw(st.lists(NAMES, max_size=17)):
        if _bytes((*chain, name)) > PATH_ROOM:
            break
        chain = (*chain, name)
        if chain not in pool:
            pool.append(chain)
    return pool


def _listable(path: str, fields: bool) -> bool:
    """A path the vendor lists can name: one per line, trimmed; chmod lines split on spaces."""
    if fields:
        return not any(c.isspace() for c in path)
    return "\n" not in path and "\r" not in path and path == path.strip()


def _lists(draw: Draw, case: Case) -> None:
    """noota (kept or gone in the target, never changed), fullota and chmod entries."""
    noota, fullota, chmod = [], [], []
    for path, node in sorted(case.source.items()):
        if node.kind != FILE or path == VERSION_FILE or not _listable(path, False) \
                or draw(st.integers(0, 4)) != 0:
            continue
        parts = path.split("/")
        above = ["/".join(parts[:n]) for n in range(1, len(parts))]
        if any(case.target.get(p, d()).kind != DIR for p in above) or \
                case.target.get(path, node).kind != FILE:
            continue
        noota.append(f"SYSTEM/{path}")
        if draw(st.booleans()):
            case.target[path] = node
        else:
            case.target.pop(path, None)
    for path, node in sorted(case.target.items()):
        if path.startswith("etc"):
            continue
        if node.kind == FILE and _listable(path, False) and draw(st.integers(0, 5)) == 0:
            fullota.append(f"SYSTEM/{path}")
        if node.kind in (FILE, DIR) and _listable(path, True) and draw(st.integers(0, 4)) == 0:
            uid, gid = draw(st.sampled_from(OWNERS))
            mode = draw(st.sampled_from(FILE_MODES))
            chmod.append(f"/{path}/ {mode:04o} {uid} {gid} {draw(st.sampled_from(DIR_MODES)):04o}"
                         if node.kind == DIR else f"/{path} {mode:04o} {uid} {gid}")
    if draw(st.booleans()):
        chmod.append("/r/not-in-the-target 0644 0 0")  # warned about, never applied
    case.lists = {NOOTA_LIST: "".join(p + "\n" for p in noota),
                  FULLOTA_LIST: "".join(p + "\n" for p in fullota),
                  CHMOD_LIST: "".join(p + "\n" for p in chmod)}


@st.composite
def cases(draw: Draw) -> Case:
    pool = _pool(draw)
    kinds = [None, FILE, DIR, SYMLINK]
    source_kinds = {p: draw(st.sampled_from(kinds)) for p in pool}
    target_kinds = {p: draw(st.sampled_from([source_kinds[p], *kinds])) for p in pool}
    for kinds_of in (source_kinds, target_kinds):
        kinds_of.update({("r",): DIR, ("firmware",): DIR})
        _settle(kinds_of)
    source: dict[str, Node] = {}
    for path in sorted(pool, key=len):
        kind = source_kinds[path]
        if kind is not None:
            source["/".join(path)] = (_file(draw, _content(draw)) if kind == FILE
                                      else _folder(draw) if kind == DIR else _link(draw, pool))
    target: dict[str, Node] = {}
    for path in sorted(pool, key=len):
        kind = target_kinds[path]
        if kind is not None:
            target["/".join(path)] = _target_node(draw, source.get("/".join(path)), kind, pool)
    for tree, rev, time in ((source, BASE_REV, "2022-06-22,15:50"),
                            (target, NEXT_REV, "2022-07-15,09:30")):
        tree.setdefault("r", d())
        tree.setdefault("firmware", d())
        tree[VERSION_FILE] = f(version_text(rev, time))
    case = Case(source, target)
    _lists(draw, case)
    case.specials = [(f"r/special {n}", kind) for n, kind in enumerate(
        draw(st.lists(st.sampled_from(SPECIALS), max_size=3)))]
    case.mode = draw(st.sampled_from(["all", "all", "all", "rootfs", "modem", "l,m"]))
    case.boot_changed, case.abl_changed = draw(st.booleans()), draw(st.booleans())
    return case


def entries_of(tree: Mapping[str, Node]) -> dict[str, Entry]:
    return {rel: Entry(rel, n.kind, n.mode, n.uid, n.gid,
                       len(n.link.encode()) if n.kind == SYMLINK else len(n.data),
                       sha1_bytes(n.data) if n.kind == FILE else "", n.link)
            for rel, n in sorted(with_parents(tree).items())}


def write_rootfs(root: Path, tree: Mapping[str, Node], specials: list[tuple[str, str]]) -> int:
    """The tree as a rootfs folder on the host, with the special files; how many of those
    could be made (a device node needs root)."""
    full = with_parents(tree)
    make_tree(root, full)
    made = 0
    for rel, kind in specials:
        where = root / rel
        if kind == "FIFO":
            os.mkfifo(where)
        elif kind == "socket":
            os.mknod(where, stat.S_IFSOCK | 0o600)
        elif os.geteuid() == 0:
            os.mknod(where, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        else:
            continue
        made += 1
    set_modes(root, full, owners=_owners_settable())  # owners as given where root may
    return made


def _owners_settable() -> bool:
    return os.geteuid() == 0


def check_case(case: Case, tmp: Path, oracle: Path | None) -> None:
    # the rootfs: what the scan makes of it is the target, the special files left out
    rootfs = tmp / "rootfs"
    rootfs.mkdir()
    made = write_rootfs(rootfs, case.target, case.specials)
    scan = scan_folder(rootfs, build_owner=None if _owners_settable()
                       else (os.geteuid(), os.getegid()))
    expected = entries_of(case.target)
    if not _owners_settable():
        expected = {p: Entry(p, e.kind, e.mode, 0, 0, e.size, e.sha1, e.link)
                    for p, e in expected.items()}
    assert scan.entries == expected
    left_out = [w for w in scan.warnings if "cannot be packed; left out" in w]
    assert len(left_out) == made, scan.warnings

    base = write_targetfiles(tmp / "base.zip", case.source, boot=boot_image(1),
                             abl=build_abl_elf(b"a" * 900))
    (tmp / "out").mkdir()
    write_targetfiles(tmp / "out/targetfiles.zip", case.target,
                      boot=boot_image(2 if case.boot_changed else 1),
                      abl=build_abl_elf(b"b" * 900 if case.abl_changed else b"a" * 900))
    config = tmp / "config"
    config.mkdir()
    for name in REQUIRED_LISTS:
        (config / name).write_text(case.lists.get(name, ""))
    (config / "quectel_multifota_filelist.txt").write_text("abl.elf abl\n")
    delta = DeltaSettings(Folders(tmp / "out", tmp / "state", tmp / "archive"),
                          config_dir=config, base=str(base), mode=case.mode)
    if not build_delta(delta, quiet()).summary["changed"]:
        return  # nothing the mode covers changed: no package (tests of delta say so)
    package = delta.workspace.pending_zip
    report = verify_package(VerifyInputs(package, base, delta.workspace.target_zip,
                                         parse_mode(case.mode), lists_in(config)), quiet())
    assert report.ok, [c for c in report.checks if not c.ok]

    if oracle is not None:
        device = model_device(base)
        real = real_run_device(oracle, device.copy(), package)
        result = apply_package(package, device)
        found = differences(model_outcome(device, result), result.code, real)
        assert not found, "\n".join(found)
        assert real.exit == 0


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much, HealthCheck.large_base_example])
@given(cases())
def test_random_pairs_reach_the_target_on_both_updaters(case: Case) -> None:
    oracle = oracle_folder()
    with tempfile.TemporaryDirectory(prefix="dfota-pairs-") as tmp:
        check_case(case, Path(tmp), oracle)
