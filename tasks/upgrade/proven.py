"""The packages `doit verify` proved in a workspace: what `doit upgrade` sends by default and
the only ones `doit serve` hands out.

A package is proven when its summary says verify passed and the file's sha256 is the one the
summary records: the published `out/update.zip` (with `out/update.json`) and each entry of
`out/deltas/index.json` marked ok (with the `update.json` of its folder).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from dfota.build.archive import recorded_sha256
from dfota.core.atomic import read_json_object
from dfota.core.errors import DfotaError
from dfota.settings import Workspace
from dfota.state.store import DigestCache


@dataclass(frozen=True)
class ProvenPackage:
    source: str  # version keys
    target: str
    path: Path
    sha256: str
    size: int

    @property
    def url_path(self) -> str:
        """Its immutable address under `doit serve`: /<source>/<target>/update.zip."""
        return f"/{quote(self.source, safe='@')}/{quote(self.target, safe='@')}/update.zip"


def _proven(summary_path: Path, zip_path: Path, digests: DigestCache | None
            ) -> ProvenPackage | None:
    summary = read_json_object(summary_path)
    verify = summary.get("verify")
    if not (isinstance(verify, dict) and verify.get("ok")) or not zip_path.is_file():
        return None
    try:
        sha256 = recorded_sha256(digests, zip_path)
    except DfotaError:
        return None
    if sha256 != summary.get("package_sha256"):
        return None  # the file is not the package that was proven
    return ProvenPackage(str(summary.get("source", "")), str(summary.get("target", "")),
                         zip_path, sha256, zip_path.stat().st_size)


def proven_packages(ws: Workspace, digests: DigestCache | None) -> list[ProvenPackage]:
    """Every proven package of the workspace, the published one first (their sha256s from
    `digests` while the files are as they were when hashed)."""
    found: list[ProvenPackage] = []
    summary = read_json_object(ws.update_summary)
    if summary.get("published"):
        one = _proven(ws.update_summary, ws.update_zip, digests)
        if one is not None:
            found.append(one)
    index = read_json_object(ws.deltas_dir / "index.json")
    for entry in index.get("packages") or []:
        if not (isinstance(entry, dict) and entry.get("ok") and entry.get("folder")
                and entry.get("package")):
            continue
        folder = ws.root / str(entry["folder"])
        one = _proven(folder / "update.json", ws.root / str(entry["package"]), digests)
        if one is not None and all((p.source, p.target) != (one.source, one.target)
                                   for p in found):
            found.append(one)
    return found


def proven_sha256s(ws: Workspace, digests: DigestCache | None) -> dict[str, ProvenPackage]:
    return {p.sha256: p for p in proven_packages(ws, digests)}
