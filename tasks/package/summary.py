"""What `out/update.json` says of a package `doit delta` made: its versions and inputs, what
it carries counted by kind, folder and size, the largest entries; and the warnings of its size
against the note's budget and the module's free usrdata.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from dfota import __version__
from dfota.build.archive import sha256_file
from dfota.build.targetfiles import BOOT_IMAGE
from dfota.core.errors import shown_path
from dfota.core.tree import FILE
from dfota.package.patches import PatchOutcome
from dfota.package.plan import Change, Kind, Span
from dfota.package.writer import Writes
from dfota.settings import DeltaSettings, PackageInputs, public_name

USRDATA_NEED = 60 * 1024 * 1024  # free usrdata the note asks for within a baseline (4.1)
USRDATA_NEED_CROSS = 110 * 1024 * 1024


@dataclass(frozen=True)
class Contents:
    """What a package carries: its writes, the diffs' outcomes (its patches), its script."""

    writes: Writes
    outcomes: Mapping[str, PatchOutcome]
    script: bytes


@dataclass(frozen=True)
class Figures:
    """The package's size in bytes, and the seconds its diffs and its whole making took."""

    size: int
    diff_seconds: float
    seconds: float


def budget_warnings(settings: DeltaSettings, size: int, changes: Sequence[Change]) -> list[str]:
    """A package of `size` bytes over the note's budget, or asking more free usrdata of the
    module than the note does."""
    mb = 1024 * 1024
    warnings = []
    if size > settings.size_budget:
        warnings.append(f"{shown_path(settings.workspace.update_zip)}: {size / mb:.1f} MB, "
                        "over the "
                        f"{settings.size_budget / mb:.0f} MB budget (note 2.4)")
    largest = max((c.target.size for c in changes if c.target is not None
                   and c.target.kind == FILE and c.kind is not Kind.UNCHANGED), default=0)
    need = size + largest
    if need > USRDATA_NEED:
        warnings.append(f"{shown_path(settings.workspace.update_zip)}: the module needs about "
                        f"{need / mb:.1f} MB free "
                        f"in usrdata (package + largest file); the note asks for more than "
                        f"{USRDATA_NEED / mb:.0f} MB within a baseline and "
                        f"{USRDATA_NEED_CROSS / mb:.0f} MB across baselines (4.1)")
    return warnings


def package_summary(settings: DeltaSettings, inputs: PackageInputs, span: Span,
                    contents: Contents, figures: Figures) -> dict[str, object]:
    """The summary of a package written at `settings.workspace.pending_zip`."""
    changes, outcomes, script = contents.writes.changes, contents.outcomes, contents.script
    boot, minor, size = contents.writes.boot, contents.writes.minor, figures.size
    counts = Counter(c.kind.value for c in changes if c.kind is not Kind.UNCHANGED)
    patch_bytes = sum(outcomes[c.path].patch_size for c in changes if c.kind is Kind.PATCHED)
    whole_bytes = sum(c.target.size for c in changes if c.shipped_whole and c.target)
    whole_reasons = Counter(c.reason or "new file" for c in changes if c.shipped_whole)
    entries: list[dict[str, str | int]] = [
        {"path": c.path, "kind": c.kind.value, "reason": c.reason,
         "bytes": _payload_bytes(c, outcomes)}
        for c in changes if c.kind is not Kind.UNCHANGED]
    by_folder: dict[str, dict[str, int]] = {}
    by_kind: Counter[str] = Counter()
    for e in entries:
        folder = by_folder.setdefault(str(e["path"]).split("/", 1)[0], {"bytes": 0, "entries": 0})
        folder["bytes"] += int(e["bytes"])
        folder["entries"] += 1
        by_kind[str(e["kind"])] += int(e["bytes"])
    if boot is not None:
        boot_bytes = (outcomes[BOOT_IMAGE].patch_size if boot.entry_is_patch
                      else boot.target_size)
        by_kind["kernel"] += boot_bytes
    by_kind["minor partitions"] += sum(m.target_size for m in minor)
    top = sorted(entries, key=lambda e: (-int(e["bytes"]), str(e["path"])))[:10]
    return {
        "tool": f"quecopen-dfota {__version__}",
        "changed": True,
        # where the package is until `doit verify` publishes it
        "package": public_name(settings.workspace.pending_zip, settings.workspace.root),
        "published": False,
        "package_size": size,
        "source": span.source_key,
        "target": span.target_key,
        "size_budget": settings.size_budget,
        "base_zip": public_name(inputs.base_zip, settings.workspace.root),
        "base_sha256": inputs.base_sha256,
        "target_zip": public_name(inputs.target_zip, settings.workspace.root),
        "target_sha256": inputs.target_sha256,
        "package_sha256": sha256_file(settings.workspace.pending_zip),
        "config": public_name(settings.config_dir, settings.workspace.root)
        if settings.config_dir else None,
        "mode": sorted(p.value for p in span.parts),
        "volumes": settings.volumes.to_json(),
        "counts": dict(sorted(counts.items())),
        "unchanged": sum(1 for c in changes if c.kind is Kind.UNCHANGED),
        "bytes": {"patches": patch_bytes, "whole_files": whole_bytes,
                  "script": len(script)},
        "whole_reasons": dict(sorted(whole_reasons.items())),
        "boot": None if boot is None else {
            "partition": boot.partition, "as": "patch" if boot.entry_is_patch else "image",
            "size": (outcomes[BOOT_IMAGE].patch_size if boot.entry_is_patch
                     else boot.target_size)},
        "minor": [{"partition": m.partition, "image": m.entry, "size": m.target_size}
                  for m in minor],
        "timings": {"diff_seconds": round(figures.diff_seconds, 3),
                    "total_seconds": round(figures.seconds, 3)},
        "by_folder": dict(sorted(by_folder.items())),
        "by_kind": {k: v for k, v in sorted(by_kind.items()) if v},
        "top": top,
        "changes": entries,
    }


def _payload_bytes(change: Change, outcomes: Mapping[str, PatchOutcome]) -> int:
    """What an entry costs in the package (uncompressed): its patch, or the whole file."""
    if change.kind is Kind.PATCHED:
        return outcomes[change.path].patch_size
    if change.shipped_whole and change.target is not None:
        return change.target.size
    return 0
