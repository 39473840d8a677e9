"""`doit twin`: a simulated module that the real `adb` client and `doit upgrade` talk to.

Its flash lives under a folder (`--root`, `dfota.upgrade.twin_flash`); it is made from an
archived version on first use. What it answers (documented in the README, "Upgrading modules"):

- ADB over TCP (`dfota.upgrade.adb_wire`): the sync service (push and pull under /usrdata, pull
  of any file: `dfota.upgrade.twin_system`) and the legacy `shell:` service with the busybox
  commands `doit upgrade` uses (`dfota.upgrade.twin_shell`);
- /dev/smd7 and /dev/smd11 as AT ports, and with `--at-pty` a pty standing for the USB AT port
  (`dfota.upgrade.twin_ports`);
- AT+QFOTADL, through the reboot into recovery and back (`dfota.upgrade.twin_update`);
- the faults `--fault` injects (`dfota.upgrade.twin_faults`).

This module puts the pieces together and runs them until the command is stopped.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dfota.build.archive import ArchivedVersion
from dfota.core.errors import DfotaError, shown_path
from dfota.upgrade import adb_wire
from dfota.upgrade.twin_faults import Faults
from dfota.upgrade.twin_flash import Flash
from dfota.upgrade.twin_ports import AtPorts
from dfota.upgrade.twin_shell import Busybox
from dfota.upgrade.twin_system import ModuleSystem
from dfota.upgrade.twin_update import FotaUpdate

BANNER = ("device::ro.product.name=rg520n;ro.product.model=RG520N_twin;"
          "ro.product.device=sdxlemur;features=")


@dataclass(frozen=True)
class TwinOptions:
    """What `doit twin` is told."""

    root: Path  # the flash's folder
    address: str  # HOST:PORT to answer ADB on
    faults: Faults
    at_pty: bool = False
    cafile: str = ""  # the CA bundle https downloads are checked with ("": the system's)
    version: ArchivedVersion | None = None  # the version to make the flash from, when named


class Twin:
    """The simulated module: a flash, ADB, the AT ports and the updater."""

    def __init__(self, flash: Flash, host: str, port: int, options: TwinOptions,
                 say: Callable[[str], None]) -> None:
        self.system = ModuleSystem(flash, options.faults)
        self.ports = AtPorts(self.fotadl, options.at_pty, say)
        self.stopped = threading.Event()
        self.listener = adb_wire.AdbListener(host, port, BANNER, self.open_service,
                                             self.system.ack_delay)
        self.update = FotaUpdate(self.system, self.ports.urc, self.listener, options.cafile,
                                 say)
        self.shell = Busybox(self.system, self.ports, self.stopped)

    def fotadl(self, url: str) -> str | None:
        return self.update.start(url)

    def open_service(self, name: str) -> adb_wire.Service | None:
        if name.startswith("sync:"):
            return lambda stream: adb_wire.sync_session(
                stream, self.system, lambda size: time.sleep(self.system.ack_delay(size)))
        if name.startswith("shell:"):
            command = name[len("shell:"):]
            return lambda stream: self.shell.run(stream, command)
        return None

    def start(self) -> None:
        self.listener.up()

    def stop(self) -> None:
        self.stopped.set()
        self.listener.down()


def parse_address(text: str, what: str = "--adb") -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise DfotaError(f"{what} {shown_path(text)}: give HOST:PORT (e.g. 127.0.0.1:5600)")
    return host.strip("[]"), int(port)


def open_flash(options: TwinOptions, say: Callable[[str], None]) -> Flash:
    """The flash under `options.root`, made from the named version when it holds another."""
    flash, version = Flash(options.root), options.version
    if version is not None and (not flash.exists() or flash.version() != version.key):
        say(f"twin: writing version {version.key} to the flash in {options.root}")
        flash.create(version.zip_path, version.key)
    elif not flash.exists():
        raise DfotaError("holds no module flash yet: name the version to make it from "
                         "(doit twin --version KEY)", options.root)
    return flash


def run_twin(options: TwinOptions, say: Callable[[str], None],
             stop: threading.Event | None = None) -> None:
    """Make the flash when needed, listen, and serve until SIGTERM/SIGINT (or `stop`)."""
    host, port = parse_address(options.address)
    twin = Twin(open_flash(options, say), host, port, options, say)
    stop = stop or threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            twin.start()
        except OSError as exc:
            raise DfotaError(f"--adb {options.address}: cannot listen ({exc.strerror})") \
                from None
        say(f"twin ready: adb connect {host}:{twin.listener.port}")
        if twin.ports.pty is not None:
            say(f"twin AT port: {twin.ports.pty.path}")
        while not stop.wait(0.5):
            pass
    finally:
        twin.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        say("twin: stopped")
