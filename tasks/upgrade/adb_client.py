"""The host's `adb` client, run as a program: Debian's `adb` package, talking to its server
(`ANDROID_ADB_SERVER_PORT` chooses the server's port, as for any adb command).

Only what does not depend on shell_v2 is used: `push` and `pull` (the sync service, byte for
byte), and `shell` for commands whose output is read (never their exit status, which the
legacy shell does not carry; its output comes through a pty, so CRLF is turned back to LF).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from dfota.core.errors import DfotaError

ADB = os.environ.get("DFOTA_ADB", "adb")


class AdbTimeout(Exception):
    """An adb command did not finish in time."""


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run([ADB, *args], capture_output=True, timeout=timeout, check=False,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise DfotaError(f"{ADB}: not found; install Debian's adb package (.ci/setup "
                         "does)") from None
    except subprocess.TimeoutExpired:
        raise AdbTimeout(f"adb {' '.join(args[:3])} did not finish in {timeout:g} s") from None


def connected_devices(timeout: float = 30) -> list[str]:
    """Serials `adb devices` lists as `device` (online)."""
    done = _run(["devices"], timeout)
    serials = []
    for line in done.stdout.decode("utf-8", "replace").splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2 and fields[1] == "device":
            serials.append(fields[0])
    return serials


def is_tcp(serial: str) -> bool:
    host, sep, port = serial.rpartition(":")
    return bool(sep and host and port.isdigit())


class Adb:
    """One module, by its serial."""

    def __init__(self, serial: str) -> None:
        self.serial = serial
        self.prefix = [ADB, "-s", serial]

    def run(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[bytes]:
        return _run(["-s", self.serial, *args], timeout)

    def state(self) -> str:
        """`device` when online; `offline`, `unknown` or adb's complaint otherwise."""
        try:
            done = self.run(["get-state"], 15)
        except AdbTimeout:
            return "unknown"
        text = (done.stdout or done.stderr).decode("utf-8", "replace").strip()
        return text.splitlines()[-1].removeprefix("error: ") if text else "unknown"

    def connect(self) -> None:
        """For a TCP serial: drop a stale (offline) transport and connect again."""
        if is_tcp(self.serial):
            _run(["disconnect", self.serial], 15)
            _run(["connect", self.serial], 15)

    def shell(self, command: str, timeout: float = 30) -> str:
        done = self.run(["shell", command], timeout)
        return done.stdout.decode("utf-8", "replace").replace("\r\n", "\n")

    def pull(self, remote: str, timeout: float = 60) -> bytes | None:
        """The file's bytes, or None when the module has no such file."""
        with tempfile.TemporaryDirectory(prefix="dfota-pull-") as folder:
            local = Path(folder) / "file"
            done = self.run(["pull", remote, str(local)], timeout)
            if done.returncode != 0 or not local.is_file():
                return None
            return local.read_bytes()

    def push(self, local: Path, remote: str, timeout: float) -> str:
        """Push; returns adb's complaint, or "" when it succeeded."""
        done = self.run(["push", str(local), remote], timeout)
        if done.returncode == 0:
            return ""
        text = (done.stderr + done.stdout).decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else f"adb push exited {done.returncode}"
