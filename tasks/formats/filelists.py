"""The vendor's configuration lists: fullota, noota, chmod, multifota and project.

All five live in one folder under the vendor's file names. The note requires the first four
(fullota, noota, chmod, multifota): a folder without one of them is refused, naming the
missing ones; the project list is optional. `lists_in(None)` gives no lists at all
(`config = "none"`).
Every list reads UTF-8 text (a leading BOM and CRLF line ends are accepted). A line whose first
non-blank character is ``#`` is a comment, blank lines are ignored; there are no comments at the
end of a line, because file names may contain ``#``.

fullota / noota
    One file per line, as a zip path (``SYSTEM/etc/webui/test.cfg``) or as a path on the
    module's root filesystem (``/etc/webui/test.cfg``); both become the zip form. Surrounding
    whitespace is stripped, inner spaces belong to the name. Only single files: a line ending
    in ``/`` is refused, as is a path outside ``SYSTEM/``, one with a ``.`` or ``..`` component,
    or one that names nothing below ``SYSTEM/``. Repeated ``/`` are collapsed.

chmod
    ``path [mode [uid [gid [dirmode]]]]``, whitespace-separated (so a name holding whitespace
    cannot be listed). ``path`` is a root-filesystem path starting with ``/``
    (``/usr/bin/test_bin`` is ``SYSTEM/usr/bin/test_bin`` in the zip); a trailing ``/`` marks
    a folder. Modes are octal text of 3 or 4 digits (``755``, ``0755``, ``4755``); uid and gid
    are decimal. Omitted fields are the trailing ones and take the defaults.

    Defaults are 755 / 0 / 0 / 755 until a ``default [mode [uid [gid [dirmode]]]]`` line
    changes them; fields that line omits keep these built-in values. The ``default`` line is
    read before any entry, wherever it stands in the file, so it also applies to entries above
    it; a second ``default`` line is an error. It only fills omitted fields of listed entries:
    it is never applied to the whole tree.

    Figure 4 of the note names the columns "file permission" and "folder permission". For a
    folder entry, ``mode`` is given to every non-folder below the folder, ``dir_mode`` to the
    folder itself and every folder below it, and ``uid`` / ``gid`` to all of them: exactly
    edify's ``set_perm_recursive(uid, gid, dir_mode, mode, path)``. For a file entry, ``mode``,
    ``uid`` and ``gid`` apply to that one path (``set_perm``) and ``dir_mode`` is unused.
    Where rules overlap, a rule naming the path itself wins over a folder rule above it, and the
    deepest folder rule wins over the ones above it (see :func:`chmod_for`). A path may be
    listed only once.

multifota
    Minor-partition images: ``IMAGE PARTITION`` (``abl.elf abl``), where ``IMAGE`` is a file
    under ``MULTIFOTA/`` of the targetfiles (an optional ``MULTIFOTA/`` prefix is dropped), or a
    bare ``IMAGE`` whose partition is unknown (``None``: not mapped). An image may be listed
    once, and two images may not name the same partition.

project
    Unused by the vendor's tool; its non-comment, non-blank lines are kept verbatim (without
    the line end).

Errors are :class:`DfotaError` whose path is ``<list file>:<line>``, e.g.
``.../quectel_chmod_filelist.txt:7: mode '8x5' is not octal``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfota.core.errors import DfotaError, quoted, shown_path

FULLOTA_LIST = "quectel_fullota_filelist.txt"
NOOTA_LIST = "quectel_noota_filelist.txt"
CHMOD_LIST = "quectel_chmod_filelist.txt"
MULTIFOTA_LIST = "quectel_multifota_filelist.txt"
PROJECT_LIST = "quectel_project_filelist.txt"
LIST_NAMES = (FULLOTA_LIST, NOOTA_LIST, CHMOD_LIST, MULTIFOTA_LIST, PROJECT_LIST)

SYSTEM = "SYSTEM"
MULTIFOTA = "MULTIFOTA"
DEFAULT_MODE = 0o755
DEFAULT_UID = 0
DEFAULT_GID = 0
DEFAULT_DIR_MODE = 0o755
MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "leave unchanged" to chown

_OCTAL_MODE = re.compile(r"[0-7]{3,4}")
_DECIMAL = re.compile(r"[0-9]+")
_PARTITION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_CHMOD_FIELDS = ("mode", "uid", "gid", "folder mode")


@dataclass(frozen=True)
class ChmodRule:
    """One chmod-list entry, with defaults filled in.

    ``path`` is the zip form (``SYSTEM/usr/bin/test_bin``); a folder keeps no trailing ``/``.
    """

    path: str
    is_folder: bool
    mode: int
    uid: int
    gid: int
    dir_mode: int
    line: int


@dataclass(frozen=True)
class FileLists:
    """The five lists of one config folder; paths are in zip form (``SYSTEM/...``)."""

    fullota: tuple[str, ...]
    noota: tuple[str, ...]
    chmod: tuple[ChmodRule, ...]
    multifota: tuple[tuple[str, str | None], ...]
    project: tuple[str, ...]
    folder: Path | None  # None: no lists apply


@dataclass(frozen=True)
class _Line:
    number: int
    text: str  # stripped of surrounding whitespace


class _ListFile:
    """One list file: where it is, for error messages, and its meaningful lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.raw: list[str] = _read_lines(path)

    def error(self, number: int, message: str) -> DfotaError:
        return DfotaError(message, f"{self.path}:{number}")

    def lines(self) -> Iterator[_Line]:
        for number, raw in enumerate(self.raw, start=1):
            text = raw.strip()
            if text and not text.startswith("#"):
                yield _Line(number, text)


