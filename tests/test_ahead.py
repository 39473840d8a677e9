"""What `_delta_ahead` makes for delta: a failure there costs nothing but the time."""

from __future__ import annotations

from pathlib import Path

from dfota.package import ahead
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
