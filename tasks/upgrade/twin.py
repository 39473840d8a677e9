"""`doit twin`: a simulated module that the real `adb` client and `doit upgrade` talk to.

Its flash lives under a folder (`--root`): `system/` (the files of the running system, `/`),
`system.json` (every entry's type, mode, owner and link target: owners and links do not
live on the host's disk), `partitions/<name>.img` (the boot and minor partitions), `usrdata/`
(the module's /usrdata, where packages are pushed and downloaded) and `twin.json` (the
version it was made from). It is made from an archived version on first use.

What it answers (documented in the README, "Upgrading modules"):

- ADB over TCP (`dfota.upgrade.adb_wire`): the sync service (push and pull under /usrdata, pull of
  any file) and the legacy `shell:` service with the busybox commands `doit upgrade` uses:
  `cat`, `echo [-e] TEXT > FILE`, `md5sum`, `df -k`, `fuser`, `kill`, `sync`, `rm -f`,
  `mkdir -p`; output goes through a pty as the legacy adbd's does (LF becomes CRLF);
- /dev/smd7 and /dev/smd11 as AT ports (`cat` reads, `echo >` writes), and with `--at-pty` a
  pty standing for the USB AT port;
- AT+QFOTADL: the note's pre-checks (505 and the package format without recovery, 550 for
  /usrdata), START, the reboot into recovery (the ADB connection drops), the host model of
  the updater (`dfota.device.updater`) applied to the flash with UPDATING URCs, up to 5 retries
  (a power cut resumes, as FAQ 6.5 says), ipth_config_dfs.txt and last_log, the reboot back
  (ADB returns) and END.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import queue
import shlex
import shutil
import signal
import ssl
import termios
import threading
import time
import tty
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from dfota.core.errors import DfotaError, shown_path
from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.device.fs import Device
from dfota.device.storage import FsNode
from dfota.device.zip_reader import DeviceZip, ZipFormatError
from dfota.upgrade import adb_wire, at_port

USRDATA = "/usrdata"
FOTA_DIR = "/usrdata/cache/fota"
RESULT_FILE = "/usrdata/cache/fota/ipth_config_dfs.txt"
LAST_LOG = "/usrdata/cache/recovery/last_log"
DOWNLOAD = "/usrdata/cache/fota/ipth_package.bin"
VERSION_PATH = "/etc/quectel-project-version"
RETRIES = 5  # FAQ 6.5: at most 5 retries, then the package is removed
USRDATA_SIZE = 256 * 1024 * 1024  # the twin's /usrdata, when no fault says otherwise
RESULT_TEXT = {0: "IP_PREVIOUS_UPDATE_SUCCESSFUL", 510: "IP_PREVIOUS_UPDATE_CHECK_FILE_FAILED"}
IN_PROGRESS = "IP_PREVIOUS_UPDATE_IN_PROGRESS"  # "fail to write in": any other failure
BOOT_SECONDS = 0.5  # each reboot
FAULTS = ("power-cut:N", "low-space:MB", "wrong-version", "corrupt-download",
          "modified-file:PATH", "slow-link:KBPS", "port-busy:NAME", "cut-download:KB")
BUSY_PID = 817


# --- faults ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Faults:
    power_cut: int | None = None  # power lost after this mutating step of the first run
    low_space_mb: float | None = None  # free space of /usrdata
    wrong_version: bool = False  # the module runs another version than its flash says
    corrupt_download: bool = False  # every package received (push or download) is damaged
    modified_file: str | None = None  # a system file changed by hand (restriction 1)
    slow_link_kbps: float | None = None  # ADB and downloads at this rate
    port_busy: str | None = None  # a process of this name holds /dev/smd7 and /dev/smd11
    cut_download_kb: float | None = None  # the first download breaks after this much


def parse_faults(values: Sequence[str]) -> Faults:  # noqa: C901
    """`--fault` values; a bad one stops the command with one line."""
    found: dict[str, object] = {}
    for value in values:
        name, _, arg = str(value).partition(":")

        def number(kind: type = float, *, name: str = name, arg: str = arg,
                   value: str = value) -> object:
            try:
                got = kind(arg)
            except ValueError:
                raise DfotaError(f"--fault {value}: {name} needs a number ({name}:N)") from None
            if got <= 0:
                raise DfotaError(f"--fault {value}: the number must be above 0")
            return got

        if name == "power-cut":
            found["power_cut"] = number(int)
        elif name == "low-space":
            found["low_space_mb"] = number()
        elif name == "slow-link":
            found["slow_link_kbps"] = number()
        elif name == "cut-download":
            found["cut_download_kb"] = number()
        elif name in ("wrong-version", "corrupt-download") and not arg:
            found[name.replace("-", "_")] = True
        elif name == "modified-file" and arg.startswith("/"):
            found["modified_file"] = posixpath.normpath(arg)
        elif name == "port-busy" and arg:
            found["port_busy"] = arg
        else:
            raise DfotaError(f"--fault {shown_path(value)}: unknown fault (known: "
                             f"{', '.join(FAULTS)})")
    return Faults(**found)  # type: ignore[arg-type]  # each value is of its field's type


# --- the flash ------------------------------------------------------------------------------


class Flash:
    """The module's flash under `root` (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def record(self) -> Path:
        return self.root / "twin.json"

    @property
    def usrdata(self) -> Path:
        return self.root / "usrdata"

    def exists(self) -> bool:
        return self.record.is_file()

    def version(self) -> str:
        return str(json.loads(self.record.read_text("utf-8")).get("version", ""))

    def create(self, zip_path: Path, key: str) -> None:
        from dfota.formats.filelists import NO_LISTS
        from dfota.formats.zipio import ZipSource
        from dfota.proof.verify import device_from_targetfiles, minor_partitions

        with ZipSource(zip_path) as src:
            device, _ = device_from_targetfiles(src, minor_partitions(src, NO_LISTS))
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in ("system", "partitions", "system.json"):
            target = self.root / folder
            if target.is_dir():
                shutil.rmtree(target)
        self.save(device)
        for sub in ("cache/ufs", "cache/fota", "cache/recovery"):
            (self.usrdata / sub).mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"version": key}) + "\n", "utf-8")

    def save(self, device: Device) -> None:
        """Write the device's /system and partitions, replacing what was there."""
        fresh = self.root / ".system-new"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        meta: dict[str, list[object]] = {}
        for rel, entry in device.entries("/system").items():
            meta[rel] = [entry.kind, entry.mode, entry.uid, entry.gid, entry.link or ""]
            path = fresh / rel
            if entry.kind == DIR:
                path.mkdir(parents=True, exist_ok=True)
            elif entry.kind == FILE:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(device.host_read("/system/" + rel) or b"")
        old = self.root / ".system-old"
        shutil.rmtree(old, ignore_errors=True)
        if (self.root / "system").exists():
            os.replace(self.root / "system", old)
        os.replace(fresh, self.root / "system")
        shutil.rmtree(old, ignore_errors=True)
        (self.root / "system.json").write_text(json.dumps(meta, indent=0, sort_keys=True),
                                               "utf-8")
        parts = self.root / "partitions"
        parts.mkdir(exist_ok=True)
        for name, partition in device.partitions.items():
            (parts / f"{name}.img").write_bytes(partition.data)

    def load(self) -> Device:
        meta = json.loads((self.root / "system.json").read_text("utf-8"))
        entries: dict[str, tuple[str, int, int, int, bytes | str]] = {}
        for rel, (kind, mode, uid, gid, link) in meta.items():
            content: bytes | str = ((self.root / "system" / rel).read_bytes()
                                    if kind == FILE else link if kind == SYMLINK else b"")
            entries[rel] = (kind, mode, uid, gid, content)
        partitions = {p.name.removesuffix(".img"): p.read_bytes()
                      for p in sorted((self.root / "partitions").glob("*.img"))}
        return Device.from_system(entries, partitions)


