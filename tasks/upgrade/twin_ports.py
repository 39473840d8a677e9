"""The twin's AT ports: /dev/smd7 and /dev/smd11 inside the module (read with `cat`, written
with `echo >`), and with `--at-pty` a pty standing for the USB AT port. A line written to a
port is answered on it; URCs go to every port.
"""

from __future__ import annotations

import contextlib
import os
import queue
import termios
import threading
import tty
from collections import deque
from collections.abc import Callable

from dfota.upgrade import at_port


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


class AtPorts:
    """Every AT port of the module and the commands they answer; `fotadl(url)` starts an
    update (None: accepted, else the reply)."""

    def __init__(self, fotadl: Callable[[str], str | None], at_pty: bool,
                 say: Callable[[str], None]) -> None:
        self.say = say
        self.channels = {name: AtChannel(name) for name in at_port.ADB_PORTS}
        self.interpreter = at_port.AtInterpreter(fotadl, ["Quectel", "RG520N",
                                                          "Revision: twin"])
        self.pty = PtyPort(self.at_line) if at_pty else None

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
