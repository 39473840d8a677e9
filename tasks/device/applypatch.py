"""applypatch as the module's updater does it: files and partitions read by sha1, room made
on /cache, the source backed up there, and a bsdiff patch applied so that a run cut anywhere
can be run again.

IMGDIFF2 patches are not modelled: applying one fails the way a corrupt patch does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import bsdiff4

from dfota.core.tree import FILE
from dfota.device.contents import Content, size_of, whole
from dfota.device.interpreter import Function, Updater
from dfota.device.storage import FsError, Loaded
from dfota.device.values import Abort, Blob, Value, argc, as_text, parse_sha1, strtol10
from dfota.formats.edify_parse import Node

SAVED_FILE = "/cache/saved.file"
_PATCH_MIN_FREE = 256 << 10
_MAX_PATCH_OUTPUT = 1 << 31


def load(run: Updater, name: str) -> Loaded | None:
    """A file, or a partition named `MTD:...`, read as applypatch reads it (whole: its bytes
    are held only where a patch works on them); None (and a line of log) when it cannot be."""
    if name.startswith(("MTD:", "EMMC:")):
        return _load_partition(run, name)
    try:
        return run.dev.load(name)
    except FsError as exc:
        run.say(f"failed to load {exc.path}: {exc.code}")
        return None


def _load_partition(run: Updater, spec: str) -> Loaded | None:
    """`MTD:name:size:sha1[:size:sha1...]`: the shortest listed prefix whose sha1 matches."""
    tokens = [t for t in spec.split(":") if t]
    pairs = (spec.count(":") - 1) // 2
    if len(tokens) < 2 + 2 * pairs or pairs < 1:
        run.say(f"bad partition name {spec}")
        return None
    part = run.dev.partition(tokens[1])
    wanted = []
    for n in range(pairs):
        size, _ = strtol10(tokens[2 + 2 * n].encode())
        if size <= 0:
            run.say(f"bad size in {spec}")
            return None
        wanted.append((size, tokens[3 + 2 * n]))
    if part is None:
        run.say(f"partition {tokens[1]} not found")
        return None
    for size, sha1 in sorted(wanted, key=lambda w: w[0]):
        actual = part.digest(size)
        digest = parse_sha1(sha1.encode())
        if actual is None or digest is None:
            run.say(f"cannot read {size} bytes of {tokens[1]} or parse {sha1}")
            return None
        if actual == digest:
            return Loaded(part.view(size) or b"", digest.hex(), 0o644, 0, 0)
    run.say(f"partition {tokens[1]} matches none of {spec}")
    return None


def _make_cache_space(run: Updater, needed: int) -> bool:
    """Free `needed` bytes on /cache by deleting loose files there, as the device may."""
    if _free(run, "/cache") >= needed:
        return True
    expendable = []
    for folder in ("/cache", "/cache/recovery/otatest"):
        try:
            names = run.dev.listdir(folder)
        except FsError:
            continue
        for name in names:
            path = f"{folder}/{name}"
            try:
                if path != SAVED_FILE and run.dev.stat(path).kind == FILE:
                    expendable.append(path)
            except FsError:
                continue
    for path in sorted(expendable):
        if _free(run, "/cache") >= needed:
            break
        try:
            run.dev.unlink(path)
            run.say(f"deleted {path} to make room on /cache")
        except FsError as exc:
            run.fs_failed(exc, "unlink")
    return _free(run, "/cache") >= needed


def _free(run: Updater, path: str) -> int:
    try:
        return run.dev.free_space(path)
    except FsError:
        return 1 << 62  # statfs failing reads as (size_t)-1 on the device


def fn_apply_patch_space(run: Updater, name: str, args: Sequence[Node]) -> Value:
    argc(name, args, 1)
    text = run.string(args[0])
    needed, parsed = strtol10(text)
    if not parsed:
        raise Abort(f'{name}(): can\'t parse "{as_text(text)}" as byte count')
    return b"t" if _make_cache_space(run, needed % (1 << 64)) else b""


def fn_apply_patch_check(run: Updater, name: str, args: Sequence[Node]) -> Value:
    if not args:
        raise Abort(f"{name}(): expected at least 1 arg, got 0")
    values = run.strings(args)
    return b"t" if _patch_check(run, as_text(values[0]), values[1:]) else b""


def _patch_check(run: Updater, name: str, sha1s: Sequence[bytes]) -> bool:
    loaded = load(run, name)
    if loaded is None or (sha1s and _pick(loaded, sha1s) is None):
        run.say(f'file "{name}" doesn\'t have any of expected sha1 sums; checking cache')
        saved = load(run, SAVED_FILE)
        if saved is None or _pick(saved, sha1s) is None:
            return False
    return True


def fn_apply_patch(run: Updater, name: str, args: Sequence[Node]) -> Value:
    if len(args) < 6 or len(args) % 2:
        raise Abort(f"{name}(): expected at least 6 args and an even number, "
                    f"got {len(args)}")
    src, tgt, tgt_sha1, size_text = run.strings(args[:4])
    tgt_size, parsed = strtol10(size_text)
    if not parsed:
        raise Abort(f'{name}(): can\'t parse "{as_text(size_text)}" as byte count')
    sha1s, patches = _patch_pairs(run, name, args[4:])
    run.say(f"applying patch to {as_text(src)}")
    want = parse_sha1(tgt_sha1)
    if want is None:
        run.say(f'failed to parse tgt-sha1 "{as_text(tgt_sha1)}"')
        return b""
    source, target = as_text(src), as_text(tgt)
    job = PatchJob(source, source if target == "-" else target, want, tgt_size % (1 << 64),
                   sha1s, patches)
    return b"t" if apply_patch(run, job) else b""


def _patch_pairs(run: Updater, name: str,
                 args: Sequence[Node]) -> tuple[tuple[bytes, ...], tuple[Blob, ...]]:
    """apply_patch's (sha1, patch) arguments: each sha1 a string, each patch a blob."""
    rest = [run.value(arg) for arg in args]
    sha1s: list[bytes] = []
    patches: list[Blob] = []
    for n in range(0, len(rest), 2):
        sha1, patch = rest[n], rest[n + 1]
        if isinstance(sha1, Blob):
            raise Abort(f"{name}(): sha-1 #{n // 2} is not string")
        if not isinstance(patch, Blob):
            raise Abort(f"{name}(): patch #{n // 2} is not blob")
        sha1s.append(sha1)
        patches.append(patch)
    return tuple(sha1s), tuple(patches)


