"""The faults `doit twin --fault` injects into the simulated module, and their parsing."""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from dfota.core.errors import DfotaError, shown_path

FAULTS = ("power-cut:N", "low-space:MB", "wrong-version", "corrupt-download",
          "modified-file:PATH", "slow-link:KBPS", "port-busy:NAME", "cut-download:KB")


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


# fault name -> (its field, the type of its number)
_COUNTED: dict[str, tuple[str, type]] = {
    "power-cut": ("power_cut", int), "low-space": ("low_space_mb", float),
    "slow-link": ("slow_link_kbps", float), "cut-download": ("cut_download_kb", float)}
# fault name -> (its field, its value from the argument; None: the argument does not fit)
_WORDED: dict[str, tuple[str, Callable[[str], object]]] = {
    "wrong-version": ("wrong_version", lambda arg: None if arg else True),
    "corrupt-download": ("corrupt_download", lambda arg: None if arg else True),
    "modified-file": ("modified_file",
                      lambda arg: posixpath.normpath(arg) if arg.startswith("/") else None),
    "port-busy": ("port_busy", lambda arg: arg or None),
}


def _number(value: str, name: str, arg: str, kind: type) -> object:
    try:
        got = kind(arg)
    except ValueError:
        raise DfotaError(f"--fault {value}: {name} needs a number ({name}:N)") from None
    if got <= 0:
        raise DfotaError(f"--fault {value}: the number must be above 0")
    return got


def _fault(value: str) -> tuple[str, object]:
    """One `--fault` value: (the field it sets, its value)."""
    name, _, arg = value.partition(":")
    if name in _COUNTED:
        field, kind = _COUNTED[name]
        return field, _number(value, name, arg, kind)
    field, read = _WORDED.get(name, ("", lambda arg: None))
    got = read(arg)
    if got is None:
        raise DfotaError(f"--fault {shown_path(value)}: unknown fault (known: "
                         f"{', '.join(FAULTS)})")
    return field, got


def parse_faults(values: Sequence[str]) -> Faults:
    """`--fault` values; a bad one stops the command with one line."""
    found = dict(_fault(str(value)) for value in values)
    return Faults(**found)  # type: ignore[arg-type]  # each value is of its field's type
