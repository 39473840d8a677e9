"""The sizes of the module's two volumes a package is made for, and where each came from.

The user's setting, else the SDK image's (read by `doit targetfiles`,
`dfota.build.sdk_image`, and recorded with the target), else the defaults below.
`dfota.package.space` holds the checks that use them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

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
    (`dfota.formats.ubifs_room`): the volume's LEBs less what UBIFS keeps, counted as file
    bytes. The writer and the model count files' bytes against it."""

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
