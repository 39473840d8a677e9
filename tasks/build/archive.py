"""The archive of every version's targetfiles.zip (FAQ 6.1: today's target is tomorrow's source).

Layout: `<archive>/<key>/targetfiles.zip` and `<archive>/<key>/manifest.json`, one folder per
version, plus `<archive>/index.json`, rebuilt from the folders after every change. A version
folder appears by one rename of a complete staging folder, so a kill never leaves a partial
version; an archived version is never overwritten: the same content again is a no-op, other
content under the same key is refused.

The archive may be shared by runs of several workspaces (and hosts) at once: two runs archiving
the same version both succeed with one copy when their bytes agree (the second rename finds the
first's folder and compares); each run's staging folders and temporary files carry its tag
(dfota.core.owner) and clean-up removes only those of runs that are gone; whoever changes the index
checks it against the folders again after writing it, so the last writer leaves it right.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dfota.core import atomic, owner
from dfota.core.errors import DfotaError
from dfota.settings import Workspace, resolve_path
from dfota.state.store import DigestCache, State, file_stamp

ZIP_NAME = "targetfiles.zip"
MANIFEST_NAME = "manifest.json"
MEMBERS_NAME = "members.json"  # the sha1s of a built version's file members, by name
INDEX_NAME = "index.json"
STAGING_PREFIX = ".staging-"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", path) from exc
    return digest.hexdigest()


def _hard_link(src: Path, dest: Path) -> bool:
    """Link `src` as `dest`; False where the file system cannot (another device, no links)."""
    try:
        os.link(src, dest)
    except OSError:
        return False
    return True


def _copy_vouched(src: Path, dest: Path, digests: DigestCache | None, sha256: str) -> bool:
    """Copy `src` to `dest` (synced to disk) when `digests` vouch that it holds `sha256` and
    it stays as recorded while copied (the kernel copies, nothing is hashed); False, with
    nothing copied, when they do not vouch for it."""
    try:
        inp = open(src, "rb")  # noqa: SIM115
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", src) from exc
    with inp:
        st = os.fstat(inp.fileno())
        stamp = file_stamp(st)
        if digests is None or not digests.vouches(src.absolute(), st, "sha256", sha256):
            return False
        atomic.copy_synced(inp, dest, src)  # a failed write is the archive's (see _staging)
        if file_stamp(os.fstat(inp.fileno())) != stamp:
            raise DfotaError("changed while it was being archived; run again", src)
    return True


def _copy_hashing(src: Path, dest: Path) -> str:
    """Copy `src` to `dest` (synced to disk) and return the sha256 of the bytes copied."""
    digest = hashlib.sha256()
    try:
        inp = open(src, "rb")  # noqa: SIM115
    except OSError as exc:
        raise DfotaError(f"cannot read file ({exc.strerror})", src) from exc
    with inp, open(dest, "wb") as out:  # a failed write is the archive's (see _staging)
        while True:
            try:
                chunk = inp.read(1 << 20)
            except OSError as exc:
                raise DfotaError(f"cannot read file ({exc.strerror})", src) from exc
            if not chunk:
                break
            digest.update(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class ArchivedVersion:
    key: str
    folder: Path
    manifest: Mapping[str, object]

    @property
    def zip_path(self) -> Path:
        return self.folder / ZIP_NAME

    @property
    def sha256(self) -> str:
        return str(self.manifest["sha256"])

    @property
    def package_time(self) -> str:
        version = self.manifest.get("version")
        return str(version.get("package_time", "")) if isinstance(version, dict) else ""


def _index_text(versions: Iterable[ArchivedVersion]) -> str:
    """index.json for these versions (one per key, the first given; in `versions()` order)."""
    by_key: dict[str, ArchivedVersion] = {}
    for version in versions:
        by_key.setdefault(version.key, version)
    ordered = sorted(by_key.values(), key=lambda v: (v.package_time, v.key))
    return json.dumps({"versions": [
        {"key": v.key, "sha256": v.sha256, "package_time": v.package_time,
         "source": v.manifest.get("source"), "origin": v.manifest.get("origin")}
        for v in ordered]}, indent=1) + "\n"


def _members_text(members: Mapping[str, str]) -> bytes:
    return (json.dumps({"format": 1, "sha1s": dict(members)}, sort_keys=True,
                       separators=(",", ":")) + "\n").encode("utf-8")


def member_sha1s(version: ArchivedVersion) -> dict[str, str] | None:
    """The sha1s of `version`'s file members as archived with it, when its manifest vouches
    for them (their digest); None for a version archived without them, or altered."""
    expected = version.manifest.get("members_sha256")
    if not isinstance(expected, str):
        return None
    try:
        text = (version.folder / MEMBERS_NAME).read_bytes()
        found = json.loads(text)["sha1s"] if hashlib.sha256(text).hexdigest() == expected \
            else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return found if isinstance(found, dict) else None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _chmod_keeping_setgid(path: Path, mode: int) -> None:
    """Set `path`'s mode, keeping its set-group-ID bit (a folder of a group-shared archive
    passes its group on)."""
    os.chmod(path, mode | (os.stat(path).st_mode & stat.S_ISGID))


class Archive:
    def __init__(self, root: Path, digests: DigestCache | None = None, *,
                 group_readable: bool = True) -> None:
        """`digests`: the workspace's digest cache (`dfota.state.store`), where the sha256s of
        archived zips and of their copies are kept by path (with size, times and inode), so
        an unchanged zip is not hashed again. `group_readable`: the folders and files it
        makes can be read by their group (version folders 0750, archived files 0440, the
        index 0640; the archive folder too when it makes it), else by their owner alone
        (0700, 0400, 0600); whatever the umask."""
        self.root = root
        self.digests = digests
        self.folder_mode = 0o750 if group_readable else 0o700
        self.file_mode = 0o440 if group_readable else 0o400
        self.index_mode = self.file_mode | 0o200

    def check_intact(self, version: ArchivedVersion) -> None:
        """The zip is still the one archived (archives live for years)."""
        if self.sha256_of(version.zip_path) != version.sha256:
            raise DfotaError(f"archived version {version.key} does not match its manifest's "
                             "sha256: the archive was altered", version.zip_path)

    def versions(self) -> list[ArchivedVersion]:
        """Every archived version, oldest package time first."""
        if not self.root.is_dir():
            return []
        try:
            folders = sorted(self.root.iterdir())
        except OSError as exc:
            raise DfotaError(f"cannot read the archive ({exc.strerror})", self.root) from exc
        found = []
        for folder in folders:
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            manifest_path = folder / MANIFEST_NAME
            try:
                manifest = json.loads(manifest_path.read_text("utf-8"))
            except (OSError, ValueError) as exc:
                raise DfotaError(f"archived version has no readable manifest ({exc})",
                                 manifest_path) from exc
            found.append(ArchivedVersion(folder.name, folder, manifest))
        return sorted(found, key=lambda v: (v.package_time, v.key))

    def get(self, key: str) -> ArchivedVersion | None:
        return next((v for v in self.versions() if v.key == key), None)

    def find(self, wanted: str) -> ArchivedVersion:
        """A version by its key or a unique prefix of one."""
        versions = self.versions()
        exact = [v for v in versions if v.key == wanted]
        matches = exact or [v for v in versions if v.key.startswith(wanted)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise DfotaError(f"no archived version matches {wanted!r} "
                             "(`doit versions` lists them)", self.root)
        raise DfotaError(f"{wanted!r} matches several archived versions: "
                         + ", ".join(v.key for v in matches), self.root)

    def built_here(self, key: str, zip_path: Path) -> bool:
        """True when `zip_path` is, byte for byte, the targetfiles.zip this tool built and
        archived as `key`: what its manifest recorded (sha1s) can then be trusted."""
        archived = self.get(key)
        return (archived is not None and archived.manifest.get("origin") == "targetfiles"
                and self.sha256_of(zip_path) == archived.sha256)

    def sha256_of(self, path: Path) -> str:
        """`path`'s sha256, from the digest cache while the file is as recorded."""
        return recorded_sha256(self.digests, path)

    def note_copy(self, path: Path, sha256: str) -> None:
        """`path` was just written as a copy of an archived zip whose sha256 is `sha256`:
        `built_here` need not hash it again while it stays as it is now."""
        if self.digests is not None:
            self.digests.note(path, "sha256", sha256)

    def resolve(self, wanted: str, role: str, *, intact: bool = True) -> Path:
        """The targetfiles.zip `wanted` names: a zip's path, or an archived version (its key
        or a unique prefix of it), checked intact unless `intact` is False. `role` names it
        in errors ("source")."""
        path = resolve_path(wanted)
        if path.suffix == ".zip" or "/" in wanted or path.exists():
            if not path.is_file():
                raise DfotaError(f"{role} targetfiles.zip not found", path)
            return path
        version = self.find(wanted)
        if intact:
            self.check_intact(version)
        return version.zip_path

    def admit(self, key: str, sha256: str) -> bool:
        """True when `key` is new; False when it holds these very bytes; refuses a conflict."""
        existing = self.get(key)
        if existing is None:
            return True
        if existing.sha256 == sha256:
            return False
        raise _conflict(existing)

    def add(self, key: str, zip_path: Path, manifest: Mapping[str, object], *,
            sha256: str | None = None, take: bool = False) -> ArchivedVersion:
        """Copy `zip_path` into the archive under `key` (see `Batch.stage`)."""
        with self.batch() as batch:
            batch.stage(key, zip_path, manifest, sha256=sha256, take=take)
            return batch.commit()[0]

    @contextlib.contextmanager
    def batch(self) -> Iterator[Batch]:
        """Versions staged whole, then put in place together (`Batch.commit`); whatever is
        left staged when the batch ends (an error, no commit) is removed."""
        batch = Batch(self)
        try:
            yield batch
        finally:
            batch.discard()

    def cannot_write(self, exc: OSError) -> DfotaError:
        """The one line for a failed write into the archive: it names the folder."""
        return DfotaError(f"cannot write the archive ({exc.strerror})", self.root)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        try:
            yield
        except OSError as exc:
            raise self.cannot_write(exc) from exc

    def make_staging(self, key: str) -> Path:
        """An empty staging folder for `key`, named for this run (dfota.core.owner)."""
        with self.writing():
            if not self.root.is_dir():
                self.root.mkdir(parents=True, exist_ok=True)
                _chmod_keeping_setgid(self.root, self.folder_mode)
            return Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{key}.",
                                         suffix=owner.suffix(), dir=self.root))

    def put_in_place(self, staging: Path, version: ArchivedVersion) -> ArchivedVersion:
        """Rename the complete `staging` folder to `version`'s; when another run put that key
        in place meanwhile: its version if it holds the same bytes (`staging` is then left to
        the caller to remove), else the conflict is refused."""
        try:
            os.rename(staging, version.folder)
        except OSError as exc:
            existing = (self.get(version.key) if exc.errno in (errno.ENOTEMPTY, errno.EEXIST)
                        else None)
            if existing is None:
                raise
            if existing.sha256 != version.sha256:
                raise _conflict(existing) from exc
            return existing
        return version

    @contextlib.contextmanager
    def index_replaced(self, versions: Iterable[ArchivedVersion]) -> Iterator[None]:
        """index.json for `versions` written (and synced) before the block and renamed into
        place after it: a failure in the block leaves the index as it was; nothing is written
        when the index says that already."""
        text = _index_text(versions)
        path = self.root / INDEX_NAME
        if self._index_reads(text):
            yield
            return
        with atomic.atomic_path(path, self.index_mode, failure=self.cannot_write) as tmp:
            _write_synced(tmp, text.encode("utf-8"))
            yield

    def _index_reads(self, text: str) -> bool:
        try:
            return (self.root / INDEX_NAME).read_text("utf-8") == text
        except (OSError, UnicodeDecodeError):
            return False

    def write_index(self) -> None:
        """Rebuild index.json from the version folders (rewritten only when it differs); read
        the folders again after writing, until the index agrees with them: a run that wrote
        what it saw before another run's version appeared does not leave it out."""
        for _ in range(100):
            versions = self.versions()
            if self._index_reads(_index_text(versions)) or not (
                    versions or (self.root / INDEX_NAME).exists()):
                return  # as it should be (an empty archive needs no index)
            with self.index_replaced(versions):
                pass
        raise DfotaError("the version folders keep changing; the index could not follow them",
                         self.root / INDEX_NAME)

    def clean_staging(self) -> None:
        """Repair what a killed run left: its staging folders are removed (never a version
        folder, never the staging folder of a run still going: dfota.core.owner), and an index
        that lags behind the folders (a kill between the rename of a version folder and the
        index) is rebuilt."""
        if self.root.is_dir():
            for leftover in self.root.glob(STAGING_PREFIX + "*"):
                if owner.is_leftover(leftover.name):
                    shutil.rmtree(leftover, ignore_errors=True)
            atomic.remove_leftovers(self.root / INDEX_NAME)
            self.write_index()


