"""The sample's images and the base `targetfiles.zip` as trees: the modem firmware (the root
of NON-HLOS.ubi and `SYSTEM/firmware/`), the kernel's boot image, abl.elf, and every entry of
the base targetfiles (`base_targetfiles_tree()`)."""

from __future__ import annotations

import functools

from dfota.formats.bootimg import build_boot_image, make_arm_zimage, make_dtb
from dfota.formats.elf import build_abl_elf
from dfota.tools.sample.content import Program, code, edit, mbn, pil_image, prng
from dfota.tools.sample.nodes import (
    Node,
    Tree,
    dir_node,
    file_node,
    link_node,
    under_kept,
    with_parents,
)
from dfota.tools.sample.rootfs import base_rootfs
from dfota.tools.sample.versions import BASE, NEXT


@functools.cache
def _modem_items() -> tuple[tuple[str, Node], ...]:
    tree: Tree = {}
    for folder in ("image", "image/modem_pr", "image/modem_pr/so", "image/modem_pr/mcfg",
                   "image/modem_pr/mcfg/configs", "image/modem_pr/mcfg/configs/mcfg_sw",
                   "image/modem_pr/mcfg/configs/mcfg_sw/generic"):
        tree[folder] = dir_node()
    sizes = (300 * 1024, 250 * 1024, 180 * 1024, 120 * 1024, 60 * 1024, 8 * 1024)
    mdt, segments = pil_image("modem", sizes, 0x8CC00000)
    tree["image/modem.mdt"] = file_node(mdt)
    seg_info = []
    for i, blob in enumerate(segments):
        tree[f"image/modem.b{i:02d}"] = file_node(blob)
        seg_info.append(f"modem.b{i:02d} 0x{len(blob):08x}\n")
    tree["image/seg_info.txt"] = file_node("".join(seg_info))
    tree["image/qdsp6m.qdb"] = file_node(b"QDB\0" + prng("qdsp6m.qdb", 120 * 1024))
    tree["image/modem_pr/so/895_0_0.mbn"] = file_node(mbn("so895", 48 * 1024, 0x9E000000))
    tree["image/modem_pr/so/896_0_0.mbn"] = file_node(mbn("so896", 40 * 1024, 0x9E100000))
    tree["image/modem_pr/mcfg/configs/mcfg_sw/generic/mcfg_sw.mbn"] = file_node(
        mbn("mcfg_sw", 24 * 1024, 0x9E200000))
    tree["image/modem_pr/mcfg/configs/mcfg_sw/mbn_sw.txt"] = file_node(
        "mcfg_sw/generic/mcfg_sw.mbn\n")
    tree["image/Ver_Info.txt"] = file_node(
        "{\n  \"Image_Build_IDs\": {\"modem\": \"MPSS.DE.2.0-01234-SDXLEMUR_GEN_PACK-1\"},\n"
        "  \"Metabuild_Info\": {\"Meta_Build_ID\": \"SDX65.LE.1.0-00345-NBOOT.NEFS.PROD-1\"}\n}\n")
    return tuple(sorted(tree.items()))


def modem_files() -> Tree:
    """The modem firmware: the root of NON-HLOS.ubi, and `SYSTEM/firmware/` in targetfiles."""
    return dict(_modem_items())


@functools.cache
def boot_image(next_version: bool = False) -> bytes:
    """`sdxlemur-boot.img`: an Android v0 boot image with an ARM zImage and an appended DTB."""
    version = NEXT if next_version else BASE
    payload = code("kernel", 320 * 1024)
    if next_version:
        payload = edit(payload, "kernel", 6)
    dtb = make_dtb(
        "Qualcomm Technologies, Inc. SDXLEMUR MTP",
        ["qcom,sdxlemur-mtp", "qcom,sdxlemur", "qcom,mtp"],
        {"chosen": {"bootargs": ""}, "memory": {"device_type": "memory",
                                                "reg": [0x80000000, 0x20000000]}},
        properties={"qcom,msm-id": [0x1A8, 0x10000], "qcom,board-id": [8, 0]},
    )
    return build_boot_image(make_arm_zimage(payload, [dtb]), cmdline=version.cmdline)


@functools.cache
def abl_image(next_version: bool = False) -> bytes:
    """`abl.elf`: the application bootloader."""
    version = NEXT if next_version else BASE
    text = code("abl", 96 * 1024) + f"ABL {version.project_rev}\0".encode()
    if next_version:
        text = edit(text, "abl", 3)
    return build_abl_elf(text)


_FILESMAP = "sdxlemur-boot.img                boot\nabl.elf                          abl\n"
_RECOVERY_FSTAB = (
    "# mount point\tfstype\t\tdevice\t\t[device2]\n"
    "/boot\t\tmtd\t\tboot\n"
    "/cache\t\tubifs\t\tcache\n"
    "/data\t\tubifs\t\tuserdata\n"
    "/recovery\tmtd\t\trecovery\n"
    "/system\t\tubifs\t\tsystem\n"
)


def base_targetfiles_tree() -> Tree:
    """Every entry of the base `targetfiles.zip`, directories included."""
    tree: Tree = {}
    tree["BOOTABLE_IMAGES/boot.img"] = file_node(boot_image(False))
    tree["MULTIFOTA/abl.elf"] = file_node(abl_image(False))
    tree["OTA/bin/updater"] = file_node(Program("updater", 64 * 1024).elf(), 0o755)
    tree["OTA/bin/applypatch"] = file_node(Program("applypatch", 32 * 1024).elf(), 0o755)
    tree["RADIO/filesmap"] = file_node(_FILESMAP)
    tree["RECOVERY/RAMDISK/etc/recovery.fstab"] = file_node(_RECOVERY_FSTAB)
    tree["RECOVERY/RAMDISK/etc/fstab"] = file_node("proc /proc proc defaults 0 0\n")
    tree["RECOVERY/RAMDISK/etc/mtab"] = link_node("/proc/self/mounts")
    tree["RECOVERY/RAMDISK/res/keys"] = file_node("v2 {64,0x" + prng("keys", 32).hex() + "}\n")
    tree["RECOVERY/RAMDISK/sbin/recovery"] = file_node(Program("recovery", 24 * 1024).elf(),
                                                       0o755)
    for rel, node in base_rootfs().items():
        if not under_kept(rel):
            tree[f"SYSTEM/{rel}"] = node
    for rel, node in modem_files().items():
        tree[f"SYSTEM/firmware/{rel}"] = node
    tree["SYSTEM/dev/pts"] = dir_node()
    return with_parents(tree)
