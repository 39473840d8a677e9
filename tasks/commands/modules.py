"""The tasks that deal with modules: `twin` (a simulated module), `upgrade` (modules over adb
and their AT port) and `serve` (the proven packages over HTTP(S)); none writes the workspace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dfota.build.archive import archive_of
from dfota.commands.action import TaskDict, always_run
from dfota.commands.configure import Configuration
from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.settings import Workspace, resolve_path


def twin(conf: Configuration) -> TaskDict:
    """run a simulated module (flash under --root) that adb and doit upgrade reach"""
    ws = conf.workspace
    return always_run("twin", ws.log_dir,
                      lambda log: _twin(ws, conf.device_options["twin"], log))


def upgrade(conf: Configuration) -> TaskDict:
    """upgrade modules over adb and their AT port with proven packages"""
    ws = conf.workspace
    return always_run("upgrade", ws.log_dir,
                      lambda log: _upgrade(ws, conf.device_options["upgrade"], log))


def serve(conf: Configuration) -> TaskDict:
    """serve the proven packages over HTTP(S) for AT+QFOTADL downloads"""
    ws = conf.workspace
    return always_run("serve", ws.log_dir,
                      lambda log: _serve(ws, conf.device_options["serve"], log))


# below, `options` are a command's settings, each of the type its parameter declares
def _twin(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.upgrade.twin import TwinOptions, run_twin
    from dfota.upgrade.twin_faults import parse_faults

    faults = parse_faults([str(f) for f in options["fault"]])
    if not options["root"]:
        raise DfotaError("name the folder of the module's flash: doit twin --root DIR")
    version = archive_of(ws).find(str(options["version"])) if options["version"] else None
    cafile = str(resolve_path(str(options["cafile"]))) if options["cafile"] else ""
    run_twin(TwinOptions(resolve_path(str(options["root"])), str(options["adb"]), faults,
                         bool(options["at_pty"]), cafile, version), log.say)


def _upgrade(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.upgrade.module_run import UpgradeOptions
    from dfota.upgrade.upgrade import run_upgrade

    package = str(options["package"])
    run_upgrade(ws, UpgradeOptions(
        devices=tuple(str(d) for d in options["device"]),
        package=resolve_path(package) if package else None,
        transfer=str(options["transfer"]), at=str(options["at"]),
        serve_url=str(options["serve_url"]), unverified=bool(options["unverified"]),
        kill_port_users=bool(options["kill_port_users"]),
        push_timeout=float(options["push_timeout"]),
        update_timeout=float(options["update_timeout"])), log.say)


def _serve(ws: Workspace, options: Mapping[str, Any], log: RunLog) -> None:
    from dfota.upgrade.serve import ServeOptions, serve

    cert, key = str(options["cert"]), str(options["key"])
    serve(ws, ServeOptions(str(options["bind"]), int(options["port"]),
                           str(resolve_path(cert)) if cert else "",
                           str(resolve_path(key)) if key else ""), log.say)
