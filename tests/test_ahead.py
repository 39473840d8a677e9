"""What `_delta_ahead` makes for delta: a failure there costs nothing but the time."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from dfota.package import ahead
from dfota.settings import Workspace
from dfota.state.store import BlobCache, Records


def _work(tmp_path: Path, base: Path) -> ahead.AheadWork:
    boot = tmp_path / "boot.img"
    boot.write_bytes(b"ANDROID!" + bytes(4096))
    return ahead.AheadWork(base, "0" * 64, boot, "0" * 40, Records(tmp_path / "records", "tool"),
                           BlobCache(tmp_path / "patch-cache"), 30.0)


def test_a_missing_or_damaged_base_makes_nothing_and_says_why(tmp_path: Path) -> None:
    missing = tmp_path / "missing.zip"
    said = ahead.make(_work(tmp_path, missing))
    assert said.startswith("made ahead for delta: nothing (") and str(missing) in said
    damaged = tmp_path / "damaged.zip"
    damaged.write_bytes(b"PK\x03\x04 not a zip")
    said = ahead.make(_work(tmp_path, damaged))
    assert said.startswith("made ahead for delta: nothing (") and str(damaged) in said
    assert not (tmp_path / "records").exists()
    assert not (tmp_path / "patch-cache").exists()


def test_delta_code_is_loaded_ahead_only_for_a_target_without_its_package(
        tmp_path: Path) -> None:
    """The task process that runs `_delta_ahead` runs delta next: delta's code is loaded
    there beside targetfiles when the inputs manifest names a target the package summary does
    not (delta will make a package), not when it names the same (delta most likely has
    nothing to do)."""
    ws = Workspace(tmp_path / "out", tmp_path / "state", tmp_path / "archive")
    ws.inputs_manifest.parent.mkdir(parents=True)
    ws.update_summary.parent.mkdir(parents=True)
    ws.inputs_manifest.write_text(json.dumps({"target_version": "01.002@20220715T0930"}))
    ws.update_summary.write_text(json.dumps({"target": "01.002@20220715T0930"}))
    assert not ahead.load_delta_code(ws)
    ws.inputs_manifest.write_text(json.dumps({"target_version": "01.002@20220716T1000"}))
    assert ahead.load_delta_code(ws)
    assert all(module in sys.modules for module in ahead.DELTA_CODE)
    ws.update_summary.unlink()  # no package yet
    assert ahead.load_delta_code(ws)
