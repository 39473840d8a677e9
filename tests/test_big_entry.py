"""Large entries: the chain holds no file whole, so a 2 GiB file passes under an address-space
limit far below its size; the zip limits refuse it with one line when lowered.

The big file's source and target are made on disk (not tmpfs), in pieces, and removed
afterwards (`tests.big_entry`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.big_entry import BIG_FILE, make_big_pair

GIB = 1 << 30
AS_LIMIT = 1 << 30  # bytes of address space each process of the chain may map (ulimit -v)
PROJECT = Path(__file__).resolve().parent.parent


def _on_tmpfs(folder: Path) -> bool:
    """Whether `folder` lies on a RAM file system (its longest mount point's type)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        point = fields[1]
        if str(folder).startswith(point.rstrip("/") + "/") and len(point) > len(best):
            best, kind = point, fields[2]
    return kind in ("tmpfs", "ramfs")


@pytest.fixture
def on_disk(tmp_path: Path) -> Iterator[Path]:
    """An empty folder on disk (the checkout's build/ when the temporary folder is a RAM
    disk), removed afterwards whatever the test did."""
    parent = tmp_path if not _on_tmpfs(tmp_path) else PROJECT / "build"
    parent.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="big-entry-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _dfota(project: Path, *args: str, as_limit: int | None = None
           ) -> subprocess.CompletedProcess[str]:
    """The installed command, run in `project`, each process held to `as_limit` bytes of
    address space (prlimit --as, which the children inherit)."""
    command = [sys.executable, "-c", "import sys; from dfota.cli import main; "
               "sys.exit(main())", *args]
    if as_limit is not None:
        command = ["prlimit", f"--as={as_limit}", *command]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if k != "DFOTA_ORACLE"})


@pytest.mark.slow
def test_a_2_gib_file_passes_the_chain_under_1_gib_of_address_space(
        sample_sdk: Path, on_disk: Path) -> None:
    """A 2 GiB file of zeros in the source (deflated, 7 MB) and the target, shipped whole:
    targetfiles, delta and verify each run under `ulimit -v 1048576` and pass; the package
    carries the file deflated and without ZIP64 (the module's reader takes none)."""
    size = 2 * GIB
    if shutil.disk_usage(on_disk).free < 3 * size + GIB:
        pytest.skip("needs 7 GiB free on disk: the target zip holds the file stored, twice")
    project = make_big_pair(sample_sdk, on_disk, size)
    done = _dfota(project, "targetfiles", "delta", "verify", as_limit=AS_LIMIT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((project / "out" / "update.json").read_text())
    assert summary["verify"]["ok"], summary["verify"]
    assert "power loss at every step" in done.stdout
    with subprocess.Popen(["unzip", "-Zv", str(project / "out" / "update.zip"),
                           f"system/{BIG_FILE}"], stdout=subprocess.PIPE, text=True) as unzip:
        listing, _ = unzip.communicate()
    assert f"{size} bytes" in listing and "Zip64" not in listing, listing
    assert (project / "out" / "update.zip").stat().st_size < size // 500


@pytest.mark.slow
def test_a_lowered_limit_refuses_the_entry_in_one_line(sample_sdk: Path, on_disk: Path
                                                       ) -> None:
    """max_entry_mb below the file: the chain stops at the source with one line naming the
    entry, what it declares and the limit; exit 1, nothing built."""
    size = 3 << 20
    project = make_big_pair(sample_sdk, on_disk, size, max_entry_mb=2)
    done = _dfota(project, "targetfiles", "delta", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert lines == [f"error: {project / 'source.zip'}: entry 'SYSTEM/{BIG_FILE}' declares "
                     f"{size} bytes, over the limit of 2 MiB (max_entry_mb)"]
    assert not (project / "out" / "targetfiles.zip").exists()
    # the same limit given on the command line, and a ratio below the file's
    again = _dfota(project, "targetfiles", "--max-entry-mb", "4", "--max-deflate-ratio", "100")
    assert again.returncode == 1
    assert again.stderr.strip().splitlines()[-1].startswith(
        f"error: {project / 'source.zip'}: entry 'SYSTEM/{BIG_FILE}' declares {size} bytes "
        "that its ")
    assert again.stderr.strip().endswith("cannot hold at a ratio of at most 100:1 "
                                         "(max_deflate_ratio)")
    wrong = _dfota(project, "targetfiles", "--max-deflate-ratio", "2000")
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == ("error: --max-deflate-ratio 2000: must be at most 1032 "
                                    "(deflate cannot expand data more)")
    over = _dfota(project, "targetfiles", "--max-entry-mb", "4096")
    assert over.returncode == 1
    assert over.stderr.strip() == ("error: --max-entry-mb 4096: must be at most 4095 (the "
                                   "module's zip reader takes no ZIP64: no entry of 4 GiB or "
                                   "more)")
