"""What a user has without the tool, run on the same pair: the note's shell procedure (section
2.2.2, command for command) and a sequential loop of Debian's `bsdiff` over every changed file,
with the size of what that loop would ship."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path

SHELL_PROCEDURE = r"""set -e
mkdir -p targetfiles && cd targetfiles
unzip -qK "$SOURCE"
cp -rf "$SDK/target/sdxlemur-boot.img" ./BOOTABLE_IMAGES/boot.img
cp -rf "$SDK/target/abl.elf" ./MULTIFOTA/abl.elf
cd SYSTEM
mv firmware dev ../
rm -rf *
cp -prafR "$SDK/ql-ol-rootfs/"* ./
rm -rf firmware dev
mv ../firmware ../dev ./
cd ..
zip -qry0 ../targetfiles.zip ./*
"""


def loop_inputs(old: Path, new: Path) -> tuple[list[str], list[str]]:
    """(files to diff, files shipped whole) between two extracted targetfiles trees: every
    regular file of `SYSTEM/` that changed, and `boot.img`; new files and changed
    `MULTIFOTA` images whole."""
    diffs: list[str] = []
    whole: list[str] = []
    for top in ("SYSTEM", "BOOTABLE_IMAGES", "MULTIFOTA"):
        for dirpath, _dirs, names in os.walk(new / top):
            for name in names:
                path = Path(dirpath, name)
                rel = path.relative_to(new).as_posix()
                if path.is_symlink() or not path.is_file():
                    continue
                before = old / rel
                if before.is_symlink() or not before.is_file():
                    whole.append(rel)
                elif _differ(before, path):
                    (whole if top == "MULTIFOTA" else diffs).append(rel)
    return sorted(diffs), sorted(whole)


def _differ(a: Path, b: Path) -> bool:
    if a.stat().st_size != b.stat().st_size:
        return True
    return hashlib.sha1(a.read_bytes()).digest() != hashlib.sha1(b.read_bytes()).digest()


@dataclass(frozen=True, slots=True)
class BsdiffLoop:
    """The loop's folder (`old/`, `new/`, `patch/`, `loop.sh`) and what it diffs or ships."""

    folder: Path
    diffs: tuple[str, ...]
    whole: tuple[str, ...]

    @property
    def script(self) -> Path:
        return self.folder / "loop.sh"


def prepare_loop(folder: Path, old_zip: Path, new_zip: Path) -> BsdiffLoop:
    """Extract both zips under `folder` (not timed) and write the loop's script: one
    `bsdiff old new patch` after the other."""
    folder.mkdir()
    for side, zip_path in (("old", old_zip), ("new", new_zip)):
        subprocess.run(["unzip", "-qK", str(zip_path), "-d", str(folder / side)], check=True)
    diffs, whole = loop_inputs(folder / "old", folder / "new")
    script = ["set -e"]
    for rel in diffs:
        (folder / "patch" / rel).parent.mkdir(parents=True, exist_ok=True)
        script.append(f"bsdiff {shlex.quote(str(folder / 'old' / rel))} "
                      f"{shlex.quote(str(folder / 'new' / rel))} "
                      f"{shlex.quote(str(folder / 'patch' / rel))}.p")
    (folder / "loop.sh").write_text("\n".join(script) + "\n")
    return BsdiffLoop(folder, tuple(diffs), tuple(whole))


@dataclass(frozen=True, slots=True)
class LoopSize:
    """What the loop would ship: its patches and the whole files, and both deflated."""

    diffs: int
    whole: int  # how many files shipped whole
    patch_bytes: int
    whole_bytes: int
    zipped: int


def loop_size(loop: BsdiffLoop) -> LoopSize:
    """The loop's patches and whole files, zipped as a package would be; the folder is
    removed."""
    patches = sorted((loop.folder / "patch").rglob("*.p"))
    patch_bytes = sum(p.stat().st_size for p in patches)
    whole_bytes = sum((loop.folder / "new" / rel).stat().st_size for rel in loop.whole)
    zipped = loop.folder / "loop.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in patches:
            zf.write(p, "patch/" + p.relative_to(loop.folder / "patch").as_posix())
        for rel in loop.whole:
            zf.write(loop.folder / "new" / rel, rel)
    size = LoopSize(len(loop.diffs), len(loop.whole), patch_bytes, whole_bytes,
                    zipped.stat().st_size)
    shutil.rmtree(loop.folder)
    return size