@dataclass(frozen=True)
class PatchJob:
    """What one apply_patch call asks: patch `src` into `tgt` (a file, or a partition given
    as `MTD:name:...`), which must then have sha1 `want` and at most `tgt_size` bytes for a
    partition; `patches[i]` applies to the source whose sha1 is `sha1s[i]`."""

    src: str
    tgt: str
    want: bytes
    tgt_size: int
    sha1s: tuple[bytes, ...]
    patches: tuple[Blob, ...]

    @property
    def to_partition(self) -> bool:
        return self.tgt.startswith(("MTD:", "EMMC:"))

    @property
    def target_fs(self) -> str:
        """The target's path up to its second slash: where its free room is asked."""
        slash = self.tgt.find("/", 1)
        return self.tgt[:slash] if slash > 0 else self.tgt

    @property
    def outname(self) -> str:
        """Where a file's patched bytes are written before they replace it."""
        return self.tgt + ".patch"


class _Source(NamedTuple):  # a tuple: made for every apply_patch a script calls
    """The bytes to patch, the index of the patch that fits them, and whether they are the
    copy an earlier run saved on /cache (the source itself is gone or changed)."""

    loaded: Loaded
    patch: int
    saved: bool


def apply_patch(run: Updater, job: PatchJob) -> bool:
    """applypatch(): patch the source into the target, safe to run again."""
    current = load(run, job.tgt)
    if current is not None and current.sha1 == job.want.hex():
        run.say(f'"{job.tgt}" is already target; no patch needed')
        return True
    found = _source(run, job, current)
    made = _patched(run, job, found) if found is not None else None
    if made is None:
        return False
    out, out_sha1, made_copy = made
    if out_sha1 != job.want:
        run.say("patch did not produce expected sha1")
        return False
    if not _put_in_place(run, job, out, out_sha1):
        return False
    if made_copy:
        _try_unlink(run, SAVED_FILE)
    return True


