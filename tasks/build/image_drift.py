"""The SDK's own sysfs image (`target/sdxlemur-sysfs.ubi`) against its rootfs folder: where
they drift (warnings by path: the image is what the module will run), and the folder's tree
with the image's modes and owners (`--metadata-from-image`).

The drift is kept in a record (dfota.state.store) by the image's key (its sha1 and the
reader's code) and the rootfs tree's digest: the image is read once per image (its tree
recorded, dfota.build.sdk_image) and compared once per image and rootfs; a build whose
rootfs and image are as before neither loads the image's tree nor imports the UBI reader."""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from dfota.build.sdk_image import ROOTFS_VOLUME, ImageTreeReader
from dfota.build.targetfiles import KEPT_FROM_SOURCE
from dfota.build.tree_compare import compare_trees, kind_name, under
from dfota.core.errors import shown_path
from dfota.core.tree import SYMLINK, Entry, Tree, digest_tree

if TYPE_CHECKING:  # the UBI reader is imported only to read
    from dfota.formats.ubifs import UbifsTree

DRIFT_RECORD = "sdk-image-drift"


def read_sdk_image(sysfs_ubi: Path) -> UbifsTree:
    """Volume rootfs of the SDK's `target/sdxlemur-sysfs.ubi`."""
    from dfota.formats.ubifs import read_ubifs

    return read_ubifs(sysfs_ubi, ROOTFS_VOLUME)


def _comparable(tree: Mapping[str, Entry]) -> Tree:
    """A rootfs without the folders the target takes from the source (firmware/, dev/)."""
    return {p: e for p, e in tree.items() if not any(under(p, k) for k in KEPT_FROM_SOURCE)}


def image_drift(rootfs_tree: Mapping[str, Entry], image: UbifsTree) -> list[str]:
    """Warnings, by path, where the SDK's rootfs folder (as scanned: the build user's files
    recorded as root) differs from the UBI image the module will run."""
    return _drift(rootfs_tree, image.entries, image.image)


def _drift(rootfs_tree: Mapping[str, Entry], image_tree: Mapping[str, Entry],
           image: Path) -> list[str]:
    lines = compare_trees(_comparable(image_tree), _comparable(rootfs_tree),
                          names=("the image", "ql-ol-rootfs"))
    return [f"{shown_path(image)}: {line}" for line in lines]


def sdk_image_drift(rootfs_tree: Mapping[str, Entry], image: ImageTreeReader) -> list[str]:
    """`image_drift` against the SDK's sysfs image, its tree as `image` gives it (from its
    record, or read: seconds of decompressing); the lines from the drift record when it holds
    this image and this rootfs tree."""
    key = f"{image.key} {digest_tree(_comparable(rootfs_tree))}"
    kept = image.records.get(DRIFT_RECORD, key)
    if isinstance(kept, list) and all(isinstance(line, str) for line in kept):
        return kept
    lines = _drift(rootfs_tree, image.tree(), image.sysfs_ubi)
    image.records.put(DRIFT_RECORD, key, lines, alone=True)
    return lines


def take_image_metadata(rootfs_tree: Mapping[str, Entry],
                        image: UbifsTree) -> tuple[Tree, list[str]]:
    """The rootfs tree with modes and owners of the image's same-type entries; warnings for
    entries the image does not have (they keep the folder's metadata)."""
    out: Tree = {}
    warnings = []
    for path, entry in rootfs_tree.items():
        other = image.entries.get(path)
        if other is None or other.kind != entry.kind:
            warnings.append(f"{shown_path(image.image)}: {shown_path(path)}: not in the image as "
                            f"{kind_name(entry.kind)}; its mode and owner stay the folder's")
            out[path] = entry
        else:
            mode = entry.mode if entry.kind == SYMLINK else other.mode
            out[path] = replace(entry, mode=stat.S_IMODE(mode), uid=other.uid, gid=other.gid)
    return out, warnings

