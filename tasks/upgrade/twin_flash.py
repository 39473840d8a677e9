"""The twin's flash under a folder (`doit twin --root`): `system/` (the files of the running
system, `/`), `system.json` (every entry's type, mode, owner and link target: owners and links
do not live on the host's disk), `partitions/<name>.img` (the boot and minor partitions),
`usrdata/` (the module's /usrdata) and `twin.json` (the version it was made from).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.device.fs import Device


class Flash:
    """The module's flash under `root` (see the module's docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def record(self) -> Path:
        return self.root / "twin.json"

    @property
    def usrdata(self) -> Path:
        return self.root / "usrdata"

    def exists(self) -> bool:
        return self.record.is_file()

    def version(self) -> str:
        return str(json.loads(self.record.read_text("utf-8")).get("version", ""))

    def create(self, zip_path: Path, key: str) -> None:
        from dfota.formats.filelists import NO_LISTS
        from dfota.formats.zipio import ZipSource
        from dfota.proof.host_device import device_from_targetfiles, minor_partitions

        with ZipSource(zip_path) as src:
            device, _ = device_from_targetfiles(src, minor_partitions(src, NO_LISTS))
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in ("system", "partitions", "system.json"):
            target = self.root / folder
            if target.is_dir():
                shutil.rmtree(target)
        self.save(device)
        for sub in ("cache/ufs", "cache/fota", "cache/recovery"):
            (self.usrdata / sub).mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps({"version": key}) + "\n", "utf-8")

    def save(self, device: Device) -> None:
        """Write the device's /system and partitions, replacing what was there."""
        fresh = self.root / ".system-new"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        meta: dict[str, list[object]] = {}
        for rel, entry in device.entries("/system").items():
            meta[rel] = [entry.kind, entry.mode, entry.uid, entry.gid, entry.link or ""]
            path = fresh / rel
            if entry.kind == DIR:
                path.mkdir(parents=True, exist_ok=True)
            elif entry.kind == FILE:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(device.host_read("/system/" + rel) or b"")
        old = self.root / ".system-old"
        shutil.rmtree(old, ignore_errors=True)
        if (self.root / "system").exists():
            os.replace(self.root / "system", old)
        os.replace(fresh, self.root / "system")
        shutil.rmtree(old, ignore_errors=True)
        (self.root / "system.json").write_text(json.dumps(meta, indent=0, sort_keys=True),
                                               "utf-8")
        parts = self.root / "partitions"
        parts.mkdir(exist_ok=True)
        for name, partition in device.partitions.items():
            (parts / f"{name}.img").write_bytes(partition.data)

    def load(self) -> Device:
        meta = json.loads((self.root / "system.json").read_text("utf-8"))
        entries: dict[str, tuple[str, int, int, int, bytes | str]] = {}
        for rel, (kind, mode, uid, gid, link) in meta.items():
            content: bytes | str = ((self.root / "system" / rel).read_bytes()
                                    if kind == FILE else link if kind == SYMLINK else b"")
            entries[rel] = (kind, mode, uid, gid, content)
        partitions = {p.name.removesuffix(".img"): p.read_bytes()
                      for p in sorted((self.root / "partitions").glob("*.img"))}
        return Device.from_system(entries, partitions)
