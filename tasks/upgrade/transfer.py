"""The package to the module: `adb push`, `sync` and the md5 on the module compared with the
local one; or, with `--transfer url`, the package checked at the `doit serve` address the
module will download it from.
"""

from __future__ import annotations

import hashlib
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

from dfota.core.errors import EXIT_FAILED, EXIT_LOST, EXIT_REFUSED, shown_path
from dfota.upgrade.adb_client import Adb, AdbTimeout
from dfota.upgrade.module_run import Chosen, Run, Stop, UpgradeOptions

PUSH_PATH = "/usrdata/cache/ufs/update.zip"  # note 4.1.1


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
    digest = hashlib.md5()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _check_served(url: str, chosen: Chosen) -> None:
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
