"""Before anything is pushed: the package chosen for a module (the proven one from the version
it runs, or the one named with --package), and the pre-flight on the live module: its version
file equal, byte for byte, to the package's (else the module would answer 505), free space in
/usrdata for twice the package plus the note's margin (else 550), and the AT port free (note
4.2.1 step 1; `--kill-port-users` ends what holds it).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from dfota.build.archive import recorded_sha256
from dfota.core.errors import EXIT_LOST, EXIT_REFUSED, DfotaError, shown_path
from dfota.formats.version import parse_version
from dfota.settings import MB
from dfota.upgrade import at_port
from dfota.upgrade.adb_client import Adb
from dfota.upgrade.module_run import Chosen, ModuleVersion, Packages, Run, Stop, UpgradeOptions

VERSION_PATH = "/etc/quectel-project-version"
MARGIN_WITHIN, MARGIN_ACROSS = 60 * MB, 110 * MB  # note 4.1: usrdata within / across baselines


def _package_version(path: Path) -> bytes:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.read("quectel-project-version")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise Stop(EXIT_REFUSED, f"{shown_path(path)}: not a DFOTA package (no "
                                 f"quectel-project-version: {exc})") from None


def _named_package(packages: Packages, package: Path) -> Chosen:
    sha256 = recorded_sha256(packages.digests, package)
    known = next((p for p in packages.proven if p.sha256 == sha256), None)
    source = parse_version(_package_version(package), str(package)).key
    return Chosen(package, sha256, package.stat().st_size, known.source if known else source,
                  known.target if known else "", known is not None,
                  known.url_path if known else "")


def choose_package(packages: Packages, options: UpgradeOptions, module_key: str,
                   run: Run) -> Chosen:
    if options.package is not None:
        chosen = _named_package(packages, options.package)
    else:
        known = next((p for p in packages.proven if p.source == module_key), None)
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


def module_version(adb: Adb) -> ModuleVersion:
    data = adb.pull(VERSION_PATH)
    if data is None:
        raise Stop(EXIT_LOST, f"cannot read {VERSION_PATH} from the module")
    try:
        return ModuleVersion(data, parse_version(data, VERSION_PATH).key)
    except DfotaError as exc:
        raise Stop(EXIT_REFUSED, f"the module's {exc}") from None


def _baseline(key: str) -> str:
    return key.split("_", 1)[0]


def preflight(adb: Adb, options: UpgradeOptions, chosen: Chosen, version: ModuleVersion,
              run: Run) -> None:
    shipped = _package_version(chosen.path)
    if shipped != version.text:
        same = " (the same key, other bytes)" if chosen.source == version.key else ""
        raise Stop(EXIT_REFUSED, f"505 before pushing: the module runs {version.key}, the "
                                 f"package was made for {chosen.source}{same}; "
                                 "quectel-project-version differs")
    run.line(f"version {version.key} matches the package's source")
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