def _source(run: Updater, job: PatchJob, current: Loaded | None) -> _Source | None:
    """The source as it is when a patch fits it, else the copy saved on /cache."""
    source = current if current is not None and job.tgt == job.src else load(run, job.src)
    index = _pick(source, job.sha1s) if source is not None else None
    if source is not None and index is not None:
        return _Source(source, index, False)
    run.say("source file is bad; trying copy")
    copy = load(run, SAVED_FILE)
    index = _pick(copy, job.sha1s) if copy is not None else None
    if copy is None or index is None:
        run.say("copy file doesn't match source SHA-1s either")
        return None
    return _Source(copy, index, True)


def _patched(run: Updater, job: PatchJob,
             found: _Source) -> tuple[Content, bytes, bool] | None:
    """The patch applied, tried again once when a file's first try fails (see
    `_before_try`): (the output, its sha1, whether the source was backed up), None when it
    failed."""
    retry, made_copy = 1, False
    while True:
        prepared = _before_try(run, job, found, retry)
        if prepared is None:
            return None
        retry, backed_up = prepared
        made_copy = made_copy or backed_up
        outcome, out, out_sha1 = _try(run, job, found)
        if outcome == "unknown":
            run.say("Unknown patch file format")
            return None
        if outcome == "ok":
            return out, out_sha1, made_copy
        if outcome != "failed":
            return None
        if retry == 0:
            run.say("applying patch failed")
            return None
        run.say("applying patch failed; retrying")
        if not job.to_partition:
            _try_unlink(run, job.outname)
        retry -= 1


def _before_try(run: Updater, job: PatchJob, found: _Source,
                retry: int) -> tuple[int, bool] | None:
    """What applypatch does before each try: a partition's source is backed up first, in
    case the write is cut (one try only); a file is patched beside itself when its filesystem
    has room, else its source is backed up and deleted (no retry then). Returns (the retries
    left, whether the source was backed up now), None to give up."""
    if job.to_partition:
        if found.saved or not _back_up(run, found.loaded):
            run.say("failed to back up source file")
            return None
        return 0, True
    room = _free(run, job.target_fs) if retry > 0 else 0
    if retry > 0 and room > _PATCH_MIN_FREE and room > job.tgt_size * 3 // 2:
        return retry, False
    if found.saved:
        return 0, False
    if job.src.startswith(("MTD:", "EMMC:")):
        run.say("not enough free space for target but source is partition")
        return None
    if not _back_up(run, found.loaded):
        return None
    try:
        run.dev.unlink(job.src)
    except FsError as exc:
        run.fs_failed(exc, "unlink")
    return 0, True


def _try(run: Updater, job: PatchJob, found: _Source) -> tuple[str, Content, bytes]:
    """One try of the patch (see `_run_patch`), a file's output written beside it; outcome
    "stop" when that write fails for want of anything but room."""
    use = found.loaded
    outcome, out, out_sha1 = _run_patch(run, use.data, use.sha1, job.patches[found.patch])
    if job.to_partition:
        if outcome == "ok" and size_of(out) > job.tgt_size:
            outcome = "failed"  # the output buffer holds tgt_size bytes
        return outcome, out, out_sha1
    if outcome != "ok":
        _try_write(run, job.outname, b"")  # opened before the patch is read
        return outcome, out, out_sha1
    try:
        run.dev.write_file(job.outname, out, new_mode=0o600,
                           meta=(use.mode, use.uid, use.gid) if out_sha1 == job.want else None,
                           sha1=out_sha1.hex())
    except FsError as exc:
        run.fs_failed(exc, "write")
        return ("failed" if exc.code == "ENOSPC" else "stop"), out, out_sha1
    return outcome, out, out_sha1


