"""The twin's running system as ADB sees it: its files (/usrdata on the host's disk, the rest
from the flash's /system, /proc/<pid> of its processes), the free space of /usrdata, the faults
that change what it runs, and the answers of the ADB sync service.
"""

from __future__ import annotations

import posixpath
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dfota.core.errors import DfotaError, shown_path
from dfota.core.tree import DIR, FILE
from dfota.device.storage import FsNode
from dfota.upgrade import adb_wire, at_port
from dfota.upgrade.twin_faults import Faults
from dfota.upgrade.twin_flash import Flash

USRDATA = "/usrdata"
VERSION_PATH = "/etc/quectel-project-version"
USRDATA_SIZE = 256 * 1024 * 1024  # the twin's /usrdata, when no fault says otherwise
BUSY_PID = 817


@dataclass
class Process:
    pid: int
    name: str
    holds: str  # the device file it has open
    stop: Callable[[], None] = field(default=lambda: None)


class ModuleSystem(adb_wire.SyncFiles):
    """The module's files, space and processes, with the faults applied."""

    def __init__(self, flash: Flash, faults: Faults) -> None:
        self.flash, self.faults = flash, faults
        self.device = flash.load()
        self._apply_overlays()
        self.processes: dict[int, Process] = {}
        self.next_pid = 2000
        self.guard = threading.Lock()
        if faults.port_busy:
            for name in at_port.ADB_PORTS:
                self.processes[BUSY_PID + len(self.processes)] = Process(
                    BUSY_PID + len(self.processes), faults.port_busy, f"/dev/{name}")

    def new_pid(self) -> int:
        with self.guard:
            pid, self.next_pid = self.next_pid, self.next_pid + 1
        return pid

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

    def write(self, path: str, text: str) -> None:
        """Write a file under /usrdata."""
        host = self.host_path(path)
        assert host is not None
        host.parent.mkdir(parents=True, exist_ok=True)
        host.write_text(text, "utf-8")

    def usrdata_used(self) -> int:
        return sum(p.stat().st_size for p in self.flash.usrdata.rglob("*") if p.is_file())

    def usrdata_free(self) -> int:
        if self.faults.low_space_mb is not None:
            return int(self.faults.low_space_mb * 1024 * 1024)
        return max(0, USRDATA_SIZE - self.usrdata_used())

    def system_files(self) -> list[FsNode]:
        """The nodes of regular files under /system."""
        from dfota.device.host import _walk

        return [n for _, n in _walk(self.device.mounts["/system"].fs.root, "")
                if n.kind == FILE]

    def ack_delay(self, size: int) -> float:
        rate = self.faults.slow_link_kbps
        return size / (rate * 1024) if rate else 0.0

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
            data = damaged(data)
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


def damaged(data: bytes) -> bytes:
    """The bytes with one flipped in the middle (the corrupt-download fault)."""
    if not data:
        return b"\0"
    at = len(data) // 2
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