def _read_lines(path: Path) -> list[str]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise DfotaError("is a folder, expected a text file", path) from None
    except OSError as exc:
        raise DfotaError(f"cannot be read: {exc.strerror}", path) from None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines: list[str] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise DfotaError(f"line is not valid UTF-8: {shown_path(raw)}",
                             f"{path}:{number}") from None
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _plain_parts(rest: str, shown: str, where: _ListFile, number: int) -> list[str]:
    """The components of a relative path, refusing `.` and `..`; empty ones are dropped."""
    parts = [part for part in rest.split("/") if part]
    if any(part in (".", "..") for part in parts):
        raise where.error(number, f"{quoted(shown)} contains a '.' or '..' component")
    return parts


def _zip_file_path(text: str, where: _ListFile, number: int) -> str:
    """A fullota / noota line in zip form."""
    if text.endswith("/"):
        raise where.error(
            number, f"{quoted(text)} is a folder: only single files are supported in this list"
        )
    if text.startswith("/"):
        rest = text
    elif text == SYSTEM or text.startswith(SYSTEM + "/"):
        rest = text[len(SYSTEM) :]
    else:
        raise where.error(number, f"{quoted(text)} is outside {SYSTEM}/: write SYSTEM/<path> "
                                  "or /<path>")
    parts = _plain_parts(rest, text, where, number)
    if not parts:
        raise where.error(number, f"{quoted(text)} names no file below {SYSTEM}/")
    return "/".join([SYSTEM, *parts])


def _read_path_list(where: _ListFile) -> tuple[str, ...]:
    return tuple(_zip_file_path(line.text, where, line.number) for line in where.lines())


def _parse_mode(text: str, field: str, where: _ListFile, number: int) -> int:
    if not all(ch in "01234567" for ch in text):
        raise where.error(number, f"{field} '{text}' is not octal")
    if not _OCTAL_MODE.fullmatch(text):
        raise where.error(number, f"{field} '{text}' must have 3 or 4 octal digits")
    return int(text, 8)


def _parse_id(text: str, field: str, where: _ListFile, number: int) -> int:
    if not _DECIMAL.fullmatch(text):
        raise where.error(number, f"{field} '{text}' is not a decimal number")
    value = int(text)
    if value > MAX_ID:
        raise where.error(number, f"{field} '{text}' is out of range (0 to {MAX_ID})")
    return value


def _parse_values(
    fields: Sequence[str], base: tuple[int, int, int, int], where: _ListFile, number: int
) -> tuple[int, int, int, int]:
    """mode, uid, gid, dir_mode from the given leading fields, the rest from `base`."""
    if any(text.startswith("#") for text in fields):
        raise where.error(number, "comments must be on a line of their own")
    if len(fields) > len(_CHMOD_FIELDS):
        raise where.error(
            number,
            f"too many fields ({len(fields) + 1}): expected path [mode [uid [gid [dirmode]]]]",
        )
    values = list(base)
    for index, text in enumerate(fields):
        field = _CHMOD_FIELDS[index]
        if field in ("uid", "gid"):
            values[index] = _parse_id(text, field, where, number)
        else:
            values[index] = _parse_mode(text, field, where, number)
    return values[0], values[1], values[2], values[3]


