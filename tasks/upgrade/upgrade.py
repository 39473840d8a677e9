"""`doit upgrade`: send a proven package to modules and see each through its DFOTA upgrade.

Per module (several in parallel, one thread each):

1. pre-flight on the live module, before anything is pushed: its version file equal, byte
   for byte, to the package's (else the module would answer 505), free space in /usrdata
   for twice the package plus the note's margin (else 550), the AT port free (note 4.2.1
   step 1; `--kill-port-users` ends what holds it);
2. `adb push`, `sync`, the md5 on the module compared with the local one (or, with
   `--transfer url`, the package checked at the `doit serve` address the module will fetch);
3. AT+QFOTADL on /dev/smd7 or /dev/smd11 through `adb shell`, or on the USB AT port;
4. the URCs followed through the reboot into recovery and back (TCP serials are connected
   again), ipth_config_dfs.txt read (the URC wins when they differ), last_log's error lines
   on failure, the target version confirmed on success.

Exit codes (`dfota upgrade`; `doit` exits 1 for any failure): 0 upgraded and confirmed,
6 refused before anything was pushed, 7 the module reported a failure (or the package
arrived damaged, or it came back with another version), 8 lost contact or timed out; with
several modules, the worst of them (8 over 7 over 6). A JSON and an HTML record of each
module's run go to `<state>/upgrade/<UTC time>/<device>/`.
"""

from __future__ import annotations

import html
import json
import re
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from dfota.build.archive import recorded_sha256
from dfota.core import atomic
from dfota.core.errors import (
    EXIT_FAILED,
    EXIT_LOST,
    EXIT_OK,
    EXIT_REFUSED,
    DfotaError,
    UpgradeFailed,
    shown_path,
    worst_upgrade,
)
from dfota.formats.version import parse_version
from dfota.settings import MB, Workspace
from dfota.state.store import DigestCache
from dfota.upgrade import at_port
from dfota.upgrade.adb_client import Adb, AdbTimeout, connected_devices, is_tcp
from dfota.upgrade.proven import ProvenPackage, proven_packages

PUSH_PATH = "/usrdata/cache/ufs/update.zip"  # note 4.1.1
VERSION_PATH = "/etc/quectel-project-version"
RESULT_FILE = "/usrdata/cache/fota/ipth_config_dfs.txt"
LAST_LOG = "/usrdata/cache/recovery/last_log"
MARGIN_WITHIN, MARGIN_ACROSS = 60 * MB, 110 * MB  # note 4.1: usrdata within / across baselines
RESULT_CODES = {"IP_PREVIOUS_UPDATE_SUCCESSFUL": 0, "IP_PREVIOUS_UPDATE_CHECK_FILE_FAILED": 510,
                "IP_PREVIOUS_UPDATE_IN_PROGRESS": 502}
_ERROR_LINE = re.compile(r"E\d{3}|error|fail|abort", re.IGNORECASE)
AFTER_REBOOT_GRACE = 15.0  # seconds to wait for END on /dev/smdN once the module is back


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


@dataclass
class Chosen:
    path: Path
    sha256: str
    size: int
    source: str
    target: str  # "" when unknown (a package not proven here)
    proven: bool
    url_path: str = ""


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


# --- choosing the package -------------------------------------------------------------------


