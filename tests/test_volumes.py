"""The module's volume sizes from the SDK's `sdxlemur-sysfs.ubi`: read from real images made by
mtd-utils, the precedence setting > image > default, and the writer, the model and the real
updater (`DFOTA_ORACLE`) working on the same sizes."""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from itertools import pairwise
from pathlib import Path

import pytest

from dfota.build.sdk_image import image_volumes
from dfota.commands.configure import configure
from dfota.core.errors import DfotaError
from dfota.core.tree import FILE
from dfota.core.volumes import (
    DEFAULT_VOLUMES,
    FROM_DEFAULT,
    FROM_IMAGE,
    MB,
    SYSTEM_SETTING,
    Volumes,
)
from dfota.device.updater import OK, apply_package
from dfota.formats.filelists import lists_in
from dfota.formats.ubi import PEB_SIZE, list_volumes
from dfota.formats.ubifs import read_ubifs
from dfota.package.delta import build_delta
from dfota.package.mode import parse_mode
from dfota.proof.verify import VerifyInputs, verify_package
from dfota.tools.sample import rootfs as sample_rootfs
from dfota.tools.sample import ubi_images, versions
from tests.builders import base_system, binary, edited, f, next_system
from tests.oracle import differences, model_device, model_outcome, real_run_device
from tests.test_delta import pair, quiet
from tests.test_ubi import LEB_SIZE, _run, _tool
from tests.workspace import Workspace

# a LEB filled with whole 4144-byte data nodes (4 KiB of data and a 48-byte header each): 61
# of them, the last 1168 bytes unused
DATA_PER_LEB = 61 * 4144
# ubifs_reported_space with fanout 8: each 4 KiB block costs its data node and 3 * 192 / 3
# bytes of index
PER_BLOCK = 4144 + 192


def ubinize(dest: Path, volumes: Sequence[tuple[str, Path | None, int]],
            autoresize: str = "usrfs") -> Path:
    """A UBI image of volumes (name, UBIFS image or None for an empty one, size in LEBs)."""
    sections = []
    for vol_id, (name, image, lebs) in enumerate(volumes):
        lines = [f"[{name}_volume]", "mode=ubi", f"vol_id={vol_id}", "vol_type=dynamic",
                 f"vol_name={name}", f"vol_size={lebs * LEB_SIZE}"]
        if image is not None:
            lines.append(f"image={image}")
        if name == autoresize:
            lines.append("vol_flags=autoresize")
        sections.append("\n".join(lines) + "\n")
    cfg = dest.with_suffix(".cfg")
    cfg.write_text("\n".join(sections))
    _run(_tool("ubinize"), "-o", str(dest), "-m", "4096", "-p", str(PEB_SIZE), "-s", "4096",
         "-Q", "1234", str(cfg))
    return dest


def small_ubifs(work: Path, *extra: str) -> Path:
    """A UBIFS of a few files by mkfs.ubifs, with the sdxlemur geometry and `extra` options."""
    root = work / "root"
    root.mkdir(parents=True, exist_ok=True)
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/hostname").write_text("module\n")
    out = work / f"rootfs{len(extra)}.ubifs"
    _run(_tool("mkfs.ubifs"), "-m", "4096", "-e", str(LEB_SIZE), "-F", *extra, "-r", str(root),
         "-o", str(out))
    return out


# ---------------------------------------------------------------------------------------------
# Reading the sizes


