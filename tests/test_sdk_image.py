"""The SDK image's tree read in a worker, readers taking turns: a reader whose turn comes
after the tree was recorded reads nothing; the inputs step starts the reading."""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfota.build.inputs import write_inputs_manifest
from dfota.build.sdk_image import RECORD, ImageTreeReader, image_key
from dfota.commands.configure import configure
from dfota.core.errors import DfotaError
from dfota.core.tree import FILE, Entry
from dfota.core.volumes import FROM_IMAGE, Volumes
from dfota.state.store import Records


def _garbage_image(tmp_path: Path) -> tuple[Path, str]:
    image = tmp_path / "sdxlemur-sysfs.ubi"
    image.write_bytes(b"not an image" * 1000)
    return image, hashlib.sha1(image.read_bytes()).hexdigest()


HOLD = """
import fcntl, signal, sys
turn = open(sys.argv[1], "a+b")
fcntl.flock(turn, fcntl.LOCK_EX)
print("taken", flush=True)
signal.pause()
"""


@contextlib.contextmanager
def another_reader(records: Records) -> Iterator[None]:
    """Another process at its turn of reading (the lock every reader of `records` takes)
    until the block ends (a lock held by this process would be its workers' too: a fork
    shares it)."""
    records.folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD,
                               str(records.folder / f"{RECORD}.reading")],
                              stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline() == b"taken\n"
    try:
        yield
    finally:
        holder.terminate()
        holder.wait()


def test_a_reader_whose_turn_comes_after_the_tree_was_recorded_reads_nothing(
        tmp_path: Path) -> None:
    records = Records(tmp_path / "records", "tool")
    image, sha1 = _garbage_image(tmp_path)
    with another_reader(records):
        reader = ImageTreeReader(image, records, sha1)  # its worker waits for its turn
        tree = {"bin/a": Entry("bin/a", FILE, 0o755, 0, 0, 1, "0" * 40)}
        volumes = Volumes(1 << 20, 1 << 20, FROM_IMAGE, FROM_IMAGE)
        records.put(RECORD, image_key(sha1), {"volumes": volumes.to_json(),
                                              "entries": [e.to_json() for e in tree.values()]})
    # the image is not one: read, it would stop the build; recorded, it is not read again
    assert reader.tree() == tree and reader.volumes() == volumes


def test_a_reader_whose_turn_comes_without_the_tree_recorded_reads_the_image(
        tmp_path: Path) -> None:
    records = Records(tmp_path / "records", "tool")
    image, sha1 = _garbage_image(tmp_path)
    with another_reader(records):
        reader = ImageTreeReader(image, records, sha1)
    with pytest.raises(DfotaError) as err:
        reader.tree()
    assert str(image) in str(err.value)
    assert records.get(RECORD, image_key(sha1)) is None


@pytest.mark.slow
def test_the_inputs_step_starts_reading_the_image(sample_sdk: Path, tmp_path: Path) -> None:
    sdk = sample_sdk / "ql-ol-extsdk"
    conf = configure(tmp_path, ["targetfiles", "--sdk", str(sdk), "--source", str(
        sample_sdk / "firmware" / "upgrade" / "targetfiles.zip"), "--out",
                                str(tmp_path / "out"), "--archive", str(tmp_path / "archive"),
                                "--state", str(tmp_path / "state")], ["targetfiles"])
    settings = conf.targetfiles
    image = sdk / "target" / "sdxlemur-sysfs.ubi"
    key = image_key(hashlib.sha1(image.read_bytes()).hexdigest())
    with settings.workspace.open_state() as state:
        assert not state.records.holds(RECORD, key)
        write_inputs_manifest(settings, (), state)
        for worker in multiprocessing.active_children():  # the reading goes on beside
            worker.join()
        recorded = state.records.get(RECORD, key)
    assert isinstance(recorded, dict) and len(recorded["entries"]) > 100
