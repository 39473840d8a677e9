"""What an entry of a zip the chain reads may declare: a name that stays in the extraction
folder, and sizes within the limits, which are settings (chain-wide,
`max_entry_mb` and `max_deflate_ratio`), given to every zip this process reads once the
command's configuration is read (`use_zip_limits`).

Nothing the chain reads is held whole, so memory does not follow an entry's size: the limits
are there to refuse what the user does not want carried (and zip bombs), with one line naming
the entry, what it declares and the limit.
"""

from __future__ import annotations

import bisect
import zipfile
from collections.abc import Collection, Set
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


def check_name(raw: str, path: Path) -> str:
    """Entry `raw`'s name without its trailing '/', refused when absolute, empty or when it
    would escape the extraction folder."""
    name = raw[:-1] if raw.endswith("/") else raw
    if not name or raw.startswith("/") or "\0" in raw:
        raise DfotaError(f"entry {quoted(raw)} has an absolute or empty name", path)
    wrapped = f"/{name}/"  # a component '..', '.' or '' is one of these between slashes
    if "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        raise DfotaError(f"entry {quoted(raw)} would escape its folder ('..', '.' or '//' in name)",
                         path)
    return name


def check_below_links(names: Collection[str], linked: Set[str], path: Path) -> None:
    """No entry of `names` (in the zip's order) lies below one of the symlink entries
    `linked`: extracting it would write through the link."""
    links = sorted(n + "/" for n in linked)
    if not links:
        return
    ordered = sorted(names)
    # an entry below a link sorts right after the link's name and '/'
    if not any(i < len(ordered) and ordered[i].startswith(link)
               for link, i in ((link, bisect.bisect_left(ordered, link)) for link in links)):
        return
    for name in names:  # the first in the zip's order, below its outermost link
        parts = name.split("/")
        above = next((p for p in ("/".join(parts[:i]) for i in range(1, len(parts)))
                      if p in linked), None)
        if above is not None:
            raise DfotaError(f"entry {quoted(name)} lies below the symlink "
                             f"{quoted(above)}", path)
