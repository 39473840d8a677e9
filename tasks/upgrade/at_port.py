"""The module's AT port, both ends: the commands the twin interprets, the URCs of a DFOTA
upgrade (note 4.3 and chapter 5) and what each result code means, and the host's ways to
reach the port (/dev/smd7 or /dev/smd11 through `adb shell`, or the USB AT port with pyserial).

URC grammar: `+QIND: "FOTA","START"`, `+QIND: "FOTA","UPDATING",<percent>` and
`+QIND: "FOTA","END",<err>`; the note prints them with a space after each comma, the
modules' AT manuals without: both are read.
"""

from __future__ import annotations

import contextlib
import io
import queue
import re
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

OK, ERROR = "OK", "ERROR"
ADB_PORTS = ("smd7", "smd11")  # the note's two ports inside the module (4.2.1)

# <err> -> (what the note says, what to do); 550 is from restriction 6 of chapter 3
MEANINGS: dict[int, tuple[str, str]] = {
    0: ("DFOTA upgrade succeeded", "nothing"),
    501: ("the package cannot be decompressed, or the space to decompress it is missing",
          "free space in /usrdata and check the package (unzip -tq)"),
    502: ("the upgrade process exited abnormally",
          "read last_log (printed above); power the module normally and run again"),
    503: ("MD5 checksum error of the package", "transfer the package again"),
    504: ("incorrect format of the package (the module deleted it)",
          "send the package itself (update.zip), not another file"),
    505: ("the package was made for another version than the module runs",
          "make the package from the module's version: doit delta --base <its version>"),
    510: ("file verification failed during the upgrade: a file on the module differs from "
          "the source version (restriction 1)",
          "find the file in last_log; make the module's source version again (rootfs "
          "image, or targetfiles.zip updated with the file) and a new package"),
    511: ("insufficient space during the upgrade", "free space in the rootfs and /cache"),
    550: ("the package does not fit in the free space of /usrdata",
          "free /usrdata (the note asks for 60 MB within a baseline, 110 MB across)"),
}

_URC = re.compile(r'\+QIND:\s*"FOTA"\s*,\s*"([A-Z]+)"\s*(?:,\s*"?([^",\s]+)"?)?')
_FOTADL = re.compile(r'AT\+QFOTADL\s*=\s*"([^"]*)"\s*', re.IGNORECASE)


def meaning(err: int) -> str:
    return MEANINGS.get(err, ("an error the note does not list", ""))[0]


def advice(err: int) -> str:
    return MEANINGS.get(err, ("", "read last_log"))[1]


@dataclass(frozen=True)
class Urc:
    """One FOTA URC: kind START, UPDATING (value: percent) or END (value: <err>)."""

    kind: str
    value: int | None = None


def parse_urc(line: str) -> Urc | None:
    found = _URC.search(line)
    if found is None:
        return None
    kind, value = found.groups()
    try:
        number = int(value) if value is not None else None
    except ValueError:
        number = None
    return Urc(kind, number)


def urc(kind: str, value: int | None = None, *, spaced: bool = True) -> str:
    """A URC line; `spaced`: the note's spelling, with a space after each comma."""
    comma = ", " if spaced else ","
    return f'+QIND: "FOTA"{comma}"{kind}"' + (f"{comma}{value}" if value is not None else "")


def fotadl(url: str) -> str:
    return f'AT+QFOTADL="{url}"'


class AtInterpreter:
    """The commands the twin answers: AT, ATE0/ATE1, ATI, AT+QFOTADL="<url>". `start(url)`
    returns None when the download is accepted (the reply is OK, the URCs follow), else the
    reply (ERROR)."""

    def __init__(self, start: Callable[[str], str | None], identity: Sequence[str]) -> None:
        self.start, self.identity = start, list(identity)

    def execute(self, line: str) -> list[str]:
        command = line.strip()
        upper = command.upper()
        if not command:
            return []
        if upper in ("AT", "ATE0", "ATE1", "AT&F"):
            return [OK]
        if upper == "ATI":
            return [*self.identity, OK]
        found = _FOTADL.fullmatch(command)
        if found:
            refused = self.start(found.group(1))
            return [refused] if refused else [OK]
        return [ERROR]


# --- the host's end -------------------------------------------------------------------------


class PortLost(Exception):
    """The channel to the AT port ended (the module rebooted, or the port went away)."""


class Channel:
    """Lines from an AT port, read by a thread into a queue; `send` writes one command."""

    name = "AT port"

    def __init__(self) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()

    def next_line(self, timeout: float) -> str:
        """The next line; PortLost when the channel ended, TimeoutError after `timeout`."""
        try:
            line = self.lines.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            raise TimeoutError from None
        if line is None:
            self.lines.put(None)  # stays ended
            raise PortLost(self.name)
        return line

    def send(self, command: str) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _pump(self, read: Callable[[], bytes]) -> None:
        pending = b""
        try:
            while True:
                chunk = read()
                if not chunk:
                    break
                pending += chunk
                *lines, pending = re.split(rb"\r\n|\r|\n", pending)
                for line in lines:
                    if line.strip():
                        self.lines.put(line.decode("utf-8", "replace").strip())
        except (OSError, ValueError):
            pass
        finally:
            self.lines.put(None)


class AdbSmdChannel(Channel):
    """/dev/smd7 or /dev/smd11 inside the module, through `adb shell` as note 4.2.1 does
    it: `cat /dev/smdN` reads (its own shell, held open), `echo -e "...\\r\\n" > /dev/smdN`
    writes."""

    def __init__(self, adb: list[str], port: str) -> None:
        super().__init__()
        self.adb, self.port = adb, port
        self.name = f"/dev/{port}"
        self.reader = subprocess.Popen([*adb, "shell", f"cat /dev/{port}"],
                                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       stdin=subprocess.DEVNULL)
        stdout = self.reader.stdout
        assert isinstance(stdout, io.BufferedReader)  # a pipe, buffered (bufsize -1)
        threading.Thread(target=self._pump, args=(lambda: stdout.read1(4096),),
                         daemon=True).start()

    def send(self, command: str) -> None:
        if "'" in command or any(ord(c) < 32 for c in command):
            raise ValueError(f"cannot send {command!r} through the shell")
        subprocess.run([*self.adb, "shell", f"echo -e '{command}\\r\\n' > /dev/{self.port}"],
                       capture_output=True, timeout=30, check=False)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.reader.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.reader.wait(5)


class SerialChannel(Channel):
    """The USB AT port on the host (a tty), with pyserial."""

    def __init__(self, device: str) -> None:
        import serial  # pyserial

        super().__init__()
        self.name = device
        try:
            self.port = serial.Serial(device, 115200, timeout=0.2, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortLost(f"{device}: {exc}") from exc
        self.stop = threading.Event()
        threading.Thread(target=self._pump, args=(self._read,), daemon=True).start()

    def _read(self) -> bytes:
        while not self.stop.is_set():
            data = self.port.read(4096)
            if data:
                return bytes(data)
        return b""

    def send(self, command: str) -> None:
        self.port.write(command.encode() + b"\r\n")
        self.port.flush()

    def close(self) -> None:
        self.stop.set()
        with contextlib.suppress(Exception):
            self.port.close()