def test_sizes_come_from_the_volume_table_and_the_rootfs_superblock(tmp_path: Path) -> None:
    """rootfs: 200 LEBs holding a UBIFS made with a 5-LEB log and 2 orphan LEBs; cachefs: 64
    empty LEBs, which the kernel formats at the first mount."""
    fs = small_ubifs(tmp_path, "-c", "2146", "-l", "5", "-p", "2")
    image = ubinize(tmp_path / "sysfs.ubi", [("rootfs", fs, 200), ("usrfs", None, 16),
                                             ("cachefs", None, 64)])
    volumes = {v.name: v for v in list_volumes(image)}
    rootfs, cachefs = volumes["rootfs"], volumes["cachefs"]
    assert (rootfs.reserved_pebs, cachefs.reserved_pebs) == (200, 64)
    assert rootfs.leb_count < 20  # the image holds only the LEBs with data
    assert rootfs.leb_size == cachefs.leb_size == LEB_SIZE
    assert rootfs.ubifs is not None and cachefs.ubifs is None
    geometry = rootfs.ubifs
    assert (geometry.max_leb_cnt, geometry.log_lebs, geometry.orph_lebs) == (2146, 5, 2)
    assert (geometry.lpt_lebs, geometry.jhead_cnt, geometry.fanout) == (2, 1, 8)

    sizes = image_volumes(image, list(volumes.values()))
    # rootfs grows to its 200 LEBs at mount: 188 in the main area (200 less the superblock,
    # 2 master, 5 log, 2 LPT, 2 orphan LEBs), of which df counts 182 (less 1 for the garbage
    # collector, 1 for deletions, 2 for the index, 2 of the 3 journal heads)
    assert sizes.system == 182 * DATA_PER_LEB * 4096 // PER_BLOCK // 4096 * 4096 == 43_458_560
    # cachefs as the kernel formats 64 LEBs: a 3-LEB log, 2 LPT and 2 orphan LEBs: 54 in the
    # main area, 48 counted
    assert sizes.cache == 48 * DATA_PER_LEB * 4096 // PER_BLOCK // 4096 * 4096 == 11_460_608
    assert (sizes.system_from, sizes.cache_from) == (FROM_IMAGE, FROM_IMAGE)
    assert read_ubifs(image, "rootfs").volumes == tuple(volumes.values())  # one reading


def test_a_file_system_grows_only_to_its_max_leb_cnt(tmp_path: Path) -> None:
    capped = small_ubifs(tmp_path, "-c", "100")  # mkfs.ubifs -c: it may grow to 100 LEBs
    image = ubinize(tmp_path / "sysfs.ubi", [("rootfs", capped, 200), ("cachefs", None, 64)])
    volumes = list_volumes(image)
    assert volumes[0].ubifs is not None and volumes[0].ubifs.max_leb_cnt == 100
    sizes = image_volumes(image, volumes)
    main = 100 - 3 - volumes[0].ubifs.log_lebs - volumes[0].ubifs.lpt_lebs \
        - volumes[0].ubifs.orph_lebs
    assert sizes.system == (main - 6) * DATA_PER_LEB * 4096 // PER_BLOCK // 4096 * 4096


def test_the_samples_volumes_leave_room_for_updates(sample_sdk: Path) -> None:
    image = sample_sdk / "ql-ol-extsdk/target/sdxlemur-sysfs.ubi"
    sizes = image_volumes(image, list_volumes(image))
    with_firmware = sum(e.size for e in read_ubifs(image, "rootfs").entries.values()
                        if e.kind == FILE) + sum(
        e.size for e in read_ubifs(sample_sdk / "firmware/update/NON-HLOS.ubi").entries.values()
        if e.kind == FILE)
    assert sizes.system > 10 * with_firmware
    assert sizes.cache > 8 * MB
    assert image.stat().st_size < 8 * MB  # the volumes' free LEBs take no room in the file


# ---------------------------------------------------------------------------------------------
# A bad volume table: one line naming the image


@pytest.mark.parametrize(("volumes", "said"), [
    ([("rootfs", True, 40), ("usrfs", None, 16)],
     "has no volume 'cachefs' (volumes: rootfs, usrfs): the module's /cache would have no size"),
    ([("system", True, 40), ("cachefs", None, 64)],
     "has no volume 'rootfs' (volumes: system, cachefs)"),
    ([("rootfs", True, 40), ("cachefs", None, 12)],
     "volume cachefs has 12 LEBs of 253952 bytes: too few for a UBIFS (4 in its main area, "
     "9 at least)"),
    ([("rootfs", True, 40), ("cachefs", False, 64)],
     "volume cachefs holds no UBIFS (no superblock at its start): its size on the module is "
     "not known"),
], ids=["no cachefs", "no rootfs", "cachefs too small", "cachefs not UBIFS"])
def test_a_bad_volume_table_is_one_line_naming_the_image(
        tmp_path: Path, volumes: list[tuple[str, bool | None, int]], said: str) -> None:
    fs = small_ubifs(tmp_path, "-c", "2146")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(binary(3, 100_000))
    image = ubinize(tmp_path / "sysfs.ubi", [
        (name, None if content is None else fs if content else junk, lebs)
        for name, content, lebs in volumes])
    with pytest.raises(DfotaError) as bad:
        image_volumes(image, read_ubifs(image, "rootfs").volumes)
    assert str(bad.value) == f"{image}: {said}"


