"""The module's real recovery updater, built for this host, as a differential oracle.

`DFOTA_ORACLE` names its folder (`apply-package.py`, `run-updater.sh`, `bin/updater`; it needs
root). A package is applied to the source targetfiles by the real updater and by the host model
(`dfota.device.updater`), and the two must agree: the outcome (exit code and the `log error: N` line
against the model's result code, docs/updater-model.md), the resulting /system tree (names as
bytes, types, modes, owners, link targets, content), the partitions (image then NAND padding)
and the command pipe (`ui_print` texts, progress values).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from dfota.build.targetfiles import BOOT_IMAGE
from dfota.core.tree import DIR, FILE, SYMLINK, Entry
from dfota.core.volumes import DEFAULT_VOLUMES, Volumes
from dfota.device.fs import Device
from dfota.device.storage import FsNode
from dfota.device.updater import (
    BAD_PACKAGE,
    CHECK_FAILED,
    NO_SPACE,
    OK,
    UPDATER_DIED,
    UpdateResult,
    apply_package,
    load_package,
)
from dfota.formats.zipio import ZipSource
from dfota.proof.host_device import device_from_targetfiles

ENV = "DFOTA_ORACLE"
ERASE_BLOCK = 0x40000  # the oracle's NAND erase block (ORACLE_MTD_ERASE)
ABL_IMAGE = "MULTIFOTA/abl.elf"
# printed by the host build only: the module's recovery has file_contexts
NOT_ON_THE_MODULE = "ui_print Warning: No file_contexts"
LETTER = {FILE: "f", DIR: "d", SYMLINK: "l"}  # the oracle's names of the types

# path bytes -> (type, mode, uid, gid, sha1 of a file or target of a link)
Listing = dict[bytes, tuple[str, int, int, int, str]]


@dataclass(frozen=True)
class Outcome:
    """What one run of an updater leaves: comparable between the model and the real one."""

    exit: int
    error: int | None  # the `log error: N` line
    pipe: tuple[str, ...]
    system: Listing
    partitions: dict[str, str]


class OracleMissing(Exception):
    """`DFOTA_ORACLE` is set but names no runnable oracle."""


def oracle_folder() -> Path | None:
    """The folder `DFOTA_ORACLE` names, checked; None when the variable is unset."""
    value = os.environ.get(ENV)
    if not value:
        return None
    folder = Path(value)
    for name in ("apply-package.py", "run-updater.sh", "bin/updater"):
        if not (folder / name).is_file():
            raise OracleMissing(f"{ENV}={value}: no {name} there")
    if os.geteuid() != 0:
        raise OracleMissing(f"{ENV}={value}: the oracle needs root")
    return folder


def real_run(folder: Path, source_zip: Path, package: Path,
             volumes: Volumes = DEFAULT_VOLUMES) -> Outcome:
    """The package applied by the real updater to the source's /system and partitions, on
    volumes of `volumes`' sizes."""
    with tempfile.TemporaryDirectory(prefix="dfota-oracle-") as tmp:
        out = Path(tmp) / "result.json"
        done = subprocess.run([sys.executable, str(folder / "apply-package.py"), str(source_zip),
                               str(package), "--json", str(out),
                               "--system-size", str(volumes.system),
                               "--cache-size", str(volumes.cache)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OracleMissing(f"the oracle did not run (exit {done.returncode}): "
                                f"{done.stderr.strip() or done.stdout.strip()}")
        result = json.loads(out.read_text())
    pipe = tuple(line for line in result["pipe"] if line != NOT_ON_THE_MODULE)
    system: Listing = {}
    for e in result["system"]:
        what = e.get("sha1") or e.get("target", "")
        system[e["path"].encode("utf-8", "surrogateescape")] = (
            e["type"], int(e["mode"], 8), e["uid"], e["gid"], what)
    return Outcome(result["exit"], log_error(pipe), pipe, system, dict(result["partitions"]))


def write_device_tree(device: Device, mount: str, folder: Path) -> None:
    """The model's filesystem mounted at `mount` written to a host folder as it is: names as
    bytes, types, content, link targets, modes and owners (owners need root)."""
    top = os.fsencode(folder)
    os.makedirs(top, exist_ok=True)
    entries = device.entries(mount)
    for path, e in entries.items():  # sorted: a folder before what it holds
        full = os.path.join(top, path.encode("utf-8", "surrogateescape"))
        if e.kind == DIR:
            os.mkdir(full)
        elif e.kind == SYMLINK:
            os.symlink(e.link.encode("utf-8", "surrogateescape"), full)
        else:
            with open(full, "wb") as out:
                out.write(device.host_read(f"{mount}/{path}") or b"")
    owned: list[tuple[str, Entry | FsNode]] = [*reversed(entries.items()),
                                               ("", device.stat(mount, every_mount=True))]
    for path, node in owned:  # chown clears set-id bits
        full = os.path.join(top, path.encode("utf-8", "surrogateescape")) if path else top
        os.chown(full, node.uid, node.gid, follow_symlinks=False)
        if node.kind != SYMLINK:
            os.chmod(full, node.mode)


def host_listing(folder: Path) -> Listing:
    """A host folder as the oracle lists it: path bytes -> (type, mode, owner, sha1 or target)."""
    top = os.fsencode(folder)
    found: Listing = {}
    for where, dirs, files in os.walk(top):
        for name in dirs + files:
            full = os.path.join(where, name)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                kind, what = "l", os.fsdecode(os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                kind, what = "d", ""
            else:
                with open(full, "rb") as data:
                    kind, what = "f", hashlib.sha1(data.read()).hexdigest()
            found[os.path.relpath(full, top)] = (kind, stat.S_IMODE(st.st_mode), st.st_uid,
                                                 st.st_gid, what)
    return dict(sorted(found.items()))


def real_run_device(folder: Path, device: Device, package: Path,
                    volumes: Volumes = DEFAULT_VOLUMES) -> Outcome:
    """The package applied by the real updater (`run-updater.sh`) to the model's device as it
    is: its /system and /cache trees and its partitions are the real updater's start, on
    volumes of `volumes`' sizes (give the model's device the same)."""
    with tempfile.TemporaryDirectory(prefix="dfota-oracle-") as tmp:
        system, cache, mtd, run = (Path(tmp, n) for n in ("system", "cache", "mtd", "run"))
        write_device_tree(device, "/system", system)
        write_device_tree(device, "/cache", cache)
        env = {**os.environ, "ORACLE_WORK": str(Path(tmp, "work")), "ORACLE_RUN_DIR": str(run),
               "ORACLE_QUIET": "1", "ORACLE_SYSTEM_SIZE": str(volumes.system),
               "ORACLE_CACHE_SIZE": str(volumes.cache)}
        env.pop("ORACLE_MTD_INIT", None)
        if device.partitions:
            mtd.mkdir()
            for name, part in device.partitions.items():
                (mtd / name).write_bytes(part.data)
            # each partition one erase block past its image (the oracle's floor): the
            # default 32 MiB each makes the run four times slower
            env.update(ORACLE_MTD_INIT=str(mtd), ORACLE_MTD_SIZE=str(ERASE_BLOCK))
        done = subprocess.run(["bash", str(folder / "run-updater.sh"), str(system),
                               str(package), str(cache)], env=env, capture_output=True,
                              check=False)
        if done.returncode in (64, 90) or not (run / "result").is_dir():
            raise OracleMissing(f"run-updater.sh did not run (exit {done.returncode}): "
                                f"{done.stderr.decode(errors='replace').strip()}")
        text = (run / "cmd_pipe.txt").read_bytes().decode("utf-8", "backslashreplace")
        pipe = tuple(line for line in text.splitlines() if line != NOT_ON_THE_MODULE)
        images = run / "result" / "images"
        partitions = {p.name: hashlib.sha1(p.read_bytes()).hexdigest()
                      for p in sorted(images.iterdir())} if images.is_dir() else {}
        return Outcome(done.returncode, log_error(pipe), pipe,
                       host_listing(run / "result" / "system"), partitions)


def log_error(pipe: tuple[str, ...]) -> int | None:
    errors = [int(line.split(":", 1)[1]) for line in pipe if line.startswith("log error:")]
    return errors[-1] if errors else None


def result_codes(exit_code: int, error: int | None) -> set[int]:
    """The model's result codes that stand for this exit of the real updater and its
    `log error: N` line (the table in docs/updater-model.md)."""
    if exit_code == 0:
        return {OK, NO_SPACE}  # a write cut short by a full volume: reported as 511
    if exit_code in (3, 4, 5):
        return {BAD_PACKAGE}
    if exit_code == 7 and error:
        return {error}
    if exit_code == 7 and error is None:
        return {CHECK_FAILED, NO_SPACE, UPDATER_DIED}
    return {UPDATER_DIED}  # parse errors, `E0:`, any other exit


def oracle_partitions(src: ZipSource) -> dict[str, str]:
    """The raw partitions the oracle sets up from a targetfiles (image -> partition name)."""
    found = {BOOT_IMAGE: "boot", ABL_IMAGE: "abl"}
    return {image: part for image, part in found.items() if image in src.members}


def model_device(source_zip: Path, volumes: Volumes = DEFAULT_VOLUMES) -> Device:
    """The host model's module running the source, with the oracle's partitions and volumes
    of `volumes`' sizes (the defaults are the oracle's)."""
    with ZipSource(source_zip) as src:
        minor = {image.removeprefix("MULTIFOTA/"): part
                 for image, part in oracle_partitions(src).items() if image == ABL_IMAGE}
        device, _ = device_from_targetfiles(src, minor, volumes)
    return device


def nand_sha1(data: bytes, written: bool) -> str:
    """The sha1 the oracle reports for a partition: a written image is followed by zeros up to
    the erase block, then the erased flash (0xff), which the report cuts."""
    padded = data + b"\0" * (-len(data) % ERASE_BLOCK) if written else data
    return hashlib.sha1(padded.rstrip(b"\xff")).hexdigest()


def model_outcome(device: Device, result: UpdateResult) -> Outcome:
    written = {what.split(" ", 2)[2] for what in result.step_log
               if what.startswith("write partition ")}
    system: Listing = {}
    for path, e in device.entries("/system").items():
        what = e.sha1 if e.kind == FILE else e.link
        system[path.encode("utf-8", "surrogateescape")] = (LETTER[e.kind], e.mode, e.uid, e.gid,
                                                           what)
    partitions = {name: nand_sha1(p.data, name in written)
                  for name, p in device.partitions.items()}
    pipe = tuple(result.pipe.decode("utf-8", "backslashreplace").splitlines())
    return Outcome(result.updater_exit, log_error(pipe), pipe, system, partitions)


def model_run(source_zip: Path, package: Path,
              volumes: Volumes = DEFAULT_VOLUMES) -> tuple[Outcome, int]:
    """The model's outcome and its result code."""
    device = model_device(source_zip, volumes)
    # closed here, not when collected: a test may unmount the folder the package is in
    with contextlib.closing(load_package(package)) as opened:
        result = apply_package(opened, device)
        return model_outcome(device, result), result.code


def differences(model: Outcome, code: int, real: Outcome) -> list[str]:
    """One line per way the model's run (and its result code) differs from the real one's."""
    lines = []
    if code not in result_codes(real.exit, real.error):
        lines.append(f"result code: model {code}, real exit {real.exit} code {real.error}")
    if (model.exit, model.error) != (real.exit, real.error):
        lines.append(f"outcome: model exit {model.exit} code {model.error}, "
                     f"real exit {real.exit} code {real.error}")
    lines += _listing_differences(model.system, real.system)
    for name in sorted(set(model.partitions) | set(real.partitions)):
        if model.partitions.get(name) != real.partitions.get(name):
            lines.append(f"partition {name}: model {model.partitions.get(name)}, "
                         f"real {real.partitions.get(name)}")
    if model.pipe != real.pipe:
        lines.append("command pipe differs:\n  model: " + "\n  model: ".join(model.pipe)
                     + "\n  real:  " + "\n  real:  ".join(real.pipe))
    return lines


def _listing_differences(model: Mapping[bytes, tuple[object, ...]],
                         real: Mapping[bytes, tuple[object, ...]]) -> list[str]:
    return [f"/system/{path!r}: model {model.get(path)}, real {real.get(path)}"
            for path in sorted(set(model) | set(real)) if model.get(path) != real.get(path)]


def agree(folder: Path, source_zip: Path, package: Path,
          volumes: Volumes = DEFAULT_VOLUMES) -> Outcome:
    """Both runs of the package on volumes of `volumes`' sizes; an AssertionError listing
    every difference if they differ. Returns the real updater's outcome."""
    real = real_run(folder, source_zip, package, volumes)
    found = differences(*model_run(source_zip, package, volumes), real)
    assert not found, f"{package} on {source_zip}:\n" + "\n".join(found)
    return real


def published(out: Path) -> Iterator[tuple[Path, Path, Volumes]]:
    """(base targetfiles, package, the volumes it was made for) of every package a run left
    under `out`: published, waiting for `doit verify`, or made for one of several bases. A
    summary names the base from the workspace's folder (here the one holding `out`)."""
    pairs = [(out / "update.json", out / "update.zip"),
             (out / "update.json", out / ".unverified/update.zip"),
             *((s, s.with_name("update.zip")) for s in sorted(out.glob("deltas/*/update.json")))]
    for summary, package in pairs:
        if summary.is_file() and package.is_file():
            said = json.loads(summary.read_text())
            base = out.parent / said["base_zip"]
            if base.is_file():  # a test may have removed the archive since
                yield base, package, Volumes.from_json(said.get("volumes"))


def check_published(out: Path, seen: set[str] | None = None) -> int:
    """Every package published under `out` (not in `seen`, by sha256) applied by both
    updaters, which must agree; nothing when `DFOTA_ORACLE` is unset. How many ran."""
    folder = oracle_folder()
    if folder is None:
        return 0
    count = 0
    for base, package, volumes in published(out):
        digest = hashlib.sha256(package.read_bytes()).hexdigest()
        if seen is not None and digest in seen:
            continue
        agree(folder, base, package, volumes)
        count += 1
        if seen is not None:
            seen.add(digest)
    return count
