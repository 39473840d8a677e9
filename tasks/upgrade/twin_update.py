"""AT+QFOTADL on the twin: the package pushed or downloaded (resuming a cut download), the
note's pre-checks (505 and the package format without recovery, 550 for /usrdata), START, the
reboot into recovery (the ADB connection drops), the host model of the updater
(`dfota.device.updater`) applied to the flash with UPDATING URCs, up to 5 retries (a power cut
resumes, as FAQ 6.5 says), ipth_config_dfs.txt and last_log, the reboot back (ADB returns) and
END.
"""

from __future__ import annotations

import hashlib
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from dfota.core.errors import shown_path
from dfota.device.zip_reader import DeviceZip, ZipFormatError
from dfota.upgrade import adb_wire, at_port
from dfota.upgrade.twin_system import VERSION_PATH, ModuleSystem, damaged

RESULT_FILE = "/usrdata/cache/fota/ipth_config_dfs.txt"
LAST_LOG = "/usrdata/cache/recovery/last_log"
DOWNLOAD = "/usrdata/cache/fota/ipth_package.bin"
RETRIES = 5  # FAQ 6.5: at most 5 retries, then the package is removed
RESULT_TEXT = {0: "IP_PREVIOUS_UPDATE_SUCCESSFUL", 510: "IP_PREVIOUS_UPDATE_CHECK_FILE_FAILED"}
IN_PROGRESS = "IP_PREVIOUS_UPDATE_IN_PROGRESS"  # "fail to write in": any other failure
BOOT_SECONDS = 0.5  # each reboot


