"""Small targetfiles.zip pairs made in tests: every kind of change, hostile names."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dfota.build.targetfiles import system_meta_items
from dfota.core.tree import DIR, FILE, SYMLINK, Entry
from dfota.formats.bootimg import build_boot_image, make_arm_zimage
from dfota.formats.zipio import ZipItem, bytes_item, dir_item, link_item, write_zip


@dataclass(frozen=True)
class Node:
    kind: str
    mode: int = 0o644
    data: bytes = b""
    link: str = ""
    uid: int = 0
    gid: int = 0


def f(data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0) -> Node:
    return Node(FILE, mode, data.encode() if isinstance(data, str) else data, uid=uid, gid=gid)


def d(mode: int = 0o755, uid: int = 0, gid: int = 0) -> Node:
    return Node(DIR, mode, uid=uid, gid=gid)


def ln(target: str) -> Node:
    return Node(SYMLINK, 0o777, link=target)


def version_text(rev: str, time: str) -> str:
    return (f"Project Name: RG520NNADA_VB\nProject Rev : {rev}\nBranch  Name: SDX6X\n"
            f"Custom  Name: STD\nPackage Time: {time}\n")


def binary(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def edited(data: bytes, *offsets: int) -> bytes:
    out = bytearray(data)
    for offset in offsets:
        out[offset] ^= 0xFF
    return bytes(out)


def with_parents(system: Mapping[str, Node]) -> dict[str, Node]:
    full = dict(system)
    for path in system:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            full.setdefault("/".join(parts[:depth]), d())
    return full


def write_targetfiles(path: Path, system: Mapping[str, Node], *, boot: bytes, abl: bytes,
                      meta: bool = True, filesmap: str = "sdxlemur-boot.img boot\nabl.elf abl\n",
                      extra: Mapping[str, bytes] | None = None) -> Path:
    tree = with_parents(system)
    items: list[ZipItem] = [
        bytes_item("BOOTABLE_IMAGES/boot.img", boot),
        bytes_item("MULTIFOTA/abl.elf", abl),
        bytes_item("OTA/bin/updater", b"\x7fELF updater stand-in", 0o755),
        bytes_item("RADIO/filesmap", filesmap.encode()),
        bytes_item("RECOVERY/RAMDISK/etc/recovery.fstab", b"/boot mtd boot\n"),
        dir_item("SYSTEM", 0o755),
    ]
    for name, data in (extra or {}).items():
        items.append(bytes_item(name, data))
    for rel, node in tree.items():
        name = f"SYSTEM/{rel}"
        if node.kind == DIR:
            items.append(dir_item(name, node.mode))
        elif node.kind == SYMLINK:
            items.append(link_item(name, node.link))
        else:
            items.append(bytes_item(name, node.data, node.mode))
    if meta:
        entries = {rel: Entry(rel, n.kind, n.mode, n.uid, n.gid, len(n.data),
                              hashlib.sha1(n.data).hexdigest() if n.kind == FILE else "",
                              n.link) for rel, n in tree.items()}
        items += system_meta_items(entries)
    parents = {i.name.rpartition("/")[0] for i in items} - {i.name for i in items} - {""}
    for parent in sorted(parents):
        parts = parent.split("/")
        for depth in range(1, len(parts) + 1):
            name = "/".join(parts[:depth])
            if name not in {i.name for i in items}:
                items.append(dir_item(name, 0o755))
    write_zip(path, items)
    return path


def boot_image(payload_seed: int) -> bytes:
    return build_boot_image(make_arm_zimage(binary(payload_seed, 20_000), []),
                            cmdline="console=ttyMSM0,115200n8")


HOSTILE = ['with space', 'quo"te', "back\\slash", "new\nline", "-leading-dash", "ünï cödé",
           '"); abort("injected']

BASE_REV = "RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001"
NEXT_REV = "RG520NNADAR01A01M4G_OCPU_BETA_20220715A_01.002"


def base_system() -> dict[str, Node]:
    big = binary(1, 60_000)
    return {
        "etc/quectel-project-version": f(version_text(BASE_REV, "2022-06-22,15:50")),
        "bin/busybox": f(big, 0o755),
        "bin/sh": ln("busybox"),
        "bin/old_link": ln("busybox"),
        "bin/retarget": ln("busybox"),
        "bin/file_to_link": f(binary(2, 3000), 0o755),
        "bin/link_to_file": ln("busybox"),
        "bin/dir_to_file": d(),
        "bin/dir_to_file/inner": f("inner"),
        "bin/file_to_dir": f("was a file"),
        "etc/mode_only.sh": f("#!/bin/sh\necho hi\n", 0o644),
        "etc/owner_only": f("owned\n"),
        "etc/deleted.conf": f("bye\n"),
        "etc/webui/test.cfg": f("user settings\n"),
        "usr/bin/ql_fullota_demo": f(binary(3, 5000), 0o755),
        "usr/bin/ql_secret_tool": f(binary(4, 4000), 0o755),
        "etc/ql_secret/key.pem": f("secret", 0o600),
        "etc/ql_secret": d(0o700),
        "usr/share/gone": d(),
        "usr/share/gone/sub": d(),
        "usr/share/gone/sub/file": f("gone"),
        "usr/share/gone/link": ln("sub/file"),
        "data/empty_kept": d(),
        "firmware/image/modem.mdt": f(binary(5, 8000)),
        "firmware/image/modem.b00": f(binary(6, 30_000)),
        "dev/pts": d(),
        **{f"odd/{name}": f(f"old {name}\n" * 50) for name in HOSTILE},
    }


def next_system() -> dict[str, Node]:
    base = base_system()
    nxt = dict(base)
    nxt["etc/quectel-project-version"] = f(version_text(NEXT_REV, "2022-07-15,09:30"))
    nxt["bin/busybox"] = f(edited(base["bin/busybox"].data, 100, 30_000, 59_000), 0o755)
    del nxt["bin/old_link"]
    nxt["bin/retarget"] = ln("/bin/busybox")
    nxt["bin/file_to_link"] = ln("busybox")
    nxt["bin/link_to_file"] = f(binary(7, 2000), 0o755)
    del nxt["bin/dir_to_file/inner"]
    nxt["bin/dir_to_file"] = f("now a file")
    nxt["bin/file_to_dir"] = d()
    nxt["bin/file_to_dir/child"] = f("child")
    nxt["etc/mode_only.sh"] = f("#!/bin/sh\necho hi\n", 0o755)
    nxt["etc/owner_only"] = f("owned\n", uid=1000, gid=1000)
    del nxt["etc/deleted.conf"]
    nxt["etc/new.conf"] = f("hello\n", 0o600)
    nxt["usr/lib/newdir/libnew.so"] = f(binary(8, 7000), 0o755)
    nxt["usr/lib/newdir"] = d(0o750)
    nxt["usr/lib/newdir/empty"] = d(0o700)
    nxt["usr/bin/ql_fullota_demo"] = f(base["usr/bin/ql_fullota_demo"].data, 0o755)
    for name in ("usr/share/gone", "usr/share/gone/sub", "usr/share/gone/sub/file",
                 "usr/share/gone/link"):
        del nxt[name]
    nxt["new_empty"] = d(0o711)
    nxt["firmware/image/modem.b00"] = f(edited(base["firmware/image/modem.b00"].data, 5, 900))
    for name in HOSTILE:
        nxt[f"odd/{name}"] = f(f"new {name}\n" + f"old {name}\n" * 49)
    nxt[f"odd/new {HOSTILE[3]}"] = f("fresh")
    return nxt


# the change kind of each path of the pair above (rootfs and modem)
EXPECTED_KINDS = {
    "etc/quectel-project-version": "whole", "bin/busybox": "patched",
    "bin/old_link": "symlink_removed", "bin/retarget": "symlink_retargeted",
    "bin/file_to_link": "replaced", "bin/link_to_file": "replaced",
    "bin/dir_to_file": "replaced", "bin/dir_to_file/inner": "deleted",
    "bin/file_to_dir": "replaced", "bin/file_to_dir/child": "new",
    "etc/mode_only.sh": "metadata", "etc/owner_only": "metadata", "etc/deleted.conf": "deleted",
    "etc/new.conf": "new", "usr/lib": "new_dir", "usr/lib/newdir": "new_dir",
    "usr/lib/newdir/libnew.so": "new", "usr/lib/newdir/empty": "new_dir",
    "usr/bin/ql_fullota_demo": "whole", "usr/share": "dir_removed",
    "usr/share/gone": "dir_removed",
    "usr/share/gone/sub": "dir_removed", "usr/share/gone/sub/file": "deleted",
    "usr/share/gone/link": "symlink_removed", "new_empty": "new_dir",
    "firmware/image/modem.b00": "patched", f"odd/new {HOSTILE[3]}": "new",
    **{f"odd/{name}": "patched" for name in HOSTILE},
}


def make_tree(root: Path, tree: Mapping[str, Node]) -> None:
    """Create the entries on the host (names may hold surrogates: they become raw bytes);
    their modes come with `set_modes`, once nothing more is made below them."""
    root.mkdir(parents=True, exist_ok=True)
    for rel in sorted(tree):
        node, path = tree[rel], root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if node.kind == DIR:
            path.mkdir(exist_ok=True)
        elif node.kind == SYMLINK:
            os.symlink(node.link, path)
        else:
            path.write_bytes(node.data)


def set_modes(root: Path, tree: Mapping[str, Node], *, owners: bool = False) -> None:
    """The entries' modes (and, with `owners`, their owners first: a chown clears set-ID
    bits), deepest first; symlinks keep theirs."""
    for rel in sorted(tree, key=lambda r: (-r.count("/"), r)):
        if tree[rel].kind != SYMLINK:
            if owners:
                os.chown(root / rel, tree[rel].uid, tree[rel].gid)
            os.chmod(root / rel, tree[rel].mode)


def write_tree(root: Path, tree: Mapping[str, Node]) -> None:
    """`make_tree` then `set_modes`."""
    make_tree(root, tree)
    set_modes(root, tree)
