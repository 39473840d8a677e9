"""From package to module: `doit upgrade` with the real adb client against `doit twin`, and
`doit serve` for AT+QFOTADL downloads, on the sample chain built in a project folder.

The adb server runs on a private port (ANDROID_ADB_SERVER_PORT) and is stopped at the end;
twins listen on free ports outside adb's emulator range (5555-5585).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfota.build.archive import Archive
from dfota.build.targetfiles import BOOT_IMAGE, system_tree
from dfota.core.errors import EXIT_FAILED, EXIT_LOST, EXIT_REFUSED, worst_upgrade
from dfota.formats.filelists import lists_in
from dfota.formats.zipio import ZipSource
from dfota.package.mode import Part
from dfota.package.plan import expected_system
from dfota.proof.host_device import tree_differences
from dfota.upgrade.at_port import parse_urc
from dfota.upgrade.serve import parse_range
from dfota.upgrade.twin_faults import parse_faults
from dfota.upgrade.twin_flash import Flash
from tests.test_configuration import BASE_KEY, NEXT_KEY, Project
from tests.workspace import PROJECT, SAMPLE_LISTS, Run

pytestmark = pytest.mark.skipif(shutil.which("adb") is None, reason="Debian's adb is missing "
                                "(.ci/setup installs it)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert not 5555 <= port <= 5585
    return port


class Env:
    """The sample chain in a project folder, and an adb server of its own."""

    def __init__(self, project: Project, adb_port: int) -> None:
        self.project = project
        self.root = project.root
        self.env = {**os.environ, "PYTHONPATH": str(PROJECT),
                    "ANDROID_ADB_SERVER_PORT": str(adb_port)}
        self.count = 0

    def command(self, tool: str, *argv: str) -> list[str]:
        self.count += 1  # each process its own doit database: twins run beside the rest
        module = "dfota.cli" if tool == "dfota" else "doit"
        return [sys.executable, "-m", module, "-f", str(PROJECT / "dodo.py"), "-d",
                str(self.root), "--db-file", str(self.root / f".doit-{self.count}.db"), *argv]

    def upgrade(self, *argv: str) -> Run:
        done = subprocess.run(self.command("dfota", "upgrade", *argv), cwd=self.root,
                              env=self.env, capture_output=True, text=True, timeout=120,
                              check=False)
        return Run(done.returncode, done.stdout, done.stderr)

    def start(self, *argv: str, ready: str) -> tuple[subprocess.Popen[str], list[str]]:
        proc = subprocess.Popen(self.command("doit", *argv), cwd=self.root, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith(ready):
                return proc, lines
        proc.kill()
        raise AssertionError("\n".join(lines))


@pytest.fixture(scope="module")
def env(sample_sdk: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    project = Project(tmp_path_factory.mktemp("upgrade"), sample_sdk)
    project.configure(f'sdk = "{project.sdk}"\nconfig = "{SAMPLE_LISTS}"')
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    adb_port = free_port()
    yield Env(project, adb_port)
    subprocess.run(["adb", "-P", str(adb_port), "kill-server"], capture_output=True,
                   timeout=30, check=False)


class Twin:
    def __init__(self, env: Env, name: str, *argv: str) -> None:
        self.root = env.root / "twins" / name
        self.port = free_port()
        self.serial = f"127.0.0.1:{self.port}"
        self.proc, self.lines = env.start(
            "twin", "--version", BASE_KEY, "--root", str(self.root), "--adb", self.serial,
            *argv, ready="twin ready:")
        self.pty = ""
        if "--at-pty" in argv:
            assert self.proc.stdout is not None
            line = self.proc.stdout.readline()
            self.pty = line.split("twin AT port: ", 1)[1].strip()
        assert f"twin ready: adb connect {self.serial}" in self.lines

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=30)
        assert self.proc.returncode == 0, out
        return out

    def version(self) -> str:
        text = Flash(self.root).load().read_in("/system", "/etc/quectel-project-version")
        assert text is not None
        return text.decode()


@pytest.fixture
def twins(env: Env) -> Iterator[list[Twin]]:
    started: list[Twin] = []
    yield started
    for twin in started:
        if twin.proc.poll() is None:
            twin.stop()


def start(env: Env, twins: list[Twin], name: str, *argv: str) -> Twin:
    twin = Twin(env, name, *argv)
    twins.append(twin)
    return twin


def assert_flash_is_the_target(env: Env, twin: Twin) -> None:
    """The twin's flash on disk: every entry of the target (type, mode, owner, content, link)
    and its partitions, as `doit verify` expects them."""
    out = env.root / "out"
    summary = json.loads((out / "update.json").read_text())
    archive = Archive(env.root / "archive")
    base = archive.find(BASE_KEY).zip_path
    with ZipSource(base) as src, ZipSource(out / "targetfiles.zip") as tgt:
        expected = expected_system(system_tree(src), system_tree(tgt),
                                   frozenset(Part(m) for m in summary["mode"]),
                                   lists_in(SAMPLE_LISTS))
        boot = hashlib.sha1(tgt.read(BOOT_IMAGE)).hexdigest()
    device = Flash(twin.root).load()
    assert tree_differences(device.entries("/system"), expected) == []
    for path, entry in expected.items():
        on_disk = twin.root / "system" / path
        if entry.kind == "file":
            assert hashlib.sha1(on_disk.read_bytes()).hexdigest() == entry.sha1, path
    assert hashlib.sha1((twin.root / "partitions" / "boot.img").read_bytes()).hexdigest() \
        == boot


def pushed(twin: Twin) -> list[str]:
    folder = twin.root / "usrdata" / "cache"
    return sorted(p.name for p in folder.rglob("*") if p.is_file())


# --- the whole loop ---------------------------------------------------------------------------


@pytest.mark.slow
def test_two_twins_upgraded_in_one_command(env: Env, twins: list[Twin]) -> None:
    one, two = start(env, twins, "one"), start(env, twins, "two")
    # neither the twins nor a server take the workspace's lock: a writer still runs
    assert env.project.doit("prune", "--keep", "5").returncode == 0
    run = env.upgrade("--device", one.serial, "--device", two.serial, "--update-timeout", "60")
    assert run.returncode == 0, run.stdout + run.stderr
    for twin in (one, two):
        lines = [line for line in run.stdout.splitlines() if f" {twin.serial}: " in line]
        assert any("md5" in line and "checked on the module" in line for line in lines)
        assert any("update started (START)" in line for line in lines)
        assert any(line.endswith("updating: 100 %") for line in lines)
        assert lines[-1].endswith(f"upgraded to {NEXT_KEY} and confirmed")
        assert_flash_is_the_target(env, twin)
        assert (twin.root / "usrdata/cache/fota/ipth_config_dfs.txt").read_text() \
            == "IP_PREVIOUS_UPDATE_SUCCESSFUL\n"
    assert "upgrade: 2 of 2 module(s) upgraded" in run.stdout
    records = sorted((env.root / "build" / "upgrade").glob("*/*/upgrade.json"))
    assert {json.loads(r.read_text())["exit_code"] for r in records} == {0}
    assert len(records) == 2 and all(r.with_suffix(".html").is_file() for r in records)
    # the modules now run the target: nothing proven starts there
    again = env.upgrade("--device", one.serial)
    assert again.returncode == EXIT_REFUSED
    assert f"no proven package from {NEXT_KEY}, the version the module runs: make one with " \
        f"`doit delta --base {NEXT_KEY}` and `doit verify`" in again.stdout


@pytest.mark.slow
def test_505_and_550_are_refused_before_anything_is_pushed(env: Env,
                                                          twins: list[Twin]) -> None:
    wrong = start(env, twins, "wrong", "--fault", "wrong-version")
    full = start(env, twins, "full", "--fault", "low-space:10")
    run = env.upgrade("--device", wrong.serial, "--device", full.serial,
                      "--package", str(env.root / "out" / "update.zip"))
    assert run.returncode == EXIT_REFUSED, run.stdout + run.stderr
    assert (f"{wrong.serial}: error: 505 before pushing: the module runs "
            "RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001@20000101T0000, the package was made "
            f"for {BASE_KEY}; quectel-project-version differs (exit 6)") in run.stdout
    assert re.search(rf"{re.escape(full.serial)}: error: 550 before pushing: /usrdata has "
                     r"10\.0 MB free, the upgrade needs 60\.\d MB \(twice the package's 0\.1 MB "
                     r"plus the note's 60 MB within a baseline\) \(exit 6\)", run.stdout)
    assert pushed(wrong) == pushed(full) == []


@pytest.mark.slow
def test_a_file_changed_on_the_module_gives_510_and_its_last_log(env: Env,
                                                                 twins: list[Twin]) -> None:
    twin = start(env, twins, "modified", "--fault", "modified-file:/bin/busybox")
    run = env.upgrade("--device", twin.serial, "--update-timeout", "60")
    assert run.returncode == EXIT_FAILED, run.stdout + run.stderr
    assert re.search(r"last_log: .*E510", run.stdout)
    assert "END 510: file verification failed during the upgrade" in run.stdout
    assert "error: the module reported 510" in run.stdout
    assert (twin.root / "usrdata/cache/fota/ipth_config_dfs.txt").read_text() \
        == "IP_PREVIOUS_UPDATE_CHECK_FILE_FAILED\n"
    assert "Package Time: 2022-06-22,15:50" in twin.version()  # nothing written


@pytest.mark.slow
def test_a_power_cut_during_the_update_is_resumed(env: Env, twins: list[Twin]) -> None:
    twin = start(env, twins, "power", "--fault", "power-cut:20")
    run = env.upgrade("--device", twin.serial, "--update-timeout", "60")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "power lost after step 20" in twin.stop()
    assert_flash_is_the_target(env, twin)


@pytest.mark.slow
def test_a_damaged_transfer_is_never_started(env: Env, twins: list[Twin]) -> None:
    twin = start(env, twins, "corrupt", "--fault", "corrupt-download")
    run = env.upgrade("--device", twin.serial)
    assert run.returncode == EXIT_FAILED, run.stdout + run.stderr
    assert "error: the package arrived damaged: md5" in run.stdout
    assert pushed(twin) == []


@pytest.mark.slow
def test_a_slow_link_times_out(env: Env, twins: list[Twin]) -> None:
    twin = start(env, twins, "slow", "--fault", "slow-link:16")
    run = env.upgrade("--device", twin.serial, "--push-timeout", "1.5")
    assert run.returncode == EXIT_LOST, run.stdout + run.stderr
    assert "error: adb push did not finish in 1.5 s (--push-timeout) (exit 8)" in run.stdout


@pytest.mark.slow
def test_a_busy_at_port_is_named_or_freed(env: Env, twins: list[Twin]) -> None:
    twin = start(env, twins, "busy", "--fault", "port-busy:atfwd_daemon")
    run = env.upgrade("--device", twin.serial)
    assert run.returncode == EXIT_REFUSED, run.stdout + run.stderr
    assert "/dev/smd7 is held by atfwd_daemon (pid 817): stop it, or --kill-port-users ends " \
        "it (note 4.2.1 step 1)" in run.stdout
    assert pushed(twin) == []
    run = env.upgrade("--device", twin.serial, "--kill-port-users", "--update-timeout", "60")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "killed (--kill-port-users)" in run.stdout


@pytest.mark.slow
def test_an_unproven_package_needs_unverified(env: Env, twins: list[Twin]) -> None:
    copy = env.root / "copy.zip"  # the same entries in other bytes: not what verify proved
    with zipfile.ZipFile(env.root / "out" / "update.zip") as src, \
            zipfile.ZipFile(copy, "w") as dst:
        dst.comment = b"repacked"
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    twin = start(env, twins, "unproven")
    run = env.upgrade("--device", twin.serial, "--package", str(copy))
    assert run.returncode == EXIT_REFUSED, run.stdout + run.stderr
    assert f"error: {copy}: not a package `doit verify` proved in this workspace; " \
        "--unverified sends it anyway (exit 6)" in run.stdout
    assert pushed(twin) == []
    run = env.upgrade("--device", twin.serial, "--package", str(copy), "--unverified",
                      "--update-timeout", "60")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"warning: {copy} was not proven by `doit verify`; sent because of --unverified" \
        in run.stdout
    assert_flash_is_the_target(env, twin)


@pytest.mark.slow
def test_all_connected_modules_over_smd11(env: Env, twins: list[Twin]) -> None:
    twin = start(env, twins, "all")
    subprocess.run(["adb", "connect", twin.serial], env=env.env, capture_output=True,
                   timeout=30, check=True)
    run = env.upgrade("--device", "all", "--at", "smd11", "--update-timeout", "60")
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"upgrade: {twin.serial}: AT+QFOTADL=" in run.stdout
    assert_flash_is_the_target(env, twin)


@pytest.mark.slow
def test_the_usb_at_port_with_pyserial(env: Env, twins: list[Twin]) -> None:
    twin = start(env, twins, "usb", "--at-pty")
    run = env.upgrade("--device", twin.serial, "--at", twin.pty, "--update-timeout", "60")
    assert run.returncode == 0, run.stdout + run.stderr
    assert_flash_is_the_target(env, twin)


@pytest.mark.slow
def test_an_unreachable_module_is_lost(env: Env) -> None:
    run = env.upgrade("--device", f"127.0.0.1:{free_port()}")
    assert run.returncode == EXIT_LOST, run.stdout + run.stderr


@pytest.mark.slow
def test_bad_input_is_one_line(env: Env) -> None:
    run = env.upgrade()
    assert run.returncode == 1
    assert run.stderr.strip() == "error: name the modules: doit upgrade --device SERIAL " \
        "(repeat it, or 'all')"
    run = env.upgrade("--device", "x", "--transfer", "ftp")
    assert run.stderr.strip() == "error: --transfer ftp: give adb or url"
    done = subprocess.run(env.command("doit", "twin", "--root", "r", "--fault", "meteor"),
                          cwd=env.root, env=env.env, capture_output=True, text=True,
                          check=False)
    assert "error: --fault meteor: unknown fault (known: power-cut:N" in done.stderr


# --- doit serve -------------------------------------------------------------------------------


def _request(port: int, path: str, method: str = "GET", headers: dict[str, str] | None = None,
             context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = (http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
            if context else http.client.HTTPConnection("127.0.0.1", port, timeout=10))
    conn.request(method, path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


@pytest.mark.slow
def test_serve_http_ranges_and_a_download_by_the_twin(env: Env, twins: list[Twin]) -> None:
    # an unproven package beside the proven one
    folder = env.root / "out" / "deltas" / "x_to_y"
    folder.mkdir(parents=True)
    shutil.copyfile(env.root / "out" / "update.zip", folder / "update.zip")
    summary = json.loads((env.root / "out" / "update.json").read_text())
    (folder / "update.json").write_text(json.dumps({**summary, "source": "OTHER@20200101T0000",
                                                    "verify": {"ok": False}}))
    (folder.parent / "index.json").write_text(json.dumps({"packages": [
        {"folder": "out/deltas/x_to_y", "package": "out/deltas/x_to_y/update.zip",
         "ok": True}]}))
    port = free_port()
    server, lines = env.start("serve", "--port", str(port), ready="serve: ")
    try:
        assert lines[-1] == f"serve: 1 proven package(s) at http://127.0.0.1:{port}/index.json"
        status, _, body = _request(port, "/index.json")
        sources = json.loads(body)["sources"]
        assert status == 200 and list(sources) == [BASE_KEY]
        url = sources[BASE_KEY]["url"]
        path = url.split(str(port), 1)[1]
        data = (env.root / "out" / "update.zip").read_bytes()
        sha256 = hashlib.sha256(data).hexdigest()
        status, head, body = _request(port, path, "HEAD")
        assert (status, head["ETag"], head["Content-Length"], body) == \
            (200, f'"{sha256}"', str(len(data)), b"")
        status, head, body = _request(port, path, headers={"Range": "bytes=100-199"})
        assert (status, head["Content-Range"], body) == \
            (206, f"bytes 100-199/{len(data)}", data[100:200])
        status, _, body = _request(port, path, headers={"Range": "bytes=-10",
                                                        "If-Range": f'"{sha256}"'})
        assert (status, body) == (206, data[-10:])
        status, _, body = _request(port, path, headers={"Range": "bytes=5-",
                                                        "If-Range": '"another"'})
        assert (status, body) == (200, data)
        assert _request(port, path, headers={"Range": f"bytes={len(data)}-"})[0] == 416
        status, _, body = _request(port, path + ".md5")
        assert body.decode().split()[0] == hashlib.md5(data).hexdigest()
        unproven = f"/OTHER@20200101T0000/{NEXT_KEY}/update.zip"
        for wrong in (unproven, "/out/update.zip", "/../out/update.zip", "/"):
            assert _request(port, wrong)[0] == 404, wrong

        # the twin downloads it, its link cut once: resumed with Range and If-Range
        twin = start(env, twins, "http", "--fault", "cut-download:40")
        run = env.upgrade("--device", twin.serial, "--transfer", "url", "--serve-url",
                          f"http://127.0.0.1:{port}", "--update-timeout", "60")
        assert run.returncode == 0, run.stdout + run.stderr
        assert_flash_is_the_target(env, twin)
        assert pushed(twin) == ["ipth_config_dfs.txt", "ipth_package.bin"]

        # a download damaged on the way: the module checks it against the served .md5
        twin = start(env, twins, "damaged", "--fault", "corrupt-download")
        run = env.upgrade("--device", twin.serial, "--transfer", "url", "--serve-url",
                          f"http://127.0.0.1:{port}", "--update-timeout", "60")
        assert run.returncode == EXIT_FAILED, run.stdout + run.stderr
        assert "END 503: MD5 checksum error of the package; what to do: transfer the " \
            "package again" in run.stdout
        assert "Package Time: 2022-06-22,15:50" in twin.version()
    finally:
        server.send_signal(signal.SIGTERM)
        log, _ = server.communicate(timeout=30)
    assert server.returncode == 0
    assert re.search(rf'serve: 127\.0\.0\.1 "GET {re.escape(path)} HTTP/1\.1" 206 '
                     rf'{len(data) - 40 * 1024} bytes', log), log
    assert f'"GET {unproven} HTTP/1.1" 404' in log


@pytest.mark.slow
def test_serve_https_to_the_twin(env: Env, twins: list[Twin], tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    port = free_port()
    server, _ = env.start("serve", "--port", str(port), "--cert", str(cert), "--key", str(key),
                          ready="serve: ")
    try:
        context = ssl.create_default_context(cafile=str(cert))
        status, _, body = _request(port, "/index.json", context=context)
        assert status == 200 and f"https://127.0.0.1:{port}/" in body.decode()
        twin = start(env, twins, "https", "--cafile", str(cert))
        run = env.upgrade("--device", twin.serial, "--transfer", "url", "--serve-url",
                          f"https://127.0.0.1:{port}", "--update-timeout", "60")
        assert run.returncode == 0, run.stdout + run.stderr
        assert_flash_is_the_target(env, twin)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert server.returncode == 0


# --- the pieces -------------------------------------------------------------------------------


@pytest.mark.parametrize("line", ['+QIND: "FOTA","END",510', '+QIND: "FOTA", "END", 510',
                                  '  +QIND:  "FOTA" , "END",510\r'])
def test_both_spellings_of_a_urc_are_read(line: str) -> None:
    urc = parse_urc(line)
    assert urc is not None and (urc.kind, urc.value) == ("END", 510)
    assert parse_urc("OK") is None


def test_byte_ranges() -> None:
    assert parse_range("bytes=0-9", 100) == (0, 9)
    assert parse_range("bytes=90-", 100) == (90, 99)
    assert parse_range("bytes=-5", 100) == (95, 99)
    assert parse_range("bytes=50-500", 100) == (50, 99)
    for bad in ("bytes=100-", "bytes=9-2", "bytes=-", "lines=1-2", "bytes=0-1,5-6"):
        assert parse_range(bad, 100) is None, bad


def test_faults_and_the_worst_exit_code() -> None:
    faults = parse_faults(["power-cut:3", "low-space:12.5", "modified-file:/bin/../bin/sh"])
    assert (faults.power_cut, faults.low_space_mb, faults.modified_file) == (3, 12.5, "/bin/sh")
    with pytest.raises(Exception, match="power-cut needs a number"):
        parse_faults(["power-cut:x"])
    assert worst_upgrade([0, 6, 7]) == 7 and worst_upgrade([7, 8, 6]) == 8
    assert worst_upgrade([]) == 0
