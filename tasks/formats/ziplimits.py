"""What an entry of a zip the chain reads may declare: the limits are settings (chain-wide,
`max_entry_mb` and `max_deflate_ratio`), given to every zip this process reads once the
command's configuration is read (`use_zip_limits`).

Nothing the chain reads is held whole, so memory does not follow an entry's size: the limits
are there to refuse what the user does not want carried (and zip bombs), with one line naming
the entry, what it declares and the limit.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from dfota.core.errors import DfotaError, quoted

# deflate cannot expand data more than about 1032:1; anything beyond is a lie in the header
DEFLATE_LIMIT = 1032
MIB = 1 << 20
# the module's zip reader takes no ZIP64: every entry of a package is under 4 GiB
MODULE_ENTRY_MB = 4095


@dataclass(frozen=True, slots=True)
class ZipLimits:
    """At most `max_entry_mb` MiB an entry, and, deflated, at most `max_deflate_ratio` times
    its stored bytes. The defaults take every entry the module's zip reader can (it reads no
    ZIP64: under 4 GiB) and every ratio deflate can make."""

    max_entry_mb: int = MODULE_ENTRY_MB
    max_deflate_ratio: int = DEFLATE_LIMIT


DEFAULT_ZIP_LIMITS = ZipLimits()
_limits = [DEFAULT_ZIP_LIMITS]


def use_zip_limits(limits: ZipLimits) -> None:
    """The limits of every zip this process (and the workers it forks) reads from now on."""
    _limits[0] = limits


def zip_limits() -> ZipLimits:
    return _limits[0]


def check_declared(name: str, info: zipfile.ZipInfo, limits: ZipLimits, path: Path) -> None:
    """What entry `name` declares, against what its stored bytes can hold and the limits."""
    stored = info.compress_type == zipfile.ZIP_STORED
    ratio = min(limits.max_deflate_ratio, DEFLATE_LIMIT)
    if info.file_size > (info.compress_size if stored else info.compress_size * ratio + 1024):
        setting = "" if stored or ratio == DEFLATE_LIMIT else \
            f" at a ratio of at most {ratio}:1 (max_deflate_ratio)"
        raise DfotaError(f"entry {quoted(name)} declares {info.file_size} bytes that its "
                         f"{info.compress_size} stored bytes cannot hold{setting}", path)
    if info.file_size > limits.max_entry_mb * MIB:
        raise DfotaError(f"entry {quoted(name)} declares {info.file_size} bytes, over the "
                         f"limit of {limits.max_entry_mb} MiB (max_entry_mb)", path)