def _conflict(existing: ArchivedVersion) -> DfotaError:
    return DfotaError(
        f"version {existing.key} is already archived with other content; bump 'Package Time' "
        "or 'Project Rev' in etc/quectel-project-version of the new build", existing.zip_path)


@dataclass(frozen=True, slots=True)
class _Staged:
    folder: Path  # complete: the zip and its manifest, synced, with their final modes
    version: ArchivedVersion  # what it becomes once in place


class Batch:
    """Versions staged whole, beside the archive's folders, then put in place together: the
    renames and the index need no new disk space, so a run that fails (a full disk, a
    conflict, a warning under --strict) archives nothing; only a kill between the renames
    can leave part of a batch in place (each version whole; a rerun completes it)."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._staged: list[_Staged] = []
        self._kept: list[str] = []  # keys whose bytes were archived already
        self._folders: list[Path] = []

    def stage(self, key: str, zip_path: Path, manifest: Mapping[str, object], *,
              sha256: str | None = None, take: bool = False) -> None:
        """Copy `zip_path` into a staging folder for `key` (checked with `admit`; the same
        bytes already archived: nothing to do). `sha256`, when the caller has it, is checked
        on the copy; `take` says the file is the caller's own temporary: it is hard-linked in
        place of a copy where the file system allows."""
        archive = self.archive
        if sha256 is not None and not archive.admit(key, sha256):
            self._kept.append(key)
            return
        staging = self.staging(key)
        with archive.writing():
            dest = staging / ZIP_NAME
            if take and _hard_link(zip_path, dest):
                copied = sha256 or sha256_file(dest)
            elif sha256 is not None and _copy_vouched(zip_path, dest, archive.digests, sha256):
                copied = sha256
            else:
                copied = _copy_hashing(zip_path, dest)
        if sha256 is not None and copied != sha256:
            raise DfotaError("changed while it was being archived; run again", zip_path)
        if sha256 is None and not archive.admit(key, copied):
            self._kept.append(key)
            return
        self.stage_written(key, staging, manifest, copied)

    def staging(self, key: str) -> Path:
        """A new staging folder for `key`, removed with the batch unless put in place: the
        caller may write the zip straight into it (`stage_written`)."""
        staging = self.archive.make_staging(key)
        self._folders.append(staging)
        return staging

    def stage_written(self, key: str, staging: Path, manifest: Mapping[str, object],
                      sha256: str, members: Mapping[str, str] | None = None) -> None:
        """Stage the zip written (not yet synced) in `staging` (from `staging`), whose
        sha256 is `sha256`, admitted by the caller; `members`: the sha1s of its file
        members by name, kept beside it (`MEMBERS_NAME`), their digest in the manifest."""
        archive = self.archive
        with archive.writing():
            dest = staging / ZIP_NAME
            atomic.fsync_path(dest)
            full = {**manifest, "key": key, "sha256": sha256, "size": dest.stat().st_size}
            names = [ZIP_NAME, MANIFEST_NAME]
            if members is not None:
                text = _members_text(members)
                _write_synced(staging / MEMBERS_NAME, text)
                full["members_sha256"] = hashlib.sha256(text).hexdigest()
                names.append(MEMBERS_NAME)
            _write_synced(staging / MANIFEST_NAME,
                          (json.dumps(full, indent=1, sort_keys=True) + "\n").encode("utf-8"))
            for name in names:
                os.chmod(staging / name, archive.file_mode)
            _chmod_keeping_setgid(staging, archive.folder_mode)
            atomic.fsync_path(staging)
        self._staged.append(_Staged(staging, ArchivedVersion(key, archive.root / key, full)))

    def commit(self) -> list[ArchivedVersion]:
        """Put the staged versions in place, in the order staged, and the index with them
        (written before the renames, renamed into place after them); every version staged or
        kept, in that order."""
        archive = self.archive
        placed: list[ArchivedVersion] = []
        try:
            with archive.writing(), archive.index_replaced(
                    [*archive.versions(), *(s.version for s in self._staged)]):
                for staged in self._staged:
                    placed.append(archive.put_in_place(staged.folder, staged.version))
                atomic.fsync_path(archive.root)
        except DfotaError:
            if placed:  # another run put a later version in place with other bytes meanwhile
                with contextlib.suppress(DfotaError):
                    archive.write_index()
            raise
        for version in placed:
            archive.note_copy(version.zip_path, version.sha256)
        archive.write_index()  # another run's version may have appeared meanwhile
        kept = [archive.get(key) for key in self._kept]
        self._staged = []
        return [*placed, *(v for v in kept if v is not None)]

    def discard(self) -> None:
        """Remove what is still staged (a version put in place has left its staging name)."""
        for folder in self._folders:
            shutil.rmtree(folder, ignore_errors=True)
        self._folders, self._staged = [], []


def archive_of(workspace: Workspace, state: State | None = None) -> Archive:
    """The archive a workspace uses, with its settings and the digest cache of `state` (None:
    every zip asked about is hashed)."""
    return Archive(workspace.archive_dir, state.digests if state is not None else None,
                   group_readable=workspace.archive_group_readable)


def recorded_sha256(digests: DigestCache | None, path: Path) -> str:
    """The sha256 of `path`: the one `digests` hold while the file is as it was when hashed
    (`file_stamp`), else hashed anew (and kept unless written in the last seconds)."""
    if digests is None:
        return sha256_file(path)
    return digests.file_digest(path, "sha256", lambda p: sha256_file(p))