# --- the AT ports ---------------------------------------------------------------------------


class AtChannel:
    """One AT port of the module. A line written to it is answered to its readers; URCs go to
    every port. What no reader takes is kept for the next one (the twin's choice: a real
    module may drop it, which is why `doit upgrade` also reads ipth_config_dfs.txt)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.readers: dict[int, queue.Queue[str]] = {}
        self.pending: deque[str] = deque(maxlen=256)
        self.guard = threading.Lock()

    def attach(self, pid: int) -> queue.Queue[str]:
        q: queue.Queue[str] = queue.Queue()
        with self.guard:
            while self.pending:
                q.put(self.pending.popleft())
            self.readers[pid] = q
        return q

    def detach(self, pid: int) -> None:
        with self.guard:
            self.readers.pop(pid, None)

    def emit(self, line: str) -> None:
        with self.guard:
            if not self.readers:
                self.pending.append(line)
            for q in self.readers.values():
                q.put(line)


class PtyPort:
    """The USB AT port: a pty whose other end the host opens (pyserial or a terminal)."""

    def __init__(self, execute: Callable[[str, str], None]) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave, termios.TCSANOW)
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self.execute = execute
        threading.Thread(target=self._read, daemon=True, name="at pty").start()

    def _read(self) -> None:
        import select

        pending = b""
        while True:
            try:
                ready, _, _ = select.select([self.master], [], [], 0.5)
                if not ready:
                    continue
                data = os.read(self.master, 4096)
            except BlockingIOError:
                continue
            except OSError:
                return
            pending += data
            while b"\r" in pending or b"\n" in pending:
                cut = min(i for i in (pending.find(b"\r"), pending.find(b"\n")) if i >= 0)
                line, pending = pending[:cut], pending[cut + 1:]
                if line.strip():
                    self.execute("pty", line.decode("utf-8", "replace"))

    def write(self, line: str) -> None:
        with contextlib.suppress(OSError):  # nobody reading: a full buffer drops the line
            os.write(self.master, b"\r\n" + line.encode() + b"\r\n")


# --- the module -----------------------------------------------------------------------------


@dataclass
class Process:
    pid: int
    name: str
    holds: str  # the device file it has open
    stop: Callable[[], None] = field(default=lambda: None)


class Twin(adb_wire.SyncFiles):
    """The simulated module: a flash, ADB, the AT ports and the updater."""

    def __init__(self, flash: Flash, host: str, port: int, faults: Faults, *,  # noqa: PLR0913
                 at_pty: bool = False, cafile: str = "",
                 say: Callable[[str], None] = print) -> None:
        self.flash, self.faults, self.say, self.cafile = flash, faults, say, cafile
        self.device = flash.load()
        self._apply_overlays()
        self.channels = {name: AtChannel(name) for name in at_port.ADB_PORTS}
        self.pty = PtyPort(self.at_line) if at_pty else None
        self.interpreter = at_port.AtInterpreter(self.fotadl, ["Quectel", "RG520N",
                                                              "Revision: twin"])
        self.processes: dict[int, Process] = {}
        self.next_pid = 2000
        if faults.port_busy:
            for name in at_port.ADB_PORTS:
                self.processes[BUSY_PID + len(self.processes)] = Process(
                    BUSY_PID + len(self.processes), faults.port_busy, f"/dev/{name}")
        self.guard = threading.Lock()
        self.updating = False
        self.downloads_cut = 0
        self.stopped = threading.Event()
        self.listener = adb_wire.AdbListener(
            host, port, "device::ro.product.name=rg520n;ro.product.model=RG520N_twin;"
            "ro.product.device=sdxlemur;features=", self.open_service, self.ack_delay)

    # --- faults that change what the module runs --------------------------------------------
    def _apply_overlays(self) -> None:
        faults = self.faults
        if faults.wrong_version:
            text = self.device.read_in("/system", VERSION_PATH) or b""
            lines = [b"Package Time: 2000-01-01,00:00" if line.startswith(b"Package Time")
                     else line for line in text.split(b"\n")]
            self.device.put("/system" + VERSION_PATH, FILE, 0o644, 0, 0, b"\n".join(lines))
        if faults.modified_file:
            data = self.device.read_in("/system", faults.modified_file)
            if data is None:
                raise DfotaError(f"--fault modified-file:{shown_path(faults.modified_file)}: "
                                 "no such file on the module")
            node = self.device.stat("/system" + faults.modified_file, every_mount=True)
            self.device.put("/system" + faults.modified_file, FILE, node.mode, node.uid,
                            node.gid, data + b"\n# changed by hand\n")

    # --- paths ------------------------------------------------------------------------------
    def host_path(self, path: str) -> Path | None:
        """A path under /usrdata on the host; None elsewhere."""
        norm = posixpath.normpath("/" + path.lstrip("/"))
        if norm == USRDATA or norm.startswith(USRDATA + "/"):
            return self.flash.usrdata / norm[len(USRDATA) + 1:] if norm != USRDATA \
                else self.flash.usrdata
        return None

    def read_file(self, path: str) -> bytes:
        norm = posixpath.normpath("/" + path.lstrip("/"))
        host = self.host_path(norm)
        if host is not None:
            try:
                return host.read_bytes()
            except OSError:
                raise adb_wire.SyncFailure(f"{norm}: No such file or directory") from None
        parts = norm.split("/")
        if len(parts) == 4 and parts[1] == "proc" and parts[3] in ("comm", "cmdline"):
            proc = self.processes.get(int(parts[2])) if parts[2].isdigit() else None
            if proc is not None:
                return proc.name.encode() + (b"\n" if parts[3] == "comm" else b"\0")
        data = self.device.read_in("/system", norm)
        if data is None:
            raise adb_wire.SyncFailure(f"{norm}: No such file or directory")
        return data

    def usrdata_used(self) -> int:
        return sum(p.stat().st_size for p in self.flash.usrdata.rglob("*") if p.is_file())

    def usrdata_free(self) -> int:
        if self.faults.low_space_mb is not None:
            return int(self.faults.low_space_mb * 1024 * 1024)
        return max(0, USRDATA_SIZE - self.usrdata_used())

    # --- the sync service -------------------------------------------------------------------
    def stat(self, path: str) -> tuple[int, int, int]:
        host = self.host_path(path)
        if host is not None:
            if host.is_dir():
                return 0o40755, 0, int(host.stat().st_mtime)
            if host.is_file():
                return 0o100644, host.stat().st_size, int(host.stat().st_mtime)
            return 0, 0, 0
        try:
            node = self.device.stat("/system/" + path.lstrip("/"), every_mount=True)
        except Exception:
            return 0, 0, 0
        kind = 0o40000 if node.kind == DIR else 0o100000
        return kind | node.mode, len(node.data) if node.kind == FILE else 0, 0

    def receive(self, path: str, mode: int, data: bytes) -> None:
        host = self.host_path(path)
        if host is None:
            raise adb_wire.SyncFailure(f"{path}: Read-only file system")
        if len(data) > self.usrdata_free():
            raise adb_wire.SyncFailure(f"{path}: No space left on device")
        if self.faults.corrupt_download:
            data = _damaged(data)
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_bytes(data)

    def read(self, path: str) -> bytes:
        return self.read_file(path)

    def listdir(self, path: str) -> list[tuple[str, int, int, int]]:
        host = self.host_path(path)
        if host is None or not host.is_dir():
            return []
        return [(p.name, 0o40755 if p.is_dir() else 0o100644,
                 p.stat().st_size if p.is_file() else 0, int(p.stat().st_mtime))
                for p in sorted(host.iterdir())]

    def ack_delay(self, size: int) -> float:
        rate = self.faults.slow_link_kbps
        return size / (rate * 1024) if rate else 0.0

    # --- services ---------------------------------------------------------------------------
    def open_service(self, name: str) -> adb_wire.Service | None:
        if name.startswith("sync:"):
            return lambda stream: adb_wire.sync_session(
                stream, self, lambda size: time.sleep(self.ack_delay(size)))
        if name.startswith("shell:"):
            command = name[len("shell:"):]
            return lambda stream: self.shell(stream, command)
        return None

    def shell(self, stream: adb_wire.Stream, command: str) -> None:
        def out(text: str) -> None:  # the legacy adbd's pty: LF becomes CRLF
            stream.write(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())

        if not command.strip():
            out("the twin has no interactive shell; give a command\n")
            return
        for part in command.split(";"):
            try:
                words = shlex.split(part)
            except ValueError as exc:
                out(f"sh: syntax error: {exc}\n")
                return
            if words:
                self.run(words, out, stream)

    def run(self, words: list[str], out: Callable[[str], None],  # noqa: C901
            stream: adb_wire.Stream) -> None:
        name, args = words[0], words[1:]
        if name == "cat" and len(args) == 1 and args[0].startswith("/dev/smd"):
            self.cat_port(args[0], stream)
        elif name == "cat":
            for path in args:
                try:
                    out(self.read_file(path).decode("utf-8", "replace"))
                except adb_wire.SyncFailure as exc:
                    out(f"cat: {exc}\n")
        elif name == "echo":
            self.echo(args, out)
        elif name == "md5sum":
            for path in args:
                try:
                    out(f"{hashlib.md5(self.read_file(path)).hexdigest()}  {path}\n")
                except adb_wire.SyncFailure as exc:
                    out(f"md5sum: {exc}\n")
        elif name == "df":
            self.df([a for a in args if not a.startswith("-")], out)
        elif name == "fuser":
            pids = [str(p.pid) for p in self.processes.values() if p.holds in args]
            if pids:
                out(" ".join(pids) + "\n")
        elif name == "kill":
            for pid in (int(a) for a in args if a.isdigit()):
                proc = self.processes.pop(pid, None)
                if proc is None:
                    out(f"kill: can't kill pid {pid}: No such process\n")
                else:
                    proc.stop()
        elif name == "rm":
            for path in (a for a in args if not a.startswith("-")):
                host = self.host_path(path)
                if host is not None and host.is_file():
                    host.unlink()
        elif name == "mkdir":
            for path in (a for a in args if not a.startswith("-")):
                host = self.host_path(path)
                if host is not None:
                    host.mkdir(parents=True, exist_ok=True)
        elif name in ("sync", "true", "mount"):
            pass
        else:
            out(f"sh: {name}: not found\n")

    def echo(self, args: list[str], out: Callable[[str], None]) -> None:
        escapes = bool(args) and args[0] == "-e"
        args = args[1:] if escapes else args
        target = None
        if len(args) >= 2 and args[-2] == ">":
            target, args = args[-1], args[:-2]
        text = " ".join(args)
        if escapes:
            text = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
        if target is None:
            out(text + "\n")
        elif target.startswith("/dev/smd") and target[5:] in self.channels:
            for line in text.replace("\r", "\n").split("\n"):
                if line.strip():
                    self.at_line(target[5:], line)
        else:
            host = self.host_path(target)
            if host is None:
                out(f"sh: can't create {target}: Read-only file system\n")
            else:
                host.parent.mkdir(parents=True, exist_ok=True)
                host.write_text(text + "\n")

    def cat_port(self, device: str, stream: adb_wire.Stream) -> None:
        channel = self.channels.get(device[5:])
        if channel is None:
            stream.write(f"cat: can't open '{device}': No such file or directory\r\n".encode())
            return
        with self.guard:
            pid, self.next_pid = self.next_pid, self.next_pid + 1
        gone = threading.Event()
        self.processes[pid] = Process(pid, "cat", device, gone.set)
        q = channel.attach(pid)
        try:
            while not (stream.closed.is_set() or gone.is_set() or self.stopped.is_set()):
                try:
                    line = q.get(timeout=0.2)
                except queue.Empty:
                    continue
                stream.write(b"\r\n" + line.encode() + b"\r\n")
        finally:
            channel.detach(pid)
            self.processes.pop(pid, None)

    def df(self, paths: list[str], out: Callable[[str], None]) -> None:
        out("Filesystem           1K-blocks      Used Available Use% Mounted on\n")
        for path in paths or ["/usrdata"]:
            if self.host_path(path) is not None:
                free = self.usrdata_free() // 1024
                used = self.usrdata_used() // 1024
                total = free + used
                out(f"{'ubi0:usrdata':<20} {total:>9} {used:>9} {free:>9} "
                    f"{used * 100 // max(total, 1):>3}% /usrdata\n")
            else:
                used = sum(len(n.data) for n in _files(self.device)) // 1024
                out(f"{'ubi0:rootfs':<20} {used + 20480:>9} {used:>9} {20480:>9} "
                    f"{used * 100 // (used + 20480):>3}% /\n")

    # --- AT ---------------------------------------------------------------------------------
    def at_line(self, port: str, line: str) -> None:
        for reply in self.interpreter.execute(line):
            self.reply(port, reply)

    def reply(self, port: str, line: str) -> None:
        if port == "pty":
            if self.pty is not None:
                self.pty.write(line)
        else:
            self.channels[port].emit(line)

    def urc(self, kind: str, value: int | None = None) -> None:
        line = at_port.urc(kind, value, spaced=kind != "END")  # both spellings in use
        self.say(f"twin: {line}")
        for channel in self.channels.values():
            channel.emit(line)
        if self.pty is not None:
            self.pty.write(line)

    def fotadl(self, url: str) -> str | None:
        with self.guard:
            if self.updating:
                return at_port.ERROR
            self.updating = True
        self.say(f"twin: AT+QFOTADL=\"{shown_path(url)}\"")
        threading.Thread(target=self._update, args=(url,), daemon=True,
                         name="twin update").start()
        return None

    # --- the update -------------------------------------------------------------------------
    def _update(self, url: str) -> None:
        try:
            code = self._fetch_and_check(url)
            if code is None:
                return
            self.urc("END", code)
        finally:
            with self.guard:
                self.updating = False

    def _fetch_and_check(self, url: str) -> int | None:
        """The package, then the checks made before recovery: an error code ends here
        (no reboot); None: the update ran."""
        time.sleep(0.2)  # the OK goes out before anything else
        if url.startswith(("http://", "https://")):
            fetched = self.download(url)
            if isinstance(fetched, int):
                return fetched
            package = fetched
        else:
            found = self.host_path(url)
            if found is None or not found.is_file():
                return 504
            package = found
        data = package.read_bytes()
        try:
            archive = DeviceZip(data)
        except ZipFormatError:
            package.unlink(missing_ok=True)  # 504: "which will thus be deleted"
            return 504
        largest = max((e.size for e in archive.entries), default=0)
        if len(data) + largest >= self.usrdata_free():  # restriction 6 of chapter 3
            return 550
        from dfota.device.updater import precheck

        pre = precheck(package, self.device)
        if pre is not None:
            return pre.code
        self.urc("START")
        self._recovery(package)
        return None

    def download(self, url: str) -> Path | int:
        """Download to ipth_package.bin, resuming a cut download with Range and If-Range;
        the package's .md5 beside it, when served, must match (else 503)."""
        host = self.host_path(DOWNLOAD)
        assert host is not None
        part, etag_file = host.with_name(host.name + ".part"), host.with_name(host.name + ".etag")
        host.parent.mkdir(parents=True, exist_ok=True)
        context = ssl.create_default_context(cafile=self.cafile or None)
        for _attempt in range(3):
            headers = {}
            if part.is_file() and etag_file.is_file():
                headers = {"Range": f"bytes={part.stat().st_size}-",
                           "If-Range": etag_file.read_text().strip()}
            try:
                request = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(request, timeout=30, context=context) as resp:
                    if resp.status == 200 or not part.is_file():
                        part.write_bytes(b"")
                    etag_file.write_text(resp.headers.get("ETag", ""))
                    done = self._copy(resp, part)
                if not done:
                    continue  # cut: resume
                break
            except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
                self.say(f"twin: download failed: {shown_path(str(exc))}")
                return 504
        else:
            return 504
        data = part.read_bytes()
        if self.faults.corrupt_download:
            data = _damaged(data)
        expected = self._served_md5(url + ".md5", context)
        if expected and hashlib.md5(data).hexdigest() != expected:
            part.unlink(missing_ok=True)
            return 503
        host.write_bytes(data)
        part.unlink(missing_ok=True)
        etag_file.unlink(missing_ok=True)
        return host

    def _copy(self, resp: BinaryIO, part: Path) -> bool:
        """Append the response to `part`; False when the link was cut (a fault)."""
        limit = self.faults.cut_download_kb
        cut_at = int(limit * 1024) if limit and self.downloads_cut == 0 else None
        written = 0
        with part.open("ab") as out:
            while True:
                chunk = resp.read(16 * 1024)
                if not chunk:
                    return True
                if cut_at is not None and written + len(chunk) >= cut_at:
                    out.write(chunk[:cut_at - written])
                    self.downloads_cut += 1
                    self.say(f"twin: download cut after {cut_at} bytes (fault)")
                    return False
                out.write(chunk)
                written += len(chunk)
                time.sleep(self.ack_delay(len(chunk)))

    def _served_md5(self, url: str, context: ssl.SSLContext) -> str:
        try:
            with urllib.request.urlopen(url, timeout=30, context=context) as resp:
                head: bytes = resp.read(200)
            return head.decode("ascii", "replace").split()[0].lower()
        except (urllib.error.URLError, OSError, IndexError, ssl.SSLError):
            return ""

    def _recovery(self, package: Path) -> None:
        """Reboot into recovery, run the updater (retrying), write the results, boot back."""
        from dfota.device.updater import PowerLoss, apply_package, load_package

        time.sleep(0.3)  # START reaches the readers
        self.say("twin: rebooting into recovery")
        self.listener.down()
        time.sleep(BOOT_SECONDS)
        pkg = load_package(package)
        log: list[str] = []
        code, attempt, power_cut = 502, 0, self.faults.power_cut
        while attempt <= RETRIES:
            attempt += 1
            reported = -1
            try:
                result = apply_package(pkg, self.device, power_loss_at=power_cut)
            except PowerLoss as lost:
                self.say(f"twin: {lost}; the module boots into recovery again")
                log.append(f"run {attempt}: {lost}")
                self.flash.save(self.device)
                power_cut = None
                time.sleep(BOOT_SECONDS)
                continue
            for percent in result.progress:
                if int(percent) > reported:
                    reported = int(percent)
                    self.urc("UPDATING", reported)
            log.extend(result.log)
            code = result.code
            if code == 0:
                break
            run = "the update" if attempt == 1 else f"retry {attempt - 1} of {RETRIES}"
            log.append(f"E{code}: {run} failed: {result.message}")
        self.flash.save(self.device)
        self._write(RESULT_FILE, RESULT_TEXT.get(code, IN_PROGRESS) + "\n")
        if code != 0:
            self._write(LAST_LOG, "\n".join(log) + "\n")
            package.unlink(missing_ok=True)  # FAQ 6.5: the package is removed after the last
        self.say("twin: rebooting into normal mode")
        time.sleep(BOOT_SECONDS)
        self._boot_back(code)

    def _boot_back(self, code: int) -> None:
        self.listener.up()
        self.say(f"twin: back in normal mode, version file "
                 f"{(self.device.read_in('/system', VERSION_PATH) or b'').splitlines()[-1:]}")
        self.urc("END", code)

    def _write(self, path: str, text: str) -> None:
        host = self.host_path(path)
        assert host is not None
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text, "utf-8")

    # --- life -------------------------------------------------------------------------------
    def start(self) -> None:
        self.listener.up()

    def stop(self) -> None:
        self.stopped.set()
        self.listener.down()


