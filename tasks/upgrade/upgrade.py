"""`doit upgrade`: send a proven package to modules and see each through its DFOTA upgrade.

Per module (several in parallel, one thread each), each step in its own module:

1. pre-flight on the live module, before anything is pushed (`dfota.upgrade.preflight`): its
   version file equal, byte for byte, to the package's (else the module would answer 505),
   free space in /usrdata for twice the package plus the note's margin (else 550), the AT
   port free (note 4.2.1 step 1; `--kill-port-users` ends what holds it);
2. `adb push`, `sync`, the md5 on the module compared with the local one (or, with
   `--transfer url`, the package checked at the `doit serve` address the module will fetch:
   `dfota.upgrade.transfer`);
3. AT+QFOTADL on /dev/smd7 or /dev/smd11 through `adb shell`, or on the USB AT port;
4. the URCs followed through the reboot into recovery and back (TCP serials are connected
   again), ipth_config_dfs.txt read (the URC wins when they differ), last_log's error lines
   on failure, the target version confirmed on success (3 and 4: `dfota.upgrade.fotadl`).

Exit codes (`dfota upgrade`; `doit` exits 1 for any failure): 0 upgraded and confirmed,
6 refused before anything was pushed, 7 the module reported a failure (or the package
arrived damaged, or it came back with another version), 8 lost contact or timed out; with
several modules, the worst of them (8 over 7 over 6). A JSON and an HTML record of each
module's run go to `<state>/upgrade/<UTC time>/<device>/` (`dfota.upgrade.records`).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

from dfota.core.errors import (
    EXIT_LOST,
    EXIT_OK,
    EXIT_REFUSED,
    DfotaError,
    UpgradeFailed,
    shown_path,
    worst_upgrade,
)
from dfota.settings import Workspace
from dfota.upgrade import at_port
from dfota.upgrade.adb_client import Adb, AdbTimeout, connected_devices
from dfota.upgrade.fotadl import Follower, conclude, follow, trigger
from dfota.upgrade.module_run import Chosen, Packages, Run, Stop, UpgradeOptions, check_options
from dfota.upgrade.preflight import choose_package, module_version, preflight
from dfota.upgrade.proven import proven_packages
from dfota.upgrade.records import write_records
from dfota.upgrade.transfer import push


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _reach(adb: Adb) -> None:
    if adb.state() != "device":
        adb.connect()
    state = adb.state()
    if state != "device":
        raise Stop(EXIT_LOST, f"not reachable over adb ({shown_path(state)})")


def _record_package(run: Run, chosen: Chosen) -> None:
    run.record["package"] = {"path": str(chosen.path), "sha256": chosen.sha256,
                             "size": chosen.size, "source": chosen.source,
                             "target": chosen.target, "proven": chosen.proven}
    run.line(f"package {shown_path(chosen.path)} ({chosen.source} -> "
             f"{chosen.target or '?'})")


def _take_usb_port(follower: Follower) -> None:
    """The USB AT port is taken before anything is pushed."""
    if follower.options.at in at_port.ADB_PORTS:
        return
    try:
        follower.open()
    except at_port.PortLost as exc:
        raise Stop(EXIT_REFUSED, f"the AT port is not usable: "
                                 f"{shown_path(str(exc))}") from None


def _upgrade(adb: Adb, follower: Follower, packages: Packages, run: Run,
             on_terminal: bool) -> int:
    """The steps, from the module's version to its confirmed target; Stop ends them early."""
    options = follower.options
    _reach(adb)
    version = module_version(adb)
    run.record["version_before"] = version.key
    chosen = choose_package(packages, options, version.key, run)
    _record_package(run, chosen)
    preflight(adb, options, chosen, version, run)
    _take_usb_port(follower)
    target = push(adb, options, chosen, run)
    follower.open()
    trigger(follower, target, run)
    deadline = time.monotonic() + options.update_timeout
    ending = follow(follower, run, on_terminal)
    return conclude(adb, ending, chosen, deadline, run)


def upgrade_module(serial: str, options: UpgradeOptions, packages: Packages,
                   say: Callable[[str], None], on_terminal: bool) -> Run:
    run = Run(serial, say)
    run.record.update({"device": serial, "started": _now(), "transfer": options.transfer,
                       "at": options.at})
    adb = Adb(serial)
    follower = Follower(adb, options)
    code, message = EXIT_LOST, ""
    try:
        code = _upgrade(adb, follower, packages, run, on_terminal)
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
        packages = Packages(proven_packages(ws, state.digests), state.digests)
        runs = list(pool.map(lambda s: upgrade_module(s, options, packages, said, on_terminal),
                             devices))
    folder = write_records(ws, runs, stamp)
    worst = worst_upgrade(r.code for r in runs)
    ok = sum(1 for r in runs if r.code == EXIT_OK)
    summary = f"upgrade: {ok} of {len(runs)} module(s) upgraded; records in {folder}"
    if worst != EXIT_OK:
        raise UpgradeFailed(worst, summary)
    said(summary)
    return worst
