"""What a workspace keeps between runs, all in its state folder and all owned here.

- `digests.json`: the digests of files by path, for any hashlib algorithm, each trusted while
  the file's size, modification and change times and inode stay as they were (`file_stamp`);
- `records/<name>/<sha1 of key>.json`: keyed records (a name and a key -> a JSON value), each
  written with the tool's version (the digest of its own code): a record of another version
  is rebuilt, never read;
- `patch-cache/`: content-addressed blobs (the patches, named by the sha1s they join).

One `State` is opened per task action and handed to the modules that need it; its digests are
read once and written once, when it is closed. Every file is written aside and renamed into
place (dfota.core.atomic), so a reader sees the old file or the new one. A damaged or foreign file
reads as empty and is rebuilt. The workspace lock serializes the commands that write; a
command that only reads (upgrade, serve) may meet a writer, and the digests it saves are
merged with what is on disk, so the worst a race costs is a file hashed again.

The records of earlier versions of the tool (`hash-cache.json`, `archive-sha256.json`,
`member-sha1s/`, `bspatch-proven.json`, `sdk-image-tree.json`) are read once: the two digest
caches are taken into `digests.json` (they hold the same stamps), the others carry no tool
version and are removed, to be rebuilt. This module imports only the standard library,
dfota.core.atomic and dfota.core.errors.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dfota.core import atomic
from dfota.core.errors import DfotaError

FORMAT = 1
DIGESTS_NAME = "digests.json"
RECORDS_NAME = "records"
PATCH_CACHE_NAME = "patch-cache"
# what the tool kept before this module: digest caches taken over (with their algorithm),
# records removed (they say no tool version)
LEGACY_DIGESTS = (("hash-cache.json", "sha1"), ("archive-sha256.json", "sha256"))
LEGACY_RECORDS = ("member-sha1s", "bspatch-proven.json", "sdk-image-tree.json")

# a file written this recently may be written again within the same clock tick, leaving its
# times as they were: what is known of it by its `file_stamp` is not kept
RACY_NS = 2_000_000_000
_CHUNK = 1 << 20


def file_stamp(st: os.stat_result) -> list[int]:
    """What says a file is still the one seen: size, modification and change times (any
    write, chmod or rename moves the change time) and inode."""
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def settled(st: os.stat_result, now_ns: int, window_ns: int = RACY_NS) -> bool:
    """The file `st` shows was last written or changed more than `window_ns` before
    `now_ns`: a later write would move its `file_stamp`."""
    return now_ns - max(st.st_mtime_ns, st.st_ctime_ns) > window_ns


def hash_file(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    return digest.hexdigest()


def _is_stamp(value: object) -> bool:
    return isinstance(value, list) and len(value) == 4 and all(
        isinstance(n, int) and not isinstance(n, bool) for n in value)


def _entry(value: object) -> list[Any] | None:
    """A digest cache entry [size, mtime_ns, ctime_ns, inode, {algorithm: hex}], or None."""
    if isinstance(value, list) and len(value) == 5 and _is_stamp(value[:4]) and isinstance(
            value[4], dict) and all(isinstance(k, str) and isinstance(v, str)
                                    for k, v in value[4].items()):
        return value
    return None


def _read_digests(path: Path) -> dict[str, Any]:
    """The entries of a digest file, each checked only when used (`_entry`): a run with
    nothing to do asks for one or two of thousands."""
    saved = atomic.read_json_object(path)
    files = saved.get("files") if saved.get("format") == FORMAT else None
    return files if isinstance(files, dict) else {}


def _read_legacy(path: Path, algorithm: str) -> dict[str, list[Any]]:
    """A digest cache of the tool before this module: `{"files": {path: [stamp.., hex]}}`
    (sha1s) or `{path: [stamp.., hex]}` (sha256s)."""
    saved = atomic.read_json_object(path)
    files = saved.get("files", saved) if algorithm == "sha1" else saved
    found = {}
    for key, value in files.items() if isinstance(files, dict) else ():
        if isinstance(value, list) and len(value) == 5 and _is_stamp(value[:4]) and \
                isinstance(value[4], str):
            found[key] = [*value[:4], {algorithm: value[4]}]
    return found


def _still_true(key: str, entry: list[Any]) -> bool:
    try:
        return file_stamp(os.stat(key)) == entry[:4]
    except OSError:
        return False


class DigestCache:
    """File digests by path, for any hashlib algorithm, each valid while the file's
    `file_stamp` stays as it was when hashed; saved to `path` (None: kept in memory only).

    A digest is kept only when the file was settled (`settled`, `racy_ns`) when hashed: a
    file written in the same clock tick as the hashing could change and keep its stamp."""

    def __init__(self, path: Path | None, racy_ns: int = RACY_NS,
                 legacy: Iterable[tuple[Path, str]] = ()) -> None:
        self.path = path
        self.racy_ns = racy_ns
        self._legacy = tuple(legacy)
        self._opened = time.time_ns()
        self._entries: dict[str, Any] | None = None  # read when first asked
        self._reading = threading.Lock()  # a thread may ask beside the caller (a hashing)
        self._touched: set[str] = set()  # paths hashed, served or noted by this cache
        self._dirty = False

    def _all(self) -> dict[str, Any]:
        if self._entries is None:
            with self._reading:
                if self._entries is None:
                    self._entries = self._read()
        return self._entries

    def _read(self) -> dict[str, Any]:
        entries = _read_digests(self.path) if self.path is not None else {}
        if self.path is not None and not entries and not self.path.exists():
            for old, algorithm in self._legacy:
                for key, entry in _read_legacy(old, algorithm).items():
                    self._merge_into(entries, key, entry)
        return entries

    def _merge(self, key: str, entry: list[Any]) -> None:
        self._merge_into(self._all(), key, entry)

    def _merge_into(self, entries: dict[str, Any], key: str, entry: list[Any]) -> None:
        known = _entry(entries.get(key))
        if known is not None and known[:4] == entry[:4]:
            if any(known[4].get(a) != d for a, d in entry[4].items()):
                known[4] = {**known[4], **entry[4]}
                self._dirty = True
        else:
            entries[key] = [*entry[:4], dict(entry[4])]
            self._dirty = True

    def known(self, path: str | os.PathLike[str], st: os.stat_result,
              algorithm: str) -> str | None:
        """The digest kept for `path` as `st` shows it, if any."""
        # checked as it is read (a rootfs scan asks for thousands): a stamp equal to the
        # file's, a digest that is text; anything else in the file is as good as no entry
        entry = self._all().get(os.fsdecode(path))
        if type(entry) is not list or len(entry) != 5 or entry[:4] != file_stamp(st) or \
                type(entry[4]) is not dict:
            return None
        found = entry[4].get(algorithm)
        return found if type(found) is str else None

    def cached(self, path: str | os.PathLike[str], st: os.stat_result,
               algorithm: str = "sha1") -> bool:
        """`digest` will not read the file."""
        return self.known(path, st, algorithm) is not None

    def digest(self, path: str | os.PathLike[str], st: os.stat_result, algorithm: str,
               compute: Callable[[], str]) -> str:
        """The digest of the file a walk saw as `st`: kept, else `compute`d (and kept unless
        the file was written within `racy_ns` before this cache was opened or since)."""
        key = os.fsdecode(path)
        found = self.known(key, st, algorithm)
        if found is not None:
            self._touched.add(key)
            return found
        found = compute()
        if settled(st, self._opened, self.racy_ns):
            self._keep(key, st, algorithm, found)
        return found

    def file_digest(self, path: Path, algorithm: str,
                    compute: Callable[[Path], str] | None = None) -> str:
        """The digest of the file at `path` (followed): kept, else hashed (`compute`,
        default `hash_file`) and kept when the file stayed as it was while hashed and was
        not written in the last `racy_ns`."""
        try:
            st = path.stat()
        except OSError as exc:
            raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
        key = os.fsdecode(path.absolute())
        found = self.known(key, st, algorithm)
        if found is not None:
            self._touched.add(key)
            return found
        found = compute(path) if compute is not None else hash_file(path, algorithm)
        with contextlib.suppress(OSError):
            if file_stamp(path.stat()) == file_stamp(st) and settled(st, time.time_ns(),
                                                                      self.racy_ns):
                self._keep(key, st, algorithm, found)
        return found

    def keep(self, path: str | os.PathLike[str], st: os.stat_result, algorithm: str,
             digest: str) -> None:
        """Another digest of the file a walk saw as `st`, learned in the same read (kept on
        the rule of `digest`)."""
        if settled(st, self._opened, self.racy_ns):
            self._keep(os.fsdecode(path), st, algorithm, digest)

    def note(self, path: Path, algorithm: str, digest: str) -> None:
        """`path` was just written by this run with content `digest`: kept as it is now."""
        with contextlib.suppress(OSError):
            self._keep(os.fsdecode(path.absolute()), path.stat(), algorithm, digest)

    def vouches(self, path: str | os.PathLike[str], st: os.stat_result, algorithm: str,
                digest: str) -> bool:
        """The file as `st` shows it is known to hold `digest` (any write since moves its
        change time)."""
        return self.known(path, st, algorithm) == digest

    def _keep(self, key: str, st: os.stat_result, algorithm: str, digest: str) -> None:
        self._touched.add(key)
        self._merge(key, [*file_stamp(st), {algorithm: digest}])

    def save(self) -> None:
        """Write what this cache learned, merged with what is on disk now (another process
        may have written since); entries of files since changed or gone are dropped."""
        if self.path is None or not self._dirty:
            return
        ours = self._all()
        merged: dict[str, list[Any]] = {}
        for key, value in _read_digests(self.path).items():
            entry = _entry(value)
            if entry is not None and key not in self._touched and _still_true(key, entry):
                merged[key] = entry
        for key, value in ours.items():
            entry = _entry(value)
            if entry is None:
                continue
            if key in self._touched:
                other = merged.get(key)
                merged[key] = ([*entry[:4], {**other[4], **entry[4]}]
                               if other is not None and other[:4] == entry[:4] else entry)
            elif key not in merged and _still_true(key, entry):
                merged[key] = entry
        atomic.write_text(self.path, json.dumps({"format": FORMAT, "files": merged},
                                                sort_keys=True, separators=(",", ":")) + "\n")
        self._dirty = False
        for old, _ in self._legacy:
            with contextlib.suppress(OSError):
                old.unlink()


@dataclass(frozen=True, slots=True)
class Records:
    """Keyed records: a name and a key -> a JSON value, each in its own file with the tool's
    version. Small enough to hand to a worker process."""

    folder: Path
    tool: str  # the digest of the tool's own code (dfota.settings.tool_digest)

    def path(self, name: str, key: str) -> Path:
        return self.folder / name / f"{hashlib.sha1(key.encode('utf-8')).hexdigest()}.json"

    def _head(self, name: str, key: str) -> str:
        return json.dumps({"format": FORMAT, "tool": self.tool, "name": name,
                           "key": key})[:-1] + ', "value": '

    def holds(self, name: str, key: str) -> bool:
        """The record says it holds `key` for this tool (its first bytes only: a large
        record need not be parsed to learn that)."""
        head = self._head(name, key).encode("utf-8")
        try:
            with open(self.path(name, key), "rb") as f:
                return f.read(len(head)) == head
        except OSError:
            return False

    def get(self, name: str, key: str) -> Any:
        """The value kept under `name` and `key` by this tool; None when there is none, it is
        damaged, or another version of the tool wrote it."""
        saved = atomic.read_json_object(self.path(name, key))
        if (saved.get("format"), saved.get("tool"), saved.get("name"), saved.get("key")) != (
                FORMAT, self.tool, name, key):
            return None
        return saved.get("value")

    def put(self, name: str, key: str, value: object, *, alone: bool = False,
            if_changed: bool = False) -> None:
        """Keep `value` under `name` and `key`; `alone`: the other keys of `name` go;
        `if_changed`: a record that says exactly that already is left as it is."""
        path = self.path(name, key)
        text = self._head(name, key) + json.dumps(value) + "}\n"
        if if_changed:
            with contextlib.suppress(OSError):
                if path.read_text("utf-8") == text:
                    return
        atomic.write_text(path, text)
        if alone:
            for other in path.parent.glob("*.json"):
                if other != path:
                    with contextlib.suppress(OSError):
                        other.unlink()


@dataclass(frozen=True, slots=True)
class BlobCache:
    """Content-addressed blobs in one folder (the patch cache): a blob's name says what it
    is made from, so a blob found under its name is taken (and checked by its user); a lost
    or torn one is made again. Writers work in a scratch folder of their own inside it and
    rename their results into place. `records`: where the checks of its blobs are kept
    (dfota.package.patches), if anywhere."""

    folder: Path
    records: Records | None = None

    def prepare(self) -> None:
        """Make the folder; remove the scratch folders of runs whose process is gone."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DfotaError(f"cannot create the patch cache ({exc.strerror})",
                             self.folder) from exc
        for run in self.folder.glob(".run-*-*"):
            pid_text = run.name.split("-")[1]
            if not pid_text.isdigit():
                continue
            try:
                os.kill(int(pid_text), 0)
            except ProcessLookupError:
                shutil.rmtree(run, ignore_errors=True)
            except OSError:
                pass

    def path(self, name: str) -> Path:
        return self.folder / name

    def read_bytes(self, name: str) -> bytes | None:
        try:
            return self.path(name).read_bytes()
        except FileNotFoundError:
            return None

    def drop(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def put(self, name: str, made: Path) -> Path:
        """Rename `made` (in this cache's folder) into place as `name`. Not synced: a blob
        lost or torn by a crash fails its user's check and is made again."""
        dest = self.path(name)
        os.replace(made, dest)
        return dest

    def scratch(self) -> Path:
        """A new scratch folder for this process, inside the cache (renames stay on one file
        system); the caller removes it."""
        try:
            return Path(tempfile.mkdtemp(prefix=f".run-{os.getpid()}-", dir=self.folder))
        except OSError as exc:
            raise DfotaError(f"cannot write to the patch cache ({exc.strerror})",
                             self.folder) from exc


class State:
    """Everything a workspace keeps between runs, opened once per task action: `digests`,
    `records` and `patches` (see the module's text). Closing it (or leaving its `with`)
    writes the digests learned."""

    def __init__(self, folder: Path, tool: str, racy_ns: int = RACY_NS) -> None:
        self.folder = folder
        self.digests = DigestCache(folder / DIGESTS_NAME, racy_ns,
                                   [(folder / name, alg) for name, alg in LEGACY_DIGESTS])
        self.records = Records(folder / RECORDS_NAME, tool)
        self.patches = BlobCache(folder / PATCH_CACHE_NAME, self.records)

    def __enter__(self) -> State:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.close()
        else:  # what was learned is still true; the error in flight is the one to report
            with contextlib.suppress(DfotaError, OSError):
                self.close()

    def close(self) -> None:
        self.digests.save()
        for name in LEGACY_RECORDS:
            old = self.folder / name
            with contextlib.suppress(OSError):
                if old.is_dir() and not old.is_symlink():
                    shutil.rmtree(old)
                elif old.exists():
                    old.unlink()
