"""Debian's own tools on a package, beside the host updater: `unzip -tq` reads every entry,
and `bspatch` applies every patch to the source's bytes, which must give the target's. Both
run in other processes while the rest of the proof goes on; the patches bspatch proved are
kept in the state's records, by their bytes.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from dfota.build.targetfiles import BOOT_IMAGE, system_path
from dfota.core.errors import DfotaError, shown_path
from dfota.device.contents import Content, Stored, file_sha1, write_to
from dfota.formats.zipio import ZipSource
from dfota.state.store import Records


def info_zip_test(package: Path) -> list[str]:
    with InfoZipTest(package) as test:
        return test.result()


class InfoZipTest:
    """`unzip -tq` of a package, started at once and run while the caller goes on; `result`
    waits for it (and raises what starting it raised)."""

    def __init__(self, package: Path) -> None:
        self.failed: OSError | None = None
        self.process: subprocess.Popen[str] | None = None
        try:
            self.process = subprocess.Popen(["unzip", "-tq", str(package)], text=True,
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except OSError as exc:
            self.failed = exc

    def result(self) -> list[str]:
        if self.process is None:
            assert self.failed is not None
            raise self.failed
        stdout, stderr = self.process.communicate()
        if self.process.returncode == 0 and "No errors" in stdout:
            return []
        return [f"unzip -tq: {(stdout + stderr).strip().splitlines()[-1:]}"]

    def __enter__(self) -> InfoZipTest:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()  # not waited for: the run stopped before its check
            self.process.communicate()


# the patches proven in earlier runs, newest first, at most this many
_BSPATCH_RECORD_MAX = 4096
BSPATCH_RECORD = "bspatch-proven"  # its name among the state's records (dfota.state.store)


def _bspatch_tool() -> str:
    """What a proof by bspatch holds for: the sha1 of the `bspatch` program."""
    found = shutil.which("bspatch")
    if found is None:
        raise DfotaError("not found: install Debian's bsdiff package (`bspatch`)", "bspatch")
    return hashlib.sha1(Path(found).read_bytes()).hexdigest()


def bspatch_check(package: Path, base: ZipSource, target: ZipSource,
                  records: Records | None = None) -> tuple[list[str], int, int]:
    """Each patch applied by Debian's bspatch to the source must give the target's bytes
    (a bspatch per core at a time). `records` keep the patches proven, by the sha1s of
    source, patch and target bytes, under the sha1 of the bspatch program: a patch proven
    in an earlier run is not applied again. Problems, patches, patches proven earlier."""
    tool = _bspatch_tool()
    with ZipSource(package) as pkg, \
            BspatchProof(pkg, (base, target), records, tool=tool) as proof:
        return proof.result()


class BspatchProof:
    """`bspatch_check` begun: each patch to prove is handed at once to a thread that runs
    bspatch on it, while the caller goes on; `result` waits for them and gives what
    `bspatch_check` gives. An error in handing them over is raised by `result` (so where
    a check that ran last raised it). `pair`: the source and target zips; `stored`: the
    source's bytes, by member, where they are known (`device_from_targetfiles`)."""

    def __init__(self, pkg: ZipSource, pair: tuple[ZipSource, ZipSource],
                 records: Records | None = None, stored: Mapping[str, Stored] | None = None,
                 *, tool: str | None = None) -> None:
        self.records = records
        self.tool = ""
        self.proven_before: list[str] = []
        self.keys: dict[str, str] = {}  # by patch
        self.jobs: list[tuple[str, Future[str | None]]] = []  # the patches bspatch applies
        self.failed: Exception | None = None
        self._folder = tempfile.TemporaryDirectory(prefix="bspatch.")
        self._pool = ThreadPoolExecutor(os.cpu_count() or 1)
        try:
            self._hand_over(pkg, pair, stored or {}, tool)
        except Exception as exc:  # raised by `result`
            self.failed = exc

    def _hand_over(self, pkg: ZipSource, pair: tuple[ZipSource, ZipSource],
                   stored: Mapping[str, Stored], tool: str | None) -> None:
        base, target = pair
        self.tool = tool or _bspatch_tool()
        earlier = self.records.get(BSPATCH_RECORD, self.tool) if self.records is not None \
            else None
        self.proven_before = [key for key in earlier if isinstance(key, str)] \
            if isinstance(earlier, list) else []
        proven = set(self.proven_before)
        for index, name in enumerate(sorted(pkg.names("patch/"))):
            member = (BOOT_IMAGE if name == "patch/boot.img.p"
                      else system_path(name[len("patch/system/"):-len(".p")]))
            patch = pkg.read(name)  # a patch's work: held while it is hashed
            # every part of the key from the bytes (not from a record): the proof is of them
            wanted = target.sha1(member)
            key = self.keys[name] = (f"{base.sha1(member)}-{hashlib.sha1(patch).hexdigest()}-"
                                     f"{wanted}")
            if key in proven:
                continue
            # the source is read (in pieces) where bspatch runs, one at a time per thread
            old: Content = stored[member] if member in stored else \
                Stored(base.members[member].size, functools.partial(_read, base, member))
            self.jobs.append((name, self._pool.submit(
                _bspatch, name, Path(self._folder.name, str(index)), old,
                Stored(len(patch), functools.partial(_read, pkg, name)), wanted)))
            del patch

    def settle(self) -> None:
        """Wait until no bspatch runs (before a fork, say)."""
        self._pool.shutdown(wait=True)

    def result(self) -> tuple[list[str], int, int]:
        """Problems, patches, patches proven earlier; the records updated."""
        self.settle()
        if self.failed is not None:
            raise self.failed
        problems, failed_names = [], set()
        for name, job in self.jobs:
            failed = job.result()
            if failed is not None:
                problems.append(failed)
                failed_names.add(name)
        if self.records is not None:
            newest = [self.keys[name] for name in sorted(self.keys) if name not in failed_names]
            shown = set(newest)
            older = [key for key in self.proven_before if key not in shown]
            self.records.put(BSPATCH_RECORD, self.tool, (newest + older)[:_BSPATCH_RECORD_MAX],
                             alone=True)
        return problems, len(self.keys), len(self.keys) - len(self.jobs)

    def __enter__(self) -> BspatchProof:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._folder.cleanup()


def _read(src: ZipSource, name: str) -> Iterator[bytes]:
    return iter((src.read(name),))


def _bspatch(name: str, stem: Path, old: Content, patch: Content, wanted: str) -> str | None:
    """Debian's bspatch on one patch (on a thread): None when it gives the bytes whose sha1
    is `wanted`, else what is wrong. Its files are written and hashed in pieces, and removed
    once it is done."""
    old_file, patch_file = stem.with_suffix(".old"), stem.with_suffix(".patch")
    new_file = stem.with_suffix(".new")
    try:
        write_to(old, old_file)
        write_to(patch, patch_file)
        done = subprocess.run(["bspatch", str(old_file), str(new_file), str(patch_file)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            return f"{shown_path(name)}: bspatch failed: {done.stderr.strip()}"
        if file_sha1(new_file) != wanted:
            return f"{shown_path(name)}: bspatch gives other bytes than the target's"
        return None
    finally:
        for made in (old_file, patch_file, new_file):
            made.unlink(missing_ok=True)