def test_a_damaged_superblock_is_named(tmp_path: Path) -> None:
    fs = small_ubifs(tmp_path, "-c", "2146")
    image = ubinize(tmp_path / "sysfs.ubi", [("rootfs", fs, 40), ("cachefs", None, 64)])
    data = bytearray(image.read_bytes())
    # rootfs's LEB 0 (the superblock) is in the first erase block after the two volume-table
    # copies; its max_leb_cnt field lies 20 bytes into the node after its 24-byte header
    at = 2 * PEB_SIZE + 8192 + 24 + 20
    assert struct.unpack_from("<I", data, at)[0] == 2146
    struct.pack_into("<I", data, at, 9999)
    image.write_bytes(bytes(data))
    with pytest.raises(DfotaError, match=r"^[^\n]*sysfs\.ubi: volume rootfs: the UBIFS "
                                         r"superblock fails its CRC \(damaged\)$"):
        list_volumes(image)


# ---------------------------------------------------------------------------------------------
# Which size a package is made for


def test_a_setting_wins_over_the_image_and_the_image_over_the_default() -> None:
    image = Volumes(300 * MB, 40 * MB, FROM_IMAGE, FROM_IMAGE)
    assert Volumes.given().over(None) == DEFAULT_VOLUMES
    assert Volumes.given().over(image) == image
    both = Volumes.given(100 * MB, 10 * MB)
    assert both.over(image) == both == Volumes(100 * MB, 10 * MB, "system_size_mb",
                                               "cache_size_mb")
    one = Volumes.given(system=100 * MB).over(image)
    assert one == Volumes(100 * MB, 40 * MB, SYSTEM_SETTING, FROM_IMAGE)
    assert Volumes.from_json(one.to_json()) == one
    assert Volumes.from_json({"system": 5, "cache": 6}) == Volumes(5, 6)  # an older summary
    assert (DEFAULT_VOLUMES.system_from, DEFAULT_VOLUMES.cache_from) == (FROM_DEFAULT,
                                                                         FROM_DEFAULT)


BOTH = ["targetfiles", "delta"]


def test_a_size_in_pyproject_or_on_the_command_line_is_the_users_setting(
        tmp_path: Path) -> None:
    # with targetfiles named too: delta alone would take the sample workspace's recorded target
    project = tmp_path / "pyproject.toml"
    project.write_text("[tool.doit.tasks.delta]\nsystem_size_mb = 100\n")
    volumes = configure(tmp_path, BOTH, BOTH).delta.volumes
    assert volumes == Volumes.given(system=100 * MB)
    assert (volumes.system_from, volumes.cache_from) == (SYSTEM_SETTING, FROM_DEFAULT)
    volumes = configure(tmp_path, [*BOTH, "--cache-size-mb", "8"], BOTH).delta.volumes
    assert volumes == Volumes(100 * MB, 8 * MB, SYSTEM_SETTING, "cache_size_mb")
    project.write_text("")
    assert configure(tmp_path, BOTH, BOTH).delta.volumes == DEFAULT_VOLUMES
    with pytest.raises(DfotaError, match=r"^--system-size-mb 0.0: must be above 0$"):
        configure(tmp_path, [*BOTH, "--system-size-mb", "0"], BOTH)


def replace_sdk_image(ws: Workspace, monkeypatch: pytest.MonkeyPatch, tmp: Path,
                      **lebs: int) -> Path:
    """The SDK's image made again from its rootfs, with volumes of other sizes (in LEBs)."""
    for name, count in lebs.items():
        monkeypatch.setitem(ubi_images.SYSFS_VOLUME_LEBS, name, count)
    image = ws.sdk / "target/sdxlemur-sysfs.ubi"
    work = tmp / "image-work"
    work.mkdir(parents=True, exist_ok=True)
    ubi_images.sysfs_ubi(sample_rootfs.next_rootfs(), work, image, "next", versions.NEXT.epoch)
    return image


def summary_volumes(ws: Workspace) -> dict[str, object]:
    return dict(json.loads((ws.out / "update.json").read_text())["volumes"])