def _package_version(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read("quectel-project-version")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise Stop(EXIT_REFUSED, f"{shown_path(path)}: not a DFOTA package (no "
                                 f"quectel-project-version: {exc})") from None


def choose_package(ws: Workspace, options: UpgradeOptions, module_key: str,  # noqa: PLR0913
                   proven: Sequence[ProvenPackage], run: Run, digests: DigestCache) -> Chosen:
    if options.package is not None:
        sha256 = recorded_sha256(digests, options.package)
        known = next((p for p in proven if p.sha256 == sha256), None)
        source = parse_version(_package_version(options.package),
                               str(options.package)).key
        chosen = Chosen(options.package, sha256, options.package.stat().st_size,
                        known.source if known else source, known.target if known else "",
                        known is not None, known.url_path if known else "")
    else:
        known = next((p for p in proven if p.source == module_key), None)
        if known is None:
            raise Stop(EXIT_REFUSED, f"no proven package from {module_key}, the version the "
                                     f"module runs: make one with `doit delta --base "
                                     f"{module_key}` and `doit verify`")
        chosen = Chosen(known.path, known.sha256, known.size, known.source, known.target,
                        True, known.url_path)
    if not chosen.proven:
        if not options.unverified:
            raise Stop(EXIT_REFUSED, f"{shown_path(chosen.path)}: not a package `doit verify` "
                                     "proved in this workspace; --unverified sends it anyway")
        run.line(f"warning: {shown_path(chosen.path)} was not proven by `doit verify`; sent "
                 "because of --unverified")
    if options.transfer == "url" and not chosen.url_path:
        raise Stop(EXIT_REFUSED, "--transfer url serves only proven packages; this one is not")
    return chosen


# --- the steps ------------------------------------------------------------------------------


def _module_version(adb: Adb) -> tuple[bytes, str]:
    data = adb.pull(VERSION_PATH)
    if data is None:
        raise Stop(EXIT_LOST, f"cannot read {VERSION_PATH} from the module")
    try:
        return data, parse_version(data, VERSION_PATH).key
    except DfotaError as exc:
        raise Stop(EXIT_REFUSED, f"the module's {exc}") from None


def _baseline(key: str) -> str:
    return key.split("_", 1)[0]


def preflight(adb: Adb, options: UpgradeOptions, chosen: Chosen, module_bytes: bytes,  # noqa: PLR0913
              module_key: str, run: Run) -> None:
    shipped = _package_version(chosen.path)
    if shipped != module_bytes:
        same = " (the same key, other bytes)" if chosen.source == module_key else ""
        raise Stop(EXIT_REFUSED, f"505 before pushing: the module runs {module_key}, the "
                                 f"package was made for {chosen.source}{same}; "
                                 "quectel-project-version differs")
    run.line(f"version {module_key} matches the package's source")
    free = _free_usrdata(adb)
    across = chosen.target and _baseline(chosen.target) != _baseline(chosen.source)
    margin = MARGIN_ACROSS if across else MARGIN_WITHIN
    need = 2 * chosen.size + margin
    if free < need:
        basis = "across baselines" if across else "within a baseline"
        raise Stop(EXIT_REFUSED, f"550 before pushing: /usrdata has {free / MB:.1f} MB free, "
                                 f"the upgrade needs {need / MB:.1f} MB (twice the package's "
                                 f"{chosen.size / MB:.1f} MB plus the note's {margin // MB} MB "
                                 f"{basis})")
    run.line(f"/usrdata: {free / MB:.1f} MB free, {need / MB:.1f} MB needed")
    if options.at in at_port.ADB_PORTS:
        _free_port(adb, options, run)


def _free_usrdata(adb: Adb) -> int:
    for line in adb.shell("df -k /usrdata").splitlines():
        fields = line.split()
        if fields and fields[-1] == "/usrdata" and len(fields) >= 4 and fields[-3].isdigit():
            return int(fields[-3]) * 1024
    raise Stop(EXIT_LOST, "the module's `df -k /usrdata` said nothing readable")


def _free_port(adb: Adb, options: UpgradeOptions, run: Run) -> None:
    device = f"/dev/{options.at}"
    pids = [p for p in adb.shell(f"fuser {device}").split() if p.isdigit()]
    if not pids:
        return
    names = {pid: (adb.shell(f"cat /proc/{pid}/comm").strip() or "?") for pid in pids}
    held = ", ".join(f"{shown_path(name)} (pid {pid})" for pid, name in names.items())
    if not options.kill_port_users:
        raise Stop(EXIT_REFUSED, f"{device} is held by {held}: stop it, or "
                                 "--kill-port-users ends it (note 4.2.1 step 1)")
    for pid in pids:
        adb.shell(f"kill {pid}")
    run.line(f"{device} was held by {held}: killed (--kill-port-users)")


def push(adb: Adb, options: UpgradeOptions, chosen: Chosen, run: Run) -> str:
    """Send the package; the URL or path the module is told to upgrade from."""
    if options.transfer == "url":
        url = options.serve_url.rstrip("/") + chosen.url_path
        _check_served(url, chosen)
        run.line(f"the module downloads {url}")
        return url
    started = time.monotonic()
    try:
        complaint = adb.push(chosen.path, PUSH_PATH, options.push_timeout)
    except AdbTimeout:
        raise Stop(EXIT_LOST, f"adb push did not finish in {options.push_timeout:g} s "
                              "(--push-timeout)") from None
    if complaint:
        raise Stop(EXIT_FAILED, f"adb push failed: {shown_path(complaint)}")
    adb.shell("sync")
    there = adb.shell(f"md5sum {PUSH_PATH}").split()
    here = _md5(chosen.path)
    if not there or there[0].lower() != here:
        adb.shell(f"rm -f {PUSH_PATH}")
        raise Stop(EXIT_FAILED, f"the package arrived damaged: md5 {there[0] if there else '?'}"
                                f" on the module, {here} here; removed, nothing started")
    run.line(f"pushed {chosen.size} bytes to {PUSH_PATH} in "
             f"{time.monotonic() - started:.1f} s, md5 {here} checked on the module")
    return PUSH_PATH


def _md5(path: Path) -> str:
    import hashlib

    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_served(url: str, chosen: Chosen) -> None:
    import ssl

    request = urllib.request.Request(url, method="HEAD")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # checked by ETag
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            etag = resp.headers.get("ETag", "").strip('"')
    except (urllib.error.URLError, OSError) as exc:
        raise Stop(EXIT_REFUSED, f"{url}: not served ({shown_path(str(exc))}); is "
                                 "`doit serve` running there?") from None
    if etag != chosen.sha256:
        raise Stop(EXIT_REFUSED, f"{url}: the server has another package (ETag {etag[:12]}, "
                                 f"expected sha256 {chosen.sha256[:12]})")


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


def follow(follower: Follower, adb: Adb, options: UpgradeOptions, run: Run,  # noqa: C901
           on_terminal: bool) -> tuple[int | None, bool]:
    """The URCs up to END: (<err> or None when no END came, whether recovery started)."""
    deadline = time.monotonic() + options.update_timeout
    started, rebooted, mark = False, False, 10
    grace_until: float | None = None
    while True:
        channel = follower.open()
        limit = deadline if grace_until is None else min(deadline, grace_until)
        try:
            line = channel.next_line(limit - time.monotonic())
        except TimeoutError:
            if grace_until is not None and time.monotonic() < deadline:
                run.line(f"no END URC on {channel.name} after the reboot; reading "
                         f"{RESULT_FILE}")
                return None, started
            raise Stop(EXIT_LOST, f"no result within {options.update_timeout:g} s "
                                  "(--update-timeout)") from None
        except at_port.PortLost:
            follower.close()
            if not rebooted:
                run.line("the module rebooted; waiting for it to come back")
            rebooted = True
            wait_back(adb, deadline, run)
            if options.at in at_port.ADB_PORTS:
                grace_until = time.monotonic() + AFTER_REBOOT_GRACE
            continue
        urc = at_port.parse_urc(line)
        if urc is None:
            continue
        if urc.kind == "START":
            started = True
            run.line("update started (START); the module reboots into recovery")
        elif urc.kind == "UPDATING" and urc.value is not None:
            if on_terminal:
                sys.stdout.write(f"\rupgrade: {run.serial}: updating {urc.value:3d} %")
                sys.stdout.flush()
                if urc.value >= 100:
                    sys.stdout.write("\n")
            elif urc.value >= mark:
                run.line(f"updating: {urc.value} %")
                mark = (urc.value // 10 + 1) * 10
        elif urc.kind == "END":
            return urc.value, started


def conclude(adb: Adb, err: int | None, started: bool, chosen: Chosen, options: UpgradeOptions,  # noqa: PLR0913
             deadline: float, run: Run) -> int:
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
    _, key = _module_version(adb)
    run.record["version_after"] = key
    if chosen.target and key != chosen.target:
        raise Stop(EXIT_FAILED, f"END 0, but the module runs {key}, not the target "
                                f"{chosen.target}")
    return EXIT_OK


def upgrade_module(serial: str, ws: Workspace, options: UpgradeOptions,  # noqa: PLR0913
                   proven: Sequence[ProvenPackage], say: Callable[[str], None],
                   on_terminal: bool, digests: DigestCache) -> Run:
    run = Run(serial, say)
    run.record.update({"device": serial, "started": _now(), "transfer": options.transfer,
                       "at": options.at})
    adb = Adb(serial)
    follower = Follower(adb, options)
    code, message = EXIT_LOST, ""
    try:
        if adb.state() != "device":
            adb.connect()
        state = adb.state()
        if state != "device":
            raise Stop(EXIT_LOST, f"not reachable over adb ({shown_path(state)})")
        module_bytes, module_key = _module_version(adb)
        run.record["version_before"] = module_key
        chosen = choose_package(ws, options, module_key, proven, run, digests)
        run.record["package"] = {"path": str(chosen.path), "sha256": chosen.sha256,
                                 "size": chosen.size, "source": chosen.source,
                                 "target": chosen.target, "proven": chosen.proven}
        run.line(f"package {shown_path(chosen.path)} ({chosen.source} -> "
                 f"{chosen.target or '?'})")
        preflight(adb, options, chosen, module_bytes, module_key, run)
        if options.at not in at_port.ADB_PORTS:
            try:
                follower.open()  # the USB port is taken before anything is pushed
            except at_port.PortLost as exc:
                raise Stop(EXIT_REFUSED, f"the AT port is not usable: "
                                         f"{shown_path(str(exc))}") from None
        target = push(adb, options, chosen, run)
        follower.open()
        trigger(follower, target, run)
        deadline = time.monotonic() + options.update_timeout
        err, started = follow(follower, adb, options, run, on_terminal)
        code = conclude(adb, err, started, chosen, options, deadline, run)
        message = f"upgraded to {run.record.get('version_after')} and confirmed"
    except Stop as stop:
        code, message = stop.code, str(stop)
    except AdbTimeout as exc:
        code, message = EXIT_LOST, str(exc)
    except DfotaError as exc:  # a package or file that cannot be used: nothing was sent
        code, message = EXIT_REFUSED, str(exc)
    finally:
        follower.close()
    run.code = code
    run.record.update({"finished": _now(), "exit_code": code, "result": message,
                       "lines": run.lines})
    run.line(message if code == EXIT_OK else f"error: {message} (exit {code})")
    return run


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _folder_name(serial: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", serial) or "_"


def write_records(ws: Workspace, runs: Sequence[Run], stamp: str) -> Path:
    folder = ws.state_dir / "upgrade" / stamp
    for run in runs:
        place = folder / _folder_name(run.serial)
        place.mkdir(parents=True, exist_ok=True)
        atomic.write_text(place / "upgrade.json",
                          json.dumps(run.record, indent=1, sort_keys=True) + "\n")
        atomic.write_text(place / "upgrade.html", _html(run.record))
    return folder


def _html(record: dict[str, object]) -> str:
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(record[k]))}</td></tr>"
                   for k in ("device", "version_before", "version_after", "exit_code",
                             "result", "err", "started", "finished") if k in record)
    printed = record.get("lines")
    lines = html.escape("\n".join(str(x) for x in printed)) if isinstance(printed, list) else ""
    device = html.escape(str(record.get("device")))
    return (f"<!doctype html><meta charset='utf-8'><title>upgrade {device}"
            "</title><style>body{font-family:sans-serif}th{text-align:left;padding-right:1em}"
            f"</style><h1>DFOTA upgrade</h1><table>{rows}</table><h2>What it printed</h2>"
            f"<pre>{lines}</pre>\n")


def run_upgrade(ws: Workspace, options: UpgradeOptions, say: Callable[[str], None]) -> int:
    """Upgrade every module named; the worst exit code. Raises UpgradeFailed when not 0."""
    check_options(options)
    devices = list(dict.fromkeys(options.devices))
    if "all" in devices:
        devices = connected_devices()
        if not devices:
            raise DfotaError("no module connected: `adb devices` lists none online")
    lock = threading.Lock()

    def said(line: str) -> None:
        with lock:
            say(line)

    on_terminal = sys.stdout.isatty() and len(devices) == 1
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    with ws.open_state() as state, ThreadPoolExecutor(max_workers=len(devices)) as pool:
        proven = proven_packages(ws, state.digests)
        runs = list(pool.map(lambda s: upgrade_module(s, ws, options, proven, said,
                                                      on_terminal, state.digests), devices))
    folder = write_records(ws, runs, stamp)
    worst = worst_upgrade(r.code for r in runs)
    ok = sum(1 for r in runs if r.code == EXIT_OK)
    summary = f"upgrade: {ok} of {len(runs)} module(s) upgraded; records in {folder}"
    if worst != EXIT_OK:
        raise UpgradeFailed(worst, summary)
    said(summary)
    return worst

