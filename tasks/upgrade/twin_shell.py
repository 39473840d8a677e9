"""The twin's legacy `shell:` service: the busybox commands `doit upgrade` uses (`cat`,
`echo [-e] TEXT > FILE`, `md5sum`, `df -k`, `fuser`, `kill`, `sync`, `rm -f`, `mkdir -p`),
with /dev/smd7 and /dev/smd11 read by `cat` and written by `echo >`. Output goes through a pty,
as the legacy adbd's does (LF becomes CRLF).
"""

from __future__ import annotations

import hashlib
import queue
import shlex
import threading
from collections.abc import Callable
from dataclasses import dataclass

from dfota.upgrade import adb_wire
from dfota.upgrade.twin_ports import AtPorts
from dfota.upgrade.twin_system import ModuleSystem, Process


@dataclass(frozen=True)
class Terminal:
    """The shell's end of an `adb shell` stream."""

    stream: adb_wire.Stream

    def out(self, text: str) -> None:  # the legacy adbd's pty: LF becomes CRLF
        self.stream.write(text.replace("\r\n", "\n").replace("\n", "\r\n").encode())


def _operands(args: list[str]) -> list[str]:
    return [a for a in args if not a.startswith("-")]


class Busybox:
    """The commands of one module; `run` answers one `adb shell` command line."""

    def __init__(self, system: ModuleSystem, ports: AtPorts, stopped: threading.Event) -> None:
        self.system, self.ports, self.stopped = system, ports, stopped

    def run(self, stream: adb_wire.Stream, command: str) -> None:
        term = Terminal(stream)
        if not command.strip():
            term.out("the twin has no interactive shell; give a command\n")
            return
        for part in command.split(";"):
            try:
                words = shlex.split(part)
            except ValueError as exc:
                term.out(f"sh: syntax error: {exc}\n")
                return
            if words:
                self.command(words, term)

    def command(self, words: list[str], term: Terminal) -> None:
        name, args = words[0], words[1:]
        known = COMMANDS.get(name)
        if known is None:
            term.out(f"sh: {name}: not found\n")
        else:
            known(self, args, term)

    def cat(self, args: list[str], term: Terminal) -> None:
        if len(args) == 1 and args[0].startswith("/dev/smd"):
            self.cat_port(args[0], term.stream)
            return
        for path in args:
            try:
                term.out(self.system.read_file(path).decode("utf-8", "replace"))
            except adb_wire.SyncFailure as exc:
                term.out(f"cat: {exc}\n")

    def cat_port(self, device: str, stream: adb_wire.Stream) -> None:
        channel = self.ports.channels.get(device[5:])
        if channel is None:
            stream.write(f"cat: can't open '{device}': No such file or directory\r\n".encode())
            return
        pid = self.system.new_pid()
        gone = threading.Event()
        self.system.processes[pid] = Process(pid, "cat", device, gone.set)
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
            self.system.processes.pop(pid, None)

    def echo(self, args: list[str], term: Terminal) -> None:
        escapes = bool(args) and args[0] == "-e"
        args = args[1:] if escapes else args
        target = None
        if len(args) >= 2 and args[-2] == ">":
            target, args = args[-1], args[:-2]
        text = " ".join(args)
        if escapes:
            text = text.encode("latin-1", "backslashreplace").decode("unicode_escape")
        if target is None:
            term.out(text + "\n")
        elif target.startswith("/dev/smd") and target[5:] in self.ports.channels:
            for line in text.replace("\r", "\n").split("\n"):
                if line.strip():
                    self.ports.at_line(target[5:], line)
        else:
            host = self.system.host_path(target)
            if host is None:
                term.out(f"sh: can't create {target}: Read-only file system\n")
            else:
                host.parent.mkdir(parents=True, exist_ok=True)
                host.write_text(text + "\n")

    def md5sum(self, args: list[str], term: Terminal) -> None:
        for path in args:
            try:
                term.out(f"{hashlib.md5(self.system.read_file(path)).hexdigest()}  {path}\n")
            except adb_wire.SyncFailure as exc:
                term.out(f"md5sum: {exc}\n")

    def df(self, args: list[str], term: Terminal) -> None:
        term.out("Filesystem           1K-blocks      Used Available Use% Mounted on\n")
        for path in _operands(args) or ["/usrdata"]:
            if self.system.host_path(path) is not None:
                free = self.system.usrdata_free() // 1024
                used = self.system.usrdata_used() // 1024
                total = free + used
                term.out(f"{'ubi0:usrdata':<20} {total:>9} {used:>9} {free:>9} "
                         f"{used * 100 // max(total, 1):>3}% /usrdata\n")
            else:
                used = sum(len(n.data) for n in self.system.system_files()) // 1024
                term.out(f"{'ubi0:rootfs':<20} {used + 20480:>9} {used:>9} {20480:>9} "
                         f"{used * 100 // (used + 20480):>3}% /\n")

    def fuser(self, args: list[str], term: Terminal) -> None:
        pids = [str(p.pid) for p in self.system.processes.values() if p.holds in args]
        if pids:
            term.out(" ".join(pids) + "\n")

    def kill(self, args: list[str], term: Terminal) -> None:
        for pid in (int(a) for a in args if a.isdigit()):
            proc = self.system.processes.pop(pid, None)
            if proc is None:
                term.out(f"kill: can't kill pid {pid}: No such process\n")
            else:
                proc.stop()

    def rm(self, args: list[str], term: Terminal) -> None:
        for path in _operands(args):
            host = self.system.host_path(path)
            if host is not None and host.is_file():
                host.unlink()

    def mkdir(self, args: list[str], term: Terminal) -> None:
        for path in _operands(args):
            host = self.system.host_path(path)
            if host is not None:
                host.mkdir(parents=True, exist_ok=True)

    def nothing(self, args: list[str], term: Terminal) -> None:
        """`sync`, `true`, `mount`: nothing to do on the twin."""


COMMANDS: dict[str, Callable[[Busybox, list[str], Terminal], None]] = {
    "cat": Busybox.cat, "echo": Busybox.echo, "md5sum": Busybox.md5sum, "df": Busybox.df,
    "fuser": Busybox.fuser, "kill": Busybox.kill, "rm": Busybox.rm, "mkdir": Busybox.mkdir,
    "sync": Busybox.nothing, "true": Busybox.nothing, "mount": Busybox.nothing,
}
