"""The one-pass stored zip writer: the bytes of `write_zip`, its sha256 as written, members
copied from a layout zip by the kernel only when they would be the same bytes."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from dfota.core.errors import DfotaError
from dfota.formats.zipio import (
    ZipItem,
    ZipSource,
    bytes_item,
    dir_item,
    link_item,
    member_item,
    path_item,
    write_zip,
)
from dfota.formats.zipwrite import Layout, Written, write_stored_zip


def _sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def _inputs(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    """A folder of files, and a zip (written by Info-ZIP, deflated) to take members from."""
    files = {f"f{i:03d}.bin": os.urandom(100 + i * 37) for i in range(40)}
    files["big.bin"] = os.urandom(5 << 20)  # above the size read whole
    folder = tmp_path / "files"
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)
    other = tmp_path / "other"
    (other / "RADIO").mkdir(parents=True)
    (other / "RADIO" / "modem.bin").write_bytes(b"modem" * 4000)
    (other / "RADIO" / "filesmap").write_text("modem.bin modem\n")
    subprocess.run(["zip", "-qr9", str(tmp_path / "vendor.zip"), "RADIO"], cwd=other,
                   check=True)
    return folder, files


def _items(folder: Path, files: dict[str, bytes], vendor: Path) -> list[ZipItem]:
    items: list[ZipItem] = [dir_item("SYSTEM", 0o755), link_item("SYSTEM/sh", "busybox"),
                            bytes_item("META/notes.txt", b"notes\n"), dir_item("META", 0o755)]
    items += [path_item(f"SYSTEM/{n}", folder / n, 0o644, _sha1(d)) for n, d in files.items()]
    items += [member_item(n, vendor, n, 0o644) for n in ("RADIO/modem.bin", "RADIO/filesmap")]
    items.append(dir_item("RADIO", 0o755))
    return items


def _write(dest: Path, items: list[ZipItem], vendor: Path,
           layout: Layout | None = None) -> Written:
    with ZipSource(vendor) as src:
        return write_stored_zip(dest, items, layout=layout, sources={vendor: src})


def test_the_bytes_are_write_zips_and_the_sha256_is_of_them(tmp_path: Path) -> None:
    folder, files = _inputs(tmp_path)
    vendor = tmp_path / "vendor.zip"
    items = _items(folder, files, vendor)
    write_zip(tmp_path / "old.zip", items)
    written = _write(tmp_path / "new.zip", items, vendor)
    data = (tmp_path / "new.zip").read_bytes()
    assert data == (tmp_path / "old.zip").read_bytes()
    assert written.sha256 == hashlib.sha256(data).hexdigest() and written.size == len(data)
    assert written.sha1s[f"SYSTEM/{'big.bin'}"] == _sha1(files["big.bin"])
    with zipfile.ZipFile(tmp_path / "new.zip") as zf:
        assert zf.testzip() is None
        assert _sha1(zf.read("RADIO/modem.bin")) == written.sha1s["RADIO/modem.bin"]
    assert written.traffic.copied == 0 and written.traffic.bytes_copied == 0
    assert len(written.traffic.written) == len(items)


def test_a_change_rewrites_only_what_changed_and_gives_the_zip_made_from_scratch(
        tmp_path: Path) -> None:
    folder, files = _inputs(tmp_path)
    vendor = tmp_path / "vendor.zip"
    first = _write(tmp_path / "first.zip", _items(folder, files, vendor), vendor)
    changed = {**files, "f007.bin": files["f007.bin"][::-1]}
    (folder / "f007.bin").write_bytes(changed["f007.bin"])
    items = _items(folder, changed, vendor)
    items.append(bytes_item("META/new.txt", b"added\n"))
    os.chmod(folder / "f011.bin", 0o600)  # a mode is not in the local header: still copied
    items = [path_item(i.name, i.source_path, 0o600, i.sha1)
             if i.name == "SYSTEM/f011.bin" and i.source_path else i for i in items]
    # the vendor zip's members, their sha1s known (as an archived source's are): copied
    items = [dataclasses.replace(i, sha1=first.sha1s[i.name]) if i.source_zip else i
             for i in items]
    (folder / "big.bin").write_bytes(b"gone")  # copied from the layout: never read
    with ZipSource(tmp_path / "first.zip") as previous:
        again = _write(tmp_path / "again.zip", items, vendor, Layout(previous, first.sha1s))
    (folder / "big.bin").write_bytes(files["big.bin"])
    scratch = _write(tmp_path / "scratch.zip", items, vendor)
    assert (tmp_path / "again.zip").read_bytes() == (tmp_path / "scratch.zip").read_bytes()
    assert again.sha256 == scratch.sha256 and again.sha1s == scratch.sha1s
    traffic = again.traffic
    assert sorted(traffic.written) == ["META/new.txt", "SYSTEM/f007.bin"]
    assert traffic.copied == len(items) - 2
    assert traffic.bytes_read == len(changed["f007.bin"])
    assert traffic.bytes_hashed == len(changed["f007.bin"])
    assert traffic.bytes_copied > 5 << 20


def test_a_layout_member_whose_recorded_sha1_differs_is_written_not_copied(
        tmp_path: Path) -> None:
    folder, files = _inputs(tmp_path)
    vendor = tmp_path / "vendor.zip"
    items = _items(folder, files, vendor)
    first = _write(tmp_path / "first.zip", items, vendor)
    wrong = {**first.sha1s, "SYSTEM/f001.bin": "0" * 40}
    with ZipSource(tmp_path / "first.zip") as previous:
        again = _write(tmp_path / "again.zip", items, vendor, Layout(previous, wrong))
    # and the vendor zip's members, whose sha1s are not known: read and hashed
    assert again.traffic.written == ["RADIO/filesmap", "RADIO/modem.bin", "SYSTEM/f001.bin"]
    assert (tmp_path / "again.zip").read_bytes() == (tmp_path / "first.zip").read_bytes()


def test_a_file_changed_since_it_was_hashed_is_refused(tmp_path: Path) -> None:
    folder, files = _inputs(tmp_path)
    vendor = tmp_path / "vendor.zip"
    (folder / "f003.bin").write_bytes(b"other bytes")
    with pytest.raises(DfotaError, match="changed while the zip was being written"):
        _write(tmp_path / "z.zip", _items(folder, files, vendor), vendor)
