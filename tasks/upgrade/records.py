"""The record of each module's run of `doit upgrade`: `upgrade.json` and `upgrade.html` in
`<state>/upgrade/<UTC time>/<device>/`.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path

from dfota.core import atomic
from dfota.settings import Workspace
from dfota.upgrade.module_run import Run


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
