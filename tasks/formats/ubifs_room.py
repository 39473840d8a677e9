"""The room a UBIFS volume gives its files: the size `df` reports for it on the module.

Linux's UBIFS facts (fs/ubifs: ubifs-media.h, ubifs.h, sb.c, super.c, budget.c). The kernel
grows a file system to its volume at mount, up to the superblock's max_leb_cnt, and formats
an empty volume itself (create_default_filesystem). Of its LEBs, the superblock (1), the
master node (2), the log, the LEB-properties tree and the orphan area lie outside the main
area; statfs's size (`df`, init_constants_master) also keeps from the main area a LEB for
garbage collection, one for deletions, MIN_INDEX_LEBS for the index and all journal heads
but one; it counts each LEB less the tail no whole data node fills, and reports the rest as
file bytes: each 4 KiB block costs a 48-byte node header and its share of an index thrice
the size of a full one (ubifs_reported_space).
"""

from __future__ import annotations

from pathlib import Path

from dfota.core.errors import DfotaError
from dfota.formats.ubi import UbifsGeometry, UbiVolume

_SB_MST_LEBS = 1 + 2
_MIN_INDEX_LEBS = 2
_NONDATA_JHEADS = 2  # the garbage collector's and the base journal heads
_BLOCK_BYTES = 4096
_MAX_DATA_NODE = 48 + _BLOCK_BYTES
_IDX_NODE, _BRANCH_AND_KEY = 28, 12 + 8
_MIN_MAIN_LEBS = 3 + 6
# create_default_filesystem's choices for an empty volume
_MIN_LEB_CNT = _SB_MST_LEBS + 2 + 2 + 1 + _MIN_MAIN_LEBS
_JOURNAL_PERCENT, _MAX_JOURNAL = 5, 32 * 1024 * 1024
_MIN_JOURNAL_LEBS, _MIN_BUDS = 2 + 3, 3
_REF_NODE = 64
# the LEB-properties tree takes more than its minimum of 2 LEBs only past one LEB of ~5
# bytes per LEB of the volume: tens of thousands of LEBs (gigabytes) at 248 KiB
_LPT_LEBS = 2
_DEFAULT_FANOUT, _DEFAULT_JHEADS = 8, 1


def default_geometry(leb_cnt: int, leb_size: int) -> UbifsGeometry:
    """The UBIFS the kernel makes on an empty volume of `leb_cnt` LEBs at its first mount."""
    journal = leb_cnt * _JOURNAL_PERCENT // 100
    journal = max(journal, _MIN_JOURNAL_LEBS)
    if journal * leb_size > _MAX_JOURNAL:
        journal = _MAX_JOURNAL // leb_size
    log = (2 * _REF_NODE * journal + leb_size - 1) // leb_size + 1
    min_leb_cnt = _MIN_LEB_CNT
    if leb_cnt - min_leb_cnt > 8:
        log += 1
        min_leb_cnt += 1
    orphans = 1 + (leb_cnt - min_leb_cnt > 1)
    return UbifsGeometry(leb_size, leb_cnt, leb_cnt, log, _LPT_LEBS, orphans,
                         _DEFAULT_JHEADS, _DEFAULT_FANOUT)


def ubifs_room(image: Path, volume: UbiVolume) -> int:
    """The bytes of files the UBIFS of `volume` holds on the module: the size `df` reports for
    it once mounted (the volume's LEBs, less what UBIFS keeps, as file bytes), from its
    superblock, or from the file system the kernel makes on it when it is empty.

    The kernel counts flash, not file bytes: compressed files take less, and each file's
    last block and its inode some more; the module's updater asks statfs, as `df` does."""
    if volume.ubifs is not None:
        fs = volume.ubifs
        if volume.reserved_pebs < fs.leb_cnt:
            raise DfotaError(f"volume {volume.name}: its UBIFS spans {fs.leb_cnt} LEBs, the "
                             f"volume reserves only {volume.reserved_pebs}", image)
        leb_cnt = min(volume.reserved_pebs, fs.max_leb_cnt)
    elif volume.empty:
        fs = default_geometry(volume.reserved_pebs, volume.leb_size)
        leb_cnt = volume.reserved_pebs
    else:
        raise DfotaError(f"volume {volume.name} holds no UBIFS (no superblock at its start): "
                         "its size on the module is not known", image)
    main = leb_cnt - _SB_MST_LEBS - fs.log_lebs - fs.lpt_lebs - fs.orph_lebs
    if main < _MIN_MAIN_LEBS:
        raise DfotaError(f"volume {volume.name} has {leb_cnt} LEBs of {fs.leb_size} bytes: too "
                         f"few for a UBIFS ({main} in its main area, {_MIN_MAIN_LEBS} at "
                         "least)", image)
    usable = main - 1 - 1 - _MIN_INDEX_LEBS - (fs.jhead_cnt + _NONDATA_JHEADS) + 1
    flash = usable * (fs.leb_size - fs.leb_size % _MAX_DATA_NODE)
    index_node = _IDX_NODE + _BRANCH_AND_KEY * fs.fanout
    index_node += -index_node % 8
    half_fanout = fs.fanout >> 1 if fs.fanout > 3 else 2
    per_block = _MAX_DATA_NODE + index_node * 3 // (half_fanout - 1)
    return flash * _BLOCK_BYTES // per_block // _BLOCK_BYTES * _BLOCK_BYTES