def _damaged(data: bytes) -> bytes:
    if not data:
        return b"\0"
    at = len(data) // 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]


def _files(device: Device) -> list[FsNode]:  # the nodes of regular files under /system
    from dfota.device.host import _walk

    return [n for _, n in _walk(device.mounts["/system"].fs.root, "") if n.kind == FILE]


def parse_address(text: str, what: str = "--adb") -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise DfotaError(f"{what} {shown_path(text)}: give HOST:PORT (e.g. 127.0.0.1:5600)")
    return host.strip("[]"), int(port)


def run_twin(root: Path, zip_path: Path | None, key: str, address: str, faults: Faults, *,  # noqa: PLR0913
             at_pty: bool, cafile: str, say: Callable[[str], None],
             stop: threading.Event | None = None) -> None:
    """Make the flash when needed, listen, and serve until SIGTERM/SIGINT (or `stop`)."""
    host, port = parse_address(address)
    flash = Flash(root)
    if zip_path is not None and (not flash.exists() or flash.version() != key):
        say(f"twin: writing version {key} to the flash in {root}")
        flash.create(zip_path, key)
    elif not flash.exists():
        raise DfotaError("holds no module flash yet: name the version to make it from "
                         "(doit twin --version KEY)", root)
    twin = Twin(flash, host, port, faults, at_pty=at_pty, cafile=cafile, say=say)
    stop = stop or threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            twin.start()
        except OSError as exc:
            raise DfotaError(f"--adb {address}: cannot listen ({exc.strerror})") from None
        say(f"twin ready: adb connect {host}:{twin.listener.port}")
        if twin.pty is not None:
            say(f"twin AT port: {twin.pty.path}")
        while not stop.wait(0.5):
            pass
    finally:
        twin.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say("twin: stopped")
