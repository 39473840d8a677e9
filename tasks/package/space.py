"""The room on the module: its system volume and its /cache, for the package writer and for
the host model that proves the package.

The updater's `apply_patch` writes `<file>.patch` beside the file when the file's volume has
more than 1.5 times the target's size free (and 256 KiB); else it first copies the source to
`/cache/saved.file`. A package therefore checks, before it writes anything, that /cache can
hold its largest patched source (`apply_patch_space`, E511), and a patch to a partition
always goes through that copy. So a file whose source /cache cannot hold is shipped whole
(extraction needs no copy), and a target whose files do not fit the system volume has no
package that works: `doit delta` refuses it.

The sizes a package is made for: the user's setting, else the SDK image's (read by `doit
targetfiles`, `dfota.build.sdk_image`, and recorded with the target), else the defaults below. The
whole of SYSTEM counts against the system volume, `firmware/` included, as on the model's and
the oracle's /system (the module mounts it from NON-HLOS.ubi): less room, never more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from dfota.core.errors import DfotaError
from dfota.core.tree import FILE, Entry
from dfota.core.volumes import Volumes
from dfota.package.plan import Change, Kind


def cache_reason(source_size: int, volumes: Volumes) -> str:
    """Why a file whose source has `source_size` bytes cannot be patched, or ""."""
    if source_size <= volumes.cache:
        return ""
    return (f"its source ({source_size} bytes) would not fit /cache ({volumes.cache} bytes) for "
            "the updater's copy")


def ship_whole_beyond_cache(changes: Iterable[Change], volumes: Volumes) -> list[Change]:
    """Patched files whose source /cache cannot hold, shipped whole instead."""
    out = []
    for c in changes:
        why = cache_reason(c.source.size, volumes) \
            if c.kind is Kind.PATCHED and c.source is not None else ""
        out.append(Change(c.path, Kind.WHOLE, c.source, c.target, why) if why else c)
    return out


def refuse_beyond_system(result: Mapping[str, Entry], volumes: Volumes) -> None:
    """One line naming the largest file and the limit when the files /system holds after
    the update do not fit the system volume."""
    files = [e for e in result.values() if e.kind == FILE]
    total = sum(e.size for e in files)
    if total <= volumes.system:
        return
    largest = max(files, key=lambda e: (e.size, e.path))
    raise DfotaError(f"the target's /system files take {total} bytes ({largest.size} of them "
                     f"this one's), more than the system volume's {volumes.system} "
                     f"({volumes.source_of('system')}): no package could work",
                     f"SYSTEM/{largest.path}")
