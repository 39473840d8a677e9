"""AT+QFOTADL and what follows: the command on /dev/smd7 or /dev/smd11 through `adb shell`, or
on the USB AT port; the URCs followed through the reboot into recovery and back (TCP serials
are connected again); ipth_config_dfs.txt read (the URC wins when they differ), last_log's
error lines on failure, the target version confirmed on success.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from typing import NoReturn

from dfota.core.errors import EXIT_FAILED, EXIT_LOST, EXIT_OK, EXIT_REFUSED, shown_path
from dfota.upgrade import at_port
from dfota.upgrade.adb_client import Adb, is_tcp
from dfota.upgrade.module_run import Chosen, Run, Stop, UpgradeOptions
from dfota.upgrade.preflight import module_version

RESULT_FILE = "/usrdata/cache/fota/ipth_config_dfs.txt"
LAST_LOG = "/usrdata/cache/recovery/last_log"
RESULT_CODES = {"IP_PREVIOUS_UPDATE_SUCCESSFUL": 0, "IP_PREVIOUS_UPDATE_CHECK_FILE_FAILED": 510,
                "IP_PREVIOUS_UPDATE_IN_PROGRESS": 502}
_ERROR_LINE = re.compile(r"E\d{3}|error|fail|abort", re.IGNORECASE)
AFTER_REBOOT_GRACE = 15.0  # seconds to wait for END on /dev/smdN once the module is back


class Follower:
    """The AT port of one module, reopened through its reboots."""

    def __init__(self, adb: Adb, options: UpgradeOptions) -> None:
        self.adb, self.options = adb, options
        self.channel: at_port.Channel | None = None

    def open(self) -> at_port.Channel:
        if self.channel is None:
            if self.options.at in at_port.ADB_PORTS:
                self.channel = at_port.AdbSmdChannel(self.adb.prefix, self.options.at)
            else:
                self.channel = at_port.SerialChannel(self.options.at)
        return self.channel

    def close(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def drain(self, quiet: float) -> None:
        """Drop what the port says until it has been quiet for `quiet` seconds."""
        channel = self.open()
        while True:
            try:
                channel.next_line(quiet)
            except TimeoutError:
                return

    def command(self, text: str, wait: float) -> str:
        """Send; the module's OK or ERROR ("" when it said nothing in `wait` seconds). URCs
        seen meanwhile are put back for the follower."""
        channel = self.open()
        deadline = time.monotonic() + wait
        channel.send(text)
        while time.monotonic() < deadline:
            try:
                line = channel.next_line(deadline - time.monotonic())
            except TimeoutError:
                break
            if line in (at_port.OK, at_port.ERROR):
                return line
        return ""


def trigger(follower: Follower, target: str, run: Run) -> None:
    try:
        for _ in range(5):
            if follower.command("AT", 2.0) == at_port.OK:
                break
        else:
            raise Stop(EXIT_LOST, f"the AT port {follower.open().name} does not answer AT")
        follower.drain(0.5)  # a late OK to an earlier AT must not pass for this command's
        answer = follower.command(at_port.fotadl(target), 15.0)
    except at_port.PortLost as exc:
        raise Stop(EXIT_REFUSED if follower.options.at.startswith("/") else EXIT_LOST,
                   f"the AT port is not usable: {shown_path(str(exc))}") from None
    if answer == at_port.ERROR:
        raise Stop(EXIT_FAILED, "the module answered ERROR to AT+QFOTADL (command format "
                                "error, or an upgrade already running)")
    if answer != at_port.OK:
        raise Stop(EXIT_LOST, "the module did not answer AT+QFOTADL")
    run.line(f"AT+QFOTADL=\"{shown_path(target)}\": OK")


def wait_back(adb: Adb, deadline: float, run: Run) -> None:
    """Until the module is online over ADB again (a TCP serial is connected again)."""
    while time.monotonic() < deadline:
        state = adb.state()
        if state == "device":
            return
        if is_tcp(adb.serial):
            adb.connect()
            if adb.state() == "device":
                return
        time.sleep(1.0)
    raise Stop(EXIT_LOST, "the module did not come back over ADB in time (--update-timeout)")


# --- the URCs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ending:
    """How the URCs ended: <err> of END (None when no END came), whether recovery started."""

    err: int | None
    started: bool


@dataclass
class _Following:
    deadline: float
    on_terminal: bool
    started: bool = False
    rebooted: bool = False
    mark: int = 10  # the next percent worth a line
    grace_until: float | None = None  # once back from a reboot: how long END may take

    def limit(self) -> float:
        return self.deadline if self.grace_until is None else min(self.deadline,
                                                                   self.grace_until)


def follow(follower: Follower, run: Run, on_terminal: bool) -> Ending:
    """The URCs up to END."""
    options = follower.options
    state = _Following(time.monotonic() + options.update_timeout, on_terminal)
    while True:
        channel = follower.open()
        try:
            line = channel.next_line(state.limit() - time.monotonic())
        except TimeoutError:
            if state.grace_until is not None and time.monotonic() < state.deadline:
                run.line(f"no END URC on {channel.name} after the reboot; reading "
                         f"{RESULT_FILE}")
                return Ending(None, state.started)
            raise Stop(EXIT_LOST, f"no result within {options.update_timeout:g} s "
                                  "(--update-timeout)") from None
        except at_port.PortLost:
            _rebooted(follower, run, state)
            continue
        urc = at_port.parse_urc(line)
        if urc is not None and urc.kind == "END":
            return Ending(urc.value, state.started)
        if urc is not None:
            _progress(urc, run, state)


def _rebooted(follower: Follower, run: Run, state: _Following) -> None:
    """The port went away: the module rebooted. Wait for it and read its port again."""
    follower.close()
    if not state.rebooted:
        run.line("the module rebooted; waiting for it to come back")
    state.rebooted = True
    wait_back(follower.adb, state.deadline, run)
    if follower.options.at in at_port.ADB_PORTS:
        state.grace_until = time.monotonic() + AFTER_REBOOT_GRACE


def _progress(urc: at_port.Urc, run: Run, state: _Following) -> None:
    if urc.kind == "START":
        state.started = True
        run.line("update started (START); the module reboots into recovery")
    elif urc.kind == "UPDATING" and urc.value is not None:
        if state.on_terminal:
            sys.stdout.write(f"\rupgrade: {run.serial}: updating {urc.value:3d} %")
            sys.stdout.flush()
            if urc.value >= 100:
                sys.stdout.write("\n")
        elif urc.value >= state.mark:
            run.line(f"updating: {urc.value} %")
            state.mark = (urc.value // 10 + 1) * 10


# --- the result -----------------------------------------------------------------------------


def conclude(adb: Adb, ending: Ending, chosen: Chosen, deadline: float, run: Run) -> int:
    err, started = ending.err, ending.started
    if started or err is None:
        wait_back(adb, deadline, run)
    written = adb.pull(RESULT_FILE) if started or err is None else None
    file_text = written.decode("utf-8", "replace").strip() if written else ""
    from_file = RESULT_CODES.get(file_text.splitlines()[0] if file_text else "")
    run.record["ipth_config_dfs"] = file_text
    if err is None:
        if from_file is None:
            raise Stop(EXIT_LOST, f"no END URC and no readable {RESULT_FILE}")
        err = from_file
        run.line(f"{RESULT_FILE}: {shown_path(file_text)} (taken as <err> {err})")
    elif from_file is not None and (from_file == 0) != (err == 0):
        run.line(f"warning: {RESULT_FILE} says {shown_path(file_text)}, the URC says {err}: "
                 "the URC wins")
    run.record["err"] = err
    if err != 0:
        _failed(adb, err, started, run)
    key = module_version(adb).key
    run.record["version_after"] = key
    if chosen.target and key != chosen.target:
        raise Stop(EXIT_FAILED, f"END 0, but the module runs {key}, not the target "
                                f"{chosen.target}")
    return EXIT_OK


def _failed(adb: Adb, err: int, started: bool, run: Run) -> NoReturn:
    """The module reported <err>: last_log's error lines when recovery ran, then Stop."""
    if started:
        log = adb.pull(LAST_LOG)
        found = [ln for ln in (log or b"").decode("utf-8", "replace").splitlines()
                 if _ERROR_LINE.search(ln)]
        # the last error lines, each once (the retries repeat them)
        lines = list(reversed(dict.fromkeys(reversed(found))))
        for line in lines[-4:]:
            run.line(f"last_log: {shown_path(line)}")
        run.record["last_log_errors"] = lines[-20:]
    run.line(f"END {err}: {at_port.meaning(err)}; what to do: {at_port.advice(err)}")
    raise Stop(EXIT_FAILED, f"the module reported {err}: {at_port.meaning(err)}")