@pytest.mark.slow
def test_delta_makes_the_package_for_the_setting_else_the_image_else_the_default(
        ws: Workspace) -> None:
    image = ws.sdk / "target/sdxlemur-sysfs.ubi"
    from_image = image_volumes(image, list_volumes(image))
    ws.build("delta")
    assert summary_volumes(ws) == from_image.to_json()
    assert json.loads((ws.root / "state/workspace.json").read_text())[
        "target"]["volumes"] == from_image.to_json()

    ws.build("delta", "--cache-size-mb", "20", "verify")
    assert summary_volumes(ws) == {"system": from_image.system, "cache": 20 * MB,
                                   "from": {"system": FROM_IMAGE, "cache": "cache_size_mb"}}
    assert "/cache: cache_size_mb" in (ws.out / "update.html").read_text()

    image.unlink()  # an SDK without the image: the defaults
    ws.build("delta")
    assert summary_volumes(ws) == DEFAULT_VOLUMES.to_json()


@pytest.mark.slow
def test_an_image_with_other_sizes_makes_delta_run_again(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ws.build("delta")
    first = summary_volumes(ws)
    assert "up to date" in ws.build("delta").stdout
    image = replace_sdk_image(ws, monkeypatch, tmp_path, cachefs=300)
    ws.build("delta")
    assert summary_volumes(ws)["cache"] == image_volumes(image, list_volumes(image)).cache \
        != first["cache"]
    assert "up to date" in ws.build("delta").stdout

    # the sizes the target's image gave are part of delta's up-to-date key, on their own
    record = ws.root / "state/workspace.json"
    data = json.loads(record.read_text())
    data["target"]["volumes"]["cache"] = 30 * MB
    record.write_text(json.dumps(data))
    run = ws.run("delta", *ws.folders)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "up to date" not in run.stdout
    assert summary_volumes(ws)["cache"] == 30 * MB


# ---------------------------------------------------------------------------------------------
# The writer, the model and the real updater on a nearly full rootfs volume

LIB = "usr/lib/libbig.so"


@pytest.mark.slow
def test_a_nearly_full_rootfs_volume_sends_the_patch_through_cache_on_both_updaters(
        oracle: Path, tmp_path: Path) -> None:
    """The image's rootfs volume leaves 450 KB free: less than the 1.5 times a 400 KB file's
    size that `apply_patch` wants beside it, so the source goes to /cache first. The package
    is made for the image's sizes, and the model and the real updater, given those sizes,
    agree on the result."""
    fs = small_ubifs(tmp_path, "-c", "2146")
    image = ubinize(tmp_path / "sysfs.ubi", [("rootfs", fs, 40), ("cachefs", None, 64)])
    sizes = Volumes.given().over(image_volumes(image, list_volumes(image)))
    assert (sizes.system_from, sizes.cache_from) == (FROM_IMAGE, FROM_IMAGE)
    lib = binary(21, 400_000)
    source = {**base_system(), LIB: f(lib, 0o755)}
    target = {**next_system(), LIB: f(edited(lib, 7, 300_000), 0o755)}
    taken = sum(len(n.data) for n in source.values() if n.kind == FILE)
    filler = f(bytes(sizes.system - taken - 450_000))  # unchanged: not in the package
    settings = pair(tmp_path / "pair", source={**source, "usr/share/filler": filler},
                    target={**target, "usr/share/filler": filler}, volumes=sizes)
    summary = build_delta(settings, quiet()).summary
    assert summary["volumes"] == sizes.to_json()
    assert isinstance(summary["changes"], list)
    assert {c["path"]: c["kind"] for c in summary["changes"]}[LIB] == "patched"
    package, base = settings.workspace.pending_zip, Path(settings.base)

    device = model_device(base, sizes)
    real = real_run_device(oracle, device.copy(), package, sizes)
    result = apply_package(package, device)
    found = differences(model_outcome(device, result), result.code, real)
    assert not found, "\n".join(found)
    assert (result.code, real.exit) == (OK, 0)
    # the copy path: the source saved to /cache, then removed to make room for the patched file
    copied = ("write /cache/saved.file", f"unlink /system/{LIB}")
    steps = result.step_log
    assert copied in pairwise(steps)
    roomy = apply_package(package, model_device(base, DEFAULT_VOLUMES)).step_log
    assert roomy[-1] == steps[-1] and copied not in pairwise(roomy)
    report = verify_package(VerifyInputs(package, base, settings.workspace.target_zip,
                                         parse_mode("all"), lists_in(settings.config_dir),
                                         volumes=sizes), quiet())
    assert report.ok, [c for c in report.checks if not c.ok]
