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
targetfiles`, `tasks.sdk_image`, and recorded with the target), else the defaults below. The
whole of SYSTEM counts against the system volume, `firmware/` included, as on the model's and
the oracle's /system (the module mounts it from NON-HLOS.ubi): less room, never more.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tasks.errors import DfotaError
from tasks.plan import Change, Kind
from tasks.tree import FILE, Entry

MB = 1024 * 1024
# without a size from the settings or the SDK's image: the module's usual volumes
DEFAULT_SYSTEM_SIZE_MB = 512
DEFAULT_CACHE_SIZE_MB = 64
# where a size came from (update.json's `volumes.from`)
SYSTEM_SETTING, CACHE_SETTING = "system_size_mb", "cache_size_mb"
FROM_IMAGE = "sdxlemur-sysfs.ubi"
FROM_DEFAULT = "default"
_ORIGINS = {"system": (SYSTEM_SETTING, FROM_IMAGE, FROM_DEFAULT),
            "cache": (CACHE_SETTING, FROM_IMAGE, FROM_DEFAULT)}


@dataclass(frozen=True, slots=True)
class Volumes:
    """The sizes in bytes of the system volume and of /cache, and where each came from: a
    setting the user gave, the SDK image's volume table (the volumes rootfs and cachefs), or
    the defaults.

    A size from the image is the room its UBIFS gives files as `df` reports it
    (`tasks.ubi.ubifs_room`): the volume's LEBs less what UBIFS keeps, counted as file bytes.
    The writer and the model count files' bytes against it."""

    system: int = DEFAULT_SYSTEM_SIZE_MB * MB
    cache: int = DEFAULT_CACHE_SIZE_MB * MB
    system_from: str = FROM_DEFAULT
    cache_from: str = FROM_DEFAULT

    @staticmethod
    def given(system: int | None = None, cache: int | None = None) -> Volumes:
        """The sizes the user set; the defaults (marked so) for those not set."""
        return Volumes(DEFAULT_VOLUMES.system if system is None else system,
                       DEFAULT_VOLUMES.cache if cache is None else cache,
                       FROM_DEFAULT if system is None else SYSTEM_SETTING,
                       FROM_DEFAULT if cache is None else CACHE_SETTING)

    def over(self, image: Volumes | None) -> Volumes:
        """The size a package is made for: the user's setting, else the image's, else the
        default; `image`: what the SDK's image says (None: the SDK has none)."""
        if image is None:
            return self
        system = self.system_from == SYSTEM_SETTING
        cache = self.cache_from == CACHE_SETTING
        return Volumes(self.system if system else image.system,
                       self.cache if cache else image.cache,
                       self.system_from if system else FROM_IMAGE,
                       self.cache_from if cache else FROM_IMAGE)

    def source_of(self, volume: str) -> str:
        """How a message names where the `volume` ("system" or "cache") size came from."""
        origin = self.system_from if volume == "system" else self.cache_from
        setting = SYSTEM_SETTING if volume == "system" else CACHE_SETTING
        if origin == FROM_IMAGE:
            return f"volume {'rootfs' if volume == 'system' else 'cachefs'} of the SDK's " \
                   f"{FROM_IMAGE}; {setting} overrides it"
        if origin == FROM_DEFAULT:
            return f"the default; set {setting}"
        return setting

    def to_json(self) -> dict[str, object]:
        return {"system": self.system, "cache": self.cache,
                "from": {"system": self.system_from, "cache": self.cache_from}}

    @staticmethod
    def from_json(data: object) -> Volumes:
        """The volumes a package summary or a record holds; the defaults for one that records
        none."""
        if not isinstance(data, Mapping):
            return Volumes()
        origins = data.get("from")
        origins = origins if isinstance(origins, Mapping) else {}

        def origin(volume: str) -> str:
            said = origins.get(volume)
            return str(said) if said in _ORIGINS[volume] else FROM_DEFAULT

        return Volumes(int(data.get("system", DEFAULT_VOLUMES.system)),
                       int(data.get("cache", DEFAULT_VOLUMES.cache)),
                       origin("system"), origin("cache"))


DEFAULT_VOLUMES = Volumes()


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