def _put_in_place(run: Updater, job: PatchJob, out: Content, out_sha1: bytes) -> bool:
    """The patched bytes written to the partition, or the `.patch` file renamed over the
    target."""
    if job.to_partition:
        part = [t for t in job.tgt.split(":") if t][1:2]
        if not part or part[0] not in run.dev.partitions or \
                not run.dev.write_partition(part[0], out, out_sha1):
            run.say(f"write of patched data to {job.tgt} failed")
            return False
        return True
    try:
        run.dev.rename(job.outname, job.tgt)
    except FsError as exc:
        run.fs_failed(exc, "rename of .patch to")
        return False
    return True


def _back_up(run: Updater, source: Loaded) -> bool:
    """Copy the source to /cache/saved.file with its mode and owner."""
    if not _make_cache_space(run, size_of(source.data)):
        run.say("not enough free space on /cache")
        return False
    try:
        run.dev.write_file(SAVED_FILE, source.data, new_mode=0o600,
                           meta=(source.mode, source.uid, source.gid))
    except FsError as exc:
        run.fs_failed(exc, "back up to")
        return False
    return True


def _run_patch(run: Updater, source: Content, source_sha1: str,
               patch: Blob) -> tuple[str, Content, bytes]:
    """("ok", output, its sha1), ("failed", ...) or ("unknown", ...) for a patch format the
    device does not know. IMGDIFF2 is known to the device but not to the host. The source,
    the patch and the output are held whole only while the patch is applied (a large output
    is then kept in the package's spill file)."""
    data = whole(patch.data) if patch.data is not None else None
    if data is None or len(data) < 8 or data[:8] not in (b"BSDIFF40", b"IMGDIFF2"):
        return "unknown", b"", b""
    if data[:8] == b"IMGDIFF2":
        run.say("IMGDIFF2 patches are not supported by the host updater")
        return "failed", b"", b""
    if len(data) < 32:
        return "failed", b"", b""
    new_size = int.from_bytes(data[24:32], "little")
    if new_size >> 63 or new_size > _MAX_PATCH_OUTPUT:
        return "failed", b"", b""
    key = (source_sha1, hashlib.sha1(data).hexdigest())
    if key not in run.package.patched:
        try:
            out = bsdiff4.patch(whole(source), data)
        except (ValueError, OSError, MemoryError, OverflowError, RuntimeError) as exc:
            run.say(f"bsdiff patch failed: {exc}")
            return "failed", b"", b""
        digest = hashlib.sha1(out)
        run.package.patched[key] = (run.package.spill.keep(out, digest.hexdigest()),
                                    digest.digest())
    return ("ok", *run.package.patched[key])


def _try_write(run: Updater, path: str, data: bytes) -> None:
    try:
        run.dev.write_file(path, data, new_mode=0o600)
    except FsError as exc:
        run.fs_failed(exc, "write")


def _try_unlink(run: Updater, path: str) -> None:
    try:
        run.dev.unlink(path)
    except FsError as exc:
        run.fs_failed(exc, "unlink")


def _pick(loaded: Loaded, sha1s: Sequence[bytes]) -> int | None:
    """The index of the first sha1 string that names `loaded`'s content."""
    digest = bytes.fromhex(loaded.sha1)
    for index, text in enumerate(sha1s):
        if parse_sha1(text) == digest:
            return index
    return None


FUNCTIONS: dict[str, Function] = {
    "apply_patch_space": fn_apply_patch_space, "apply_patch_check": fn_apply_patch_check,
    "apply_patch": fn_apply_patch,
}
