"""Two trees compared entry by entry, one line per difference by path: a targetfiles.zip
against the firmware images, the SDK's rootfs folder against its own sysfs image."""

from __future__ import annotations

from collections.abc import Mapping

from dfota.core.errors import quoted, shown_path
from dfota.core.tree import DIR, FILE, SYMLINK, Entry


def is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def kind_name(kind: str) -> str:
    return {FILE: "a file", DIR: "a directory", SYMLINK: "a symlink"}.get(kind, kind)


def under(path: str, folder: str) -> bool:
    """`path` is `folder` or lies below it."""
    return path == folder or path.startswith(folder + "/")


def compare_trees(expected: Mapping[str, Entry], actual: Mapping[str, Entry], *,
                  names: tuple[str, str] = ("targetfiles.zip", "the image"), prefix: str = "",
                  owners: bool = True) -> list[str]:
    """One line per difference, by path (shown with `prefix`): entries on one side only,
    type, content (sha1), mode, owner (unless `owners` is False) and link target.
    A name that is not valid UTF-8 is reported as such (no targetfiles.zip can carry it)."""
    a_name, b_name = names
    lines: list[str] = []
    for path in sorted(set(expected) | set(actual), key=lambda p: p.encode("utf-8",
                                                                            "surrogateescape")):
        shown = shown_path(prefix + path)
        a, b = expected.get(path), actual.get(path)
        if not is_utf8(path):
            where = b_name if b is not None else a_name
            lines.append(f"{shown}: name is not valid UTF-8 (in {where})")
            continue
        if a is None and b is not None:
            lines.append(f"{shown}: in {b_name} only ({kind_name(b.kind)})")
            continue
        if b is None and a is not None:
            lines.append(f"{shown}: in {a_name} only ({kind_name(a.kind)})")
            continue
        assert a is not None and b is not None
        if a.kind != b.kind:
            lines.append(f"{shown}: {kind_name(a.kind)} in {a_name}, {kind_name(b.kind)} in "
                         f"{b_name}")
            continue
        if a.kind == FILE and a.sha1 != b.sha1:
            lines.append(f"{shown}: content differs ({a.size} bytes, sha1 {a.sha1[:12]} in "
                         f"{a_name}; {b.size} bytes, sha1 {b.sha1[:12]} in {b_name})")
        if a.kind == SYMLINK and a.link != b.link:
            lines.append(f"{shown}: link target {quoted(a.link)} in {a_name}, "
                         f"{quoted(b.link)} in {b_name}")
        if a.kind != SYMLINK and a.mode != b.mode:
            lines.append(f"{shown}: mode {a.mode:04o} in {a_name}, {b.mode:04o} in {b_name}")
        if owners and (a.uid, a.gid) != (b.uid, b.gid):
            lines.append(f"{shown}: owner {a.uid}:{a.gid} in {a_name}, {b.uid}:{b.gid} in "
                         f"{b_name}")
    return lines