def _read_chmod(where: _ListFile) -> tuple[ChmodRule, ...]:
    builtin = (DEFAULT_MODE, DEFAULT_UID, DEFAULT_GID, DEFAULT_DIR_MODE)
    defaults = builtin
    default_line: int | None = None
    entries: list[tuple[_Line, list[str]]] = []
    for line in where.lines():
        fields = line.text.split()
        if fields[0] == "default":
            if default_line is not None:
                raise where.error(
                    line.number, f"a second 'default' line (the first is line {default_line})"
                )
            default_line = line.number
            defaults = _parse_values(fields[1:], builtin, where, line.number)
        elif line.text.startswith("/"):
            entries.append((line, fields))
        else:
            raise where.error(
                line.number,
                f"{quoted(line.text)} is neither a comment, a 'default' line nor a path starting "
                "with '/'",
            )
    rules: list[ChmodRule] = []
    seen: dict[str, int] = {}
    for line, fields in entries:
        text = fields[0]
        parts = _plain_parts(text, text, where, line.number)
        if not parts:
            raise where.error(line.number, "'/' names the whole root filesystem")
        path = "/".join([SYSTEM, *parts])
        if path in seen:
            raise where.error(line.number, f"{quoted(text)} is already listed on line {seen[path]}")
        seen[path] = line.number
        mode, uid, gid, dir_mode = _parse_values(fields[1:], defaults, where, line.number)
        rules.append(ChmodRule(path, text.endswith("/"), mode, uid, gid, dir_mode, line.number))
    return tuple(rules)


def _read_multifota(where: _ListFile) -> tuple[tuple[str, str | None], ...]:
    images: dict[str, int] = {}
    partitions: dict[str, int] = {}
    result: list[tuple[str, str | None]] = []
    for line in where.lines():
        fields = line.text.split()
        if len(fields) > 2:
            raise where.error(line.number, "expected 'IMAGE PARTITION' or 'IMAGE'")
        text = fields[0]
        if text.startswith("/") or text.endswith("/"):
            raise where.error(line.number, f"image '{text}' must name a file under {MULTIFOTA}/")
        rest = text.removeprefix(MULTIFOTA + "/")
        parts = _plain_parts(rest, text, where, line.number)
        if not parts:
            raise where.error(line.number, f"image '{text}' names no file under {MULTIFOTA}/")
        image = "/".join(parts)
        if image in images:
            raise where.error(
                line.number, f"image '{image}' is already listed on line {images[image]}"
            )
        images[image] = line.number
        partition: str | None = None
        if len(fields) == 2:
            partition = fields[1]
            if not _PARTITION.fullmatch(partition):
                raise where.error(line.number, f"'{partition}' is not a partition name")
            if partition in partitions:
                raise where.error(
                    line.number,
                    f"partition '{partition}' is already written by line {partitions[partition]}",
                )
            partitions[partition] = line.number
        result.append((image, partition))
    return tuple(result)


REQUIRED_LISTS = (FULLOTA_LIST, NOOTA_LIST, CHMOD_LIST, MULTIFOTA_LIST)
NO_LISTS = FileLists((), (), (), (), (), None)


def lists_in(folder: str | Path | None) -> FileLists:
    """The lists of `folder`; none at all for None (or the empty text)."""
    return read_file_lists(Path(folder)) if folder else NO_LISTS


