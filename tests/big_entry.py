"""A pair whose source and target hold one big file of zeros, which the package ships whole
(it is on the fullota list): the source a targetfiles.zip holding it deflated (about a
thousandth of its size), the target an SDK whose rootfs holds it sparse. Nothing of it is
ever held in memory here: the zip entry is written in pieces, the rootfs file by extending
an empty one."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from dfota.formats.zipio import FIXED_DATE_TIME

BIG_DIR = "usr/share/zeros"
BIG_FILE = f"{BIG_DIR}/zeros.bin"  # under SYSTEM/ and the rootfs
_PIECE = 1 << 20
SAMPLE_LISTS = Path(__file__).resolve().parent.parent / "sample_sdk" / "config"


def write_source(base: Path, dest: Path, size: int) -> None:
    """`base` with SYSTEM/<BIG_FILE> (`size` zeros, deflated) and its folder added."""
    with zipfile.ZipFile(base) as src, zipfile.ZipFile(dest, "w") as out:
        for info in src.infolist():
            out.writestr(info, src.read(info))
        folder = zipfile.ZipInfo(f"SYSTEM/{BIG_DIR}/", FIXED_DATE_TIME)
        folder.create_system, folder.external_attr = 3, (0o40755 << 16) | 0x10
        out.writestr(folder, b"")
        info = zipfile.ZipInfo(f"SYSTEM/{BIG_FILE}", FIXED_DATE_TIME)
        info.create_system, info.external_attr = 3, 0o100644 << 16
        info.compress_type, info.file_size = zipfile.ZIP_DEFLATED, size
        piece = bytes(_PIECE)
        with out.open(info, "w") as entry:
            for left in range(size, 0, -_PIECE):
                entry.write(piece if left >= _PIECE else piece[:left])


def make_big_pair(sample: Path, where: Path, size: int, *, max_entry_mb: int | None = None
                  ) -> Path:
    """A project folder at `where` (its pyproject.toml names the SDK, the lists and the
    source) for the sample's next SDK and base with the big file of `size` bytes."""
    sdk = where / "sdk"
    shutil.copytree(sample / "ql-ol-extsdk", sdk, symlinks=True)
    zeros = sdk / "ql-ol-rootfs" / BIG_FILE
    zeros.parent.mkdir(parents=True, exist_ok=True)
    with open(zeros, "xb") as out:
        out.truncate(size)
    os.chmod(zeros.parent, 0o755)
    os.chmod(zeros, 0o644)
    config = where / "config"
    shutil.copytree(SAMPLE_LISTS, config)
    with open(config / "quectel_fullota_filelist.txt", "a") as lists:
        lists.write(f"SYSTEM/{BIG_FILE}\n")
    write_source(sample / "firmware" / "upgrade" / "targetfiles.zip", where / "source.zip",
                 size)
    room = 512 + 2 * -(-size // (1 << 20))  # the usual volume, and the file twice
    limit = "" if max_entry_mb is None else f"max_entry_mb = {max_entry_mb}\n"
    (where / "pyproject.toml").write_text(
        f'[tool.dfota]\nsdk = "sdk"\nconfig = "config"\nsource = "source.zip"\n{limit}'
        f"\n[tool.doit.tasks.delta]\nsystem_size_mb = {room}\n")
    return where
