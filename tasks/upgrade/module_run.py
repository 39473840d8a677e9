"""What one module's run of `doit upgrade` is made of: the options every run follows (checked
before any module is touched), the packages it may send and the one chosen, the module's
version, the lines it prints and the record it keeps, and `Stop`, which ends it with an exit
code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dfota.core.errors import EXIT_OK, DfotaError, shown_path
from dfota.state.store import DigestCache
from dfota.upgrade import at_port
from dfota.upgrade.proven import ProvenPackage


class Stop(Exception):
    """This module's run ends here with `code`."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


@dataclass(frozen=True)
class UpgradeOptions:
    devices: tuple[str, ...]
    package: Path | None = None
    transfer: str = "adb"
    at: str = "smd7"
    serve_url: str = ""
    unverified: bool = False
    kill_port_users: bool = False
    push_timeout: float = 600.0
    update_timeout: float = 1800.0


def check_options(options: UpgradeOptions) -> None:
    """One line for each kind of bad input, before any module is touched."""
    if not options.devices:
        raise DfotaError("name the modules: doit upgrade --device SERIAL (repeat it, or 'all')")
    if options.transfer not in ("adb", "url"):
        raise DfotaError(f"--transfer {shown_path(options.transfer)}: give adb or url")
    if options.transfer == "url" and not options.serve_url.startswith(("http://", "https://")):
        raise DfotaError("--transfer url needs --serve-url http(s)://HOST:PORT, the address "
                         "of a `doit serve` that the modules reach")
    if options.at not in at_port.ADB_PORTS and not options.at.startswith("/"):
        raise DfotaError(f"--at {shown_path(options.at)}: give smd7, smd11 or the USB AT "
                         "port's device (/dev/ttyUSB2)")
    if options.at.startswith("/") and len(options.devices) != 1:
        raise DfotaError(f"--at {shown_path(options.at)}: one USB AT port reaches one module; "
                         "name one --device, or use smd7")
    for name in ("push_timeout", "update_timeout"):
        if getattr(options, name) <= 0:
            raise DfotaError(f"--{name.replace('_', '-')}: must be above 0")
    if options.package is not None and not options.package.is_file():
        raise DfotaError("file not found", options.package)


@dataclass(frozen=True)
class Packages:
    """What a run may send: the workspace's proven packages, and the digest cache that hashes
    a package named with --package."""

    proven: Sequence[ProvenPackage]
    digests: DigestCache


@dataclass
class Chosen:
    path: Path
    sha256: str
    size: int
    source: str
    target: str  # "" when unknown (a package not proven here)
    proven: bool
    url_path: str = ""


@dataclass(frozen=True)
class ModuleVersion:
    """The module's version file: its bytes and its key."""

    text: bytes
    key: str


@dataclass
class Run:
    """One module's run: what it printed and what its record keeps."""

    serial: str
    say: Callable[[str], None]
    record: dict[str, object] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    code: int = EXIT_OK  # the exit code, once done (also in `record`)

    def line(self, text: str) -> None:
        self.lines.append(text)
        self.say(f"upgrade: {self.serial}: {text}")