def read_file_lists(folder: Path) -> FileLists:
    """Read and check the lists in `folder`: the four the note requires, and the project
    list when there is one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DfotaError("config folder not found", folder)
    missing = [name for name in REQUIRED_LISTS if not (folder / name).exists()]
    if missing:
        raise DfotaError(f"vendor lists missing: {', '.join(missing)} (an empty file is an "
                         "empty list)", folder)
    project = tuple(
        where.raw[line.number - 1]
        for where in [_ListFile(folder / PROJECT_LIST)]
        for line in where.lines()
    )
    return FileLists(
        fullota=_read_path_list(_ListFile(folder / FULLOTA_LIST)),
        noota=_read_path_list(_ListFile(folder / NOOTA_LIST)),
        chmod=_read_chmod(_ListFile(folder / CHMOD_LIST)),
        multifota=_read_multifota(_ListFile(folder / MULTIFOTA_LIST)),
        project=project,
        folder=folder,
    )


def _under(folder: str, path: str) -> bool:
    return path.startswith(folder + "/")


@dataclass(frozen=True)
class _Target:
    """The target's zip paths, folders without their trailing `/`, and every folder above
    them."""

    present: frozenset[str]
    folders: frozenset[str]

    @staticmethod
    def of(paths: Collection[str]) -> _Target:
        present = frozenset(path.rstrip("/") for path in paths)
        folders = frozenset(
            "/".join(parts[:end])
            for parts in (path.split("/") for path in present)
            for end in range(1, len(parts))
        )
        return _Target(present, folders)


def check_file_lists(lists: FileLists, paths: Collection[str]) -> list[str]:
    """Warnings for listed paths absent from `paths`, the target's zip paths.

    A folder's zip entry may be given with or without its trailing ``/``; a folder rule is
    satisfied by the folder or anything under it. Raises :class:`DfotaError` when a file is in
    both the noota and the fullota list.
    """
    both = sorted(set(lists.noota) & set(lists.fullota))
    if both:
        raise DfotaError(
            f"{len(both)} file(s) in both {NOOTA_LIST} and {FULLOTA_LIST} ({', '.join(both)}): "
            "keep each in one list",
            lists.folder,
        )
    target = _Target.of(paths)
    return [
        *_path_list_warnings(FULLOTA_LIST, lists.fullota, target),
        *_path_list_warnings(NOOTA_LIST, lists.noota, target),
        *(f"{CHMOD_LIST}:{rule.line}: {'folder' if rule.is_folder else 'file'} "
          f"{shown_path(rule.path)} is not in the target"
          for rule in lists.chmod
          if rule.path not in target.present and rule.path not in target.folders),
        *(f"{MULTIFOTA_LIST}: {shown_path(MULTIFOTA + '/' + image)} is not in the target"
          for image, _partition in lists.multifota
          if f"{MULTIFOTA}/{image}" not in target.present),
    ]


def _path_list_warnings(name: str, listed: Sequence[str], target: _Target) -> list[str]:
    """The fullota or noota list's paths listed twice, naming a folder, or not in the
    target; each path once, in list order."""
    warnings: list[str] = []
    for path in dict.fromkeys(listed):
        if listed.count(path) > 1:
            warnings.append(f"{name}: {shown_path(path)} is listed {listed.count(path)} times")
        if path in target.folders:
            warnings.append(f"{name}: {shown_path(path)} is a folder in the target; "
                            "list its files")
        elif path not in target.present:
            warnings.append(f"{name}: {shown_path(path)} is not in the target")
    return warnings


def changed_noota_files(
    lists: FileLists, source: Mapping[str, str], target: Mapping[str, str]
) -> list[str]:
    """The noota files whose content the target changes, sorted.

    `source` and `target` map zip paths to sha1. A noota file counts as changed when the target
    has it and the source has other content or does not have it: either way the module would
    keep content that is not the target's. A noota file the target no longer has is not
    reported (moving it to the fullota list could not ship it).
    """
    return sorted(
        path for path in set(lists.noota) if path in target and source.get(path) != target[path]
    )


def noota_changed_error(lists: FileLists, changed: Sequence[str]) -> DfotaError:
    """The restriction-2 error for `changed` (from :func:`changed_noota_files`)."""
    if len(changed) == 1:
        what = f"{shown_path(changed[0])} changed between source and target: move it"
    else:
        what = (
            f"{len(changed)} files changed between source and target "
            f"({', '.join(map(shown_path, changed))}): "
            "move them"
        )
    return DfotaError(
        f"{what} from the noota list to the fullota list ({FULLOTA_LIST})",
        None if lists.folder is None else lists.folder / NOOTA_LIST,
    )


def chmod_for(rules: Sequence[ChmodRule], path: str, is_dir: bool) -> tuple[int, int, int] | None:
    """``(uid, gid, mode)`` the chmod list gives the zip path `path`, or None.

    A rule naming `path` itself wins (a file rule gives its ``mode``, a folder rule its
    ``dir_mode``); otherwise the deepest folder rule above `path` gives ``dir_mode`` to a folder
    and ``mode`` to anything else.
    """
    best: ChmodRule | None = None
    for rule in rules:
        if rule.path == path:
            mode = rule.dir_mode if rule.is_folder else rule.mode
            return rule.uid, rule.gid, mode
        if (
            rule.is_folder
            and _under(rule.path, path)
            and (best is None or len(rule.path) > len(best.path))
        ):
            best = rule
    if best is None:
        return None
    return best.uid, best.gid, best.dir_mode if is_dir else best.mode
