"""The benchmark's pair on disk (`generate_bench(root, scale)`), from its plan and nothing else:

- `root/firmware/upgrade/targetfiles.zip`: the base version, packed by Info-ZIP like the vendor's;
- `root/ql-ol-extsdk/`: the next SDK build (`target/sdxlemur-boot.img`, `target/abl.elf`,
  `target/sdxlemur-sysfs.ubi`, `ql-ol-rootfs/`).

Each planned file's content is drawn from the seed by its kind: ELF programs, text in the
style of its kind (gzip for documentation), data; the next version's edits are small.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from dfota.core.tree import FILE, SYMLINK
from dfota.formats.bootimg import build_boot_image, make_arm_zimage, make_dtb
from dfota.tools.bench.plan import (
    KB,
    MB,
    MODIFIED_BIG,
    SEED,
    WORDS,
    BenchPlan,
    Planned,
    bench_plan,
    pick,
    uniform,
)
from dfota.tools.sample.content import Program, code, edit, gzip, mbn, pil_image, prng
from dfota.tools.sample.generate import ROOTFS_DIR, sample_stamp
from dfota.tools.sample.images import abl_image, base_targetfiles_tree
from dfota.tools.sample.nodes import (
    Node,
    Tree,
    file_node,
    fix_modes_and_times,
    link_node,
    under_kept,
    with_parents,
    write_tree,
)
from dfota.tools.sample.rootfs import base_rootfs, next_rootfs
from dfota.tools.sample.ubi_images import sysfs_ubi
from dfota.tools.sample.vendor_tools import zip_tree
from dfota.tools.sample.versions import BASE, NEXT

STAMP_NAME = ".bench-stamp"
_GENERATOR = (Path(__file__).with_name("plan.py"), Path(__file__))  # what bench_stamp hashes

_VOCAB = (*WORDS, "def", "return", "self", "import", "from", "class", "if", "else", "for",
          "in", "not", "None", "True", "False", "try", "except", "raise", "with", "as", "yield",
          "=", "==", "+=", "(", ")", "[", "]", ":", ",", "args", "value", "result", "config",
          "path", "name", "data", "buffer", "socket", "handle", "status", "error", "timeout",
          "retry", "modem", "apn", "profile", "logger", "debug", "len", "range", "dict", "str")
_POOL = 4096


@functools.cache
def _lines(style: str) -> tuple[bytes, ...]:
    """A pool of lines in one style; a text file is lines drawn from it."""
    raw = prng(f"{SEED}:lines:{style}", _POOL * 10)
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
    picks = prng(label + "#lines", 2 * (size // 8 + 4))
    out = bytearray()
    i = 0
    while len(out) < size:
        out += pool[int.from_bytes(picks[2 * i : 2 * i + 2], "little") % _POOL]
        i += 1
    return bytes(out[:size])


def _edit_text(data: bytes, label: str, count: int) -> bytes:
    """`data` with `count` lines replaced."""
    lines = data.split(b"\n")
    picks = prng(label + "#text-edits", 4 * count)
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
    edits = 1 + int(uniform(f.label + "#n-edits") * 5)
    if f.kind in _ELF_KINDS:
        grow = 64 * KB if modified and f.path == MODIFIED_BIG else 0
        return Program(f.label, f.size, shared=f.kind != "program",
                       edits=(40 if grow else edits) if modified else 0,
                       grow=round(grow * min(1.0, f.size / (6 * MB)))).elf()
    if f.kind in _TEXT_STYLE:
        text = _text(f.label, f.size, _TEXT_STYLE[f.kind])
        if modified:
            text = _edit_text(text, f.label, edits)
        if f.kind == "doc":
            return gzip(text)
        return _MO_MAGIC + bytes(24) + text if f.kind == "locale" else text
    data = prng(f.label, f.size)
    if f.kind == "zoneinfo":
        data = b"TZif2" + bytes(15) + data
    return edit(data, f.label, edits) if modified else data


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
        node = file_node(_content(f, False), f.mode)
        base[f.path] = node
        if f.path in modified:
            nxt[f.path] = file_node(_content(f, True), f.mode)
        elif f.path in modes:
            nxt[f.path] = Node(FILE, _other_mode(f), node.data)
        elif f.path not in changes.removed:
            nxt[f.path] = node
    for path, target in plan.links:
        base[path] = link_node(target)
        others = [p for p in programs if "/" + p != target]
        nxt[path] = link_node("/" + pick(f"retarget:{path}", others)
                              if path in retargeted else target)
    for f in plan.added_files:
        nxt[f.path] = file_node(_content(f, False), f.mode)
    return with_parents(base), with_parents(nxt)


@functools.cache
def bench_boot_image(size: int, next_version: bool) -> bytes:
    """An Android boot image of about `size` bytes; the next kernel has edits throughout."""
    payload = code(f"{SEED}:kernel", size - 8 * KB)
    if next_version:
        payload = edit(payload, f"{SEED}:kernel", 200, grow=size // 128)
    dtb = make_dtb("Qualcomm Technologies, Inc. SDXLEMUR MTP",
                   ["qcom,sdxlemur-mtp", "qcom,sdxlemur", "qcom,mtp"])
    return build_boot_image(make_arm_zimage(payload, [dtb]),
                            cmdline=(NEXT if next_version else BASE).cmdline)


def bench_modem(plan: BenchPlan) -> Tree:
    """The modem firmware (`SYSTEM/firmware/`): a PIL image in segments, databases, mbn files."""
    mdt, segments = pil_image(f"{SEED}:modem", plan.modem_segments, 0x8CC00000)
    tree: Tree = {"image/modem.mdt": file_node(mdt)}
    for i, blob in enumerate(segments):
        tree[f"image/modem.b{i:02d}"] = file_node(blob)
    for n, (path, size) in enumerate(plan.modem_extra):
        tree[path] = file_node(mbn(path, size, 0x9E000000 + n * 0x100000) if path.endswith(".mbn")
                           else b"QDB\0" + prng(path, size))
    return with_parents(tree)


def bench_base_targetfiles(plan: BenchPlan, base: Tree) -> Tree:
    """The base targetfiles.zip: the sample's layout with the benchmark's SYSTEM and boot."""
    tree = {name: node for name, node in base_targetfiles_tree().items()
            if not name.startswith("SYSTEM/") or name.startswith("SYSTEM/dev/")}
    tree["BOOTABLE_IMAGES/boot.img"] = file_node(bench_boot_image(plan.boot_size, False))
    for rel, node in base.items():
        if not under_kept(rel):
            tree[f"SYSTEM/{rel}"] = node
    for rel, node in bench_modem(plan).items():
        tree[f"SYSTEM/firmware/{rel}"] = node
    return with_parents(tree)


def bench_stamp(scale: float) -> str:
    """A hash of what the pair is made from: the sample's generator, the scale and the
    benchmark's own generator (this module and the plan)."""
    digest = hashlib.sha256(f"{sample_stamp()}\0{scale!r}\0".encode())
    for path in _GENERATOR:
        digest.update(path.read_bytes())
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
    write_tree(bench_base_targetfiles(plan, base), work / "targetfiles", BASE.epoch)
    upgrade = root / "firmware" / "upgrade"
    upgrade.mkdir(parents=True)
    zip_tree(work / "targetfiles", upgrade / "targetfiles.zip")
    shutil.rmtree(work)
    sdk = root / "ql-ol-extsdk"
    target = sdk / "target"
    target.mkdir(parents=True)
    (target / "sdxlemur-boot.img").write_bytes(bench_boot_image(plan.boot_size, True))
    (target / "abl.elf").write_bytes(abl_image(True))
    sysfs_ubi(nxt, work, target / "sdxlemur-sysfs.ubi", "next", NEXT.epoch)
    shutil.rmtree(work)
    fix_modes_and_times(target, NEXT.epoch)
    write_tree(nxt, sdk / ROOTFS_DIR, NEXT.epoch)
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