class FotaUpdate:
    """The module's side of one AT+QFOTADL at a time. `urc(kind, value)` tells every AT port;
    the ADB listener goes down for each reboot."""

    def __init__(self, system: ModuleSystem, urc: Callable[[str, int | None], None],
                 listener: adb_wire.AdbListener, cafile: str,
                 say: Callable[[str], None]) -> None:
        self.system, self.urc, self.listener, self.cafile, self.say = (
            system, urc, listener, cafile, say)
        self.guard = threading.Lock()
        self.updating = False
        self.downloads_cut = 0

    def start(self, url: str) -> str | None:
        """AT+QFOTADL="<url>": None when accepted (OK), else the reply."""
        with self.guard:
            if self.updating:
                return at_port.ERROR
            self.updating = True
        self.say(f"twin: AT+QFOTADL=\"{shown_path(url)}\"")
        threading.Thread(target=self._update, args=(url,), daemon=True,
                         name="twin update").start()
        return None

    def _update(self, url: str) -> None:
        try:
            code = self._fetch_and_check(url)
            if code is None:
                return
            self.urc("END", code)
        finally:
            with self.guard:
                self.updating = False

    def _fetch_and_check(self, url: str) -> int | None:
        """The package, then the checks made before recovery: an error code ends here
        (no reboot); None: the update ran."""
        time.sleep(0.2)  # the OK goes out before anything else
        if url.startswith(("http://", "https://")):
            fetched = self.download(url)
            if isinstance(fetched, int):
                return fetched
            package = fetched
        else:
            found = self.system.host_path(url)
            if found is None or not found.is_file():
                return 504
            package = found
        data = package.read_bytes()
        try:
            archive = DeviceZip(data)
        except ZipFormatError:
            package.unlink(missing_ok=True)  # 504: "which will thus be deleted"
            return 504
        largest = max((e.size for e in archive.entries), default=0)
        if len(data) + largest >= self.system.usrdata_free():  # restriction 6 of chapter 3
            return 550
        from dfota.device.updater import precheck

        pre = precheck(package, self.system.device)
        if pre is not None:
            return pre.code
        self.urc("START", None)
        self._recovery(package)
        return None

    # --- the download -----------------------------------------------------------------------
    def download(self, url: str) -> Path | int:
        """Download to ipth_package.bin, resuming a cut download with Range and If-Range;
        the package's .md5 beside it, when served, must match (else 503)."""
        host = self.system.host_path(DOWNLOAD)
        assert host is not None
        part, etag_file = host.with_name(host.name + ".part"), host.with_name(host.name + ".etag")
        host.parent.mkdir(parents=True, exist_ok=True)
        context = ssl.create_default_context(cafile=self.cafile or None)
        for _attempt in range(3):
            headers = {}
            if part.is_file() and etag_file.is_file():
                headers = {"Range": f"bytes={part.stat().st_size}-",
                           "If-Range": etag_file.read_text().strip()}
            try:
                request = urllib.request.Request(url, headers=headers)
                with urllib.request.urlopen(request, timeout=30, context=context) as resp:
                    if resp.status == 200 or not part.is_file():
                        part.write_bytes(b"")
                    etag_file.write_text(resp.headers.get("ETag", ""))
                    done = self._copy(resp, part)
                if not done:
                    continue  # cut: resume
                break
            except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
                self.say(f"twin: download failed: {shown_path(str(exc))}")
                return 504
        else:
            return 504
        data = part.read_bytes()
        if self.system.faults.corrupt_download:
            data = damaged(data)
        expected = self._served_md5(url + ".md5", context)
        if expected and hashlib.md5(data).hexdigest() != expected:
            part.unlink(missing_ok=True)
            return 503
        host.write_bytes(data)
        part.unlink(missing_ok=True)
        etag_file.unlink(missing_ok=True)
        return host

    def _copy(self, resp: BinaryIO, part: Path) -> bool:
        """Append the response to `part`; False when the link was cut (a fault)."""
        limit = self.system.faults.cut_download_kb
        cut_at = int(limit * 1024) if limit and self.downloads_cut == 0 else None
        written = 0
        with part.open("ab") as out:
            while True:
                chunk = resp.read(16 * 1024)
                if not chunk:
                    return True
                if cut_at is not None and written + len(chunk) >= cut_at:
                    out.write(chunk[:cut_at - written])
                    self.downloads_cut += 1
                    self.say(f"twin: download cut after {cut_at} bytes (fault)")
                    return False
                out.write(chunk)
                written += len(chunk)
                time.sleep(self.system.ack_delay(len(chunk)))

    def _served_md5(self, url: str, context: ssl.SSLContext) -> str:
        try:
            with urllib.request.urlopen(url, timeout=30, context=context) as resp:
                head: bytes = resp.read(200)
            return head.decode("ascii", "replace").split()[0].lower()
        except (urllib.error.URLError, OSError, IndexError, ssl.SSLError):
            return ""

    # --- recovery ---------------------------------------------------------------------------
    def _recovery(self, package: Path) -> None:
        """Reboot into recovery, run the updater (retrying), write the results, boot back."""
        from dfota.device.updater import PowerLoss, apply_package, load_package

        time.sleep(0.3)  # START reaches the readers
        self.say("twin: rebooting into recovery")
        self.listener.down()
        time.sleep(BOOT_SECONDS)
        pkg = load_package(package)
        system = self.system
        log: list[str] = []
        code, attempt, power_cut = 502, 0, system.faults.power_cut
        while attempt <= RETRIES:
            attempt += 1
            reported = -1
            try:
                result = apply_package(pkg, system.device, power_loss_at=power_cut)
            except PowerLoss as lost:
                self.say(f"twin: {lost}; the module boots into recovery again")
                log.append(f"run {attempt}: {lost}")
                system.flash.save(system.device)
                power_cut = None
                time.sleep(BOOT_SECONDS)
                continue
            for percent in result.progress:
                if int(percent) > reported:
                    reported = int(percent)
                    self.urc("UPDATING", reported)
            log.extend(result.log)
            code = result.code
            if code == 0:
                break
            run = "the update" if attempt == 1 else f"retry {attempt - 1} of {RETRIES}"
            log.append(f"E{code}: {run} failed: {result.message}")
        system.flash.save(system.device)
        system.write(RESULT_FILE, RESULT_TEXT.get(code, IN_PROGRESS) + "\n")
        if code != 0:
            system.write(LAST_LOG, "\n".join(log) + "\n")
            package.unlink(missing_ok=True)  # FAQ 6.5: the package is removed after the last
        self.say("twin: rebooting into normal mode")
        time.sleep(BOOT_SECONDS)
        self._boot_back(code)

    def _boot_back(self, code: int) -> None:
        self.listener.up()
        version = self.system.device.read_in("/system", VERSION_PATH) or b""
        self.say(f"twin: back in normal mode, version file {version.splitlines()[-1:]}")
        self.urc("END", code)
