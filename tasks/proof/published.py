"""Whether the published package is the one proven, by its stat: `doit verify`'s up-to-date
check, which every `doit` with nothing to do asks. Light on purpose: it imports neither the
proof nor the host model (what proving a package needs is in dfota.proof.publish).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from dfota.build.archive import recorded_sha256
from dfota.core.errors import DfotaError
from dfota.settings import Workspace
from dfota.state.store import DigestCache


def read_summary(workspace: Workspace) -> dict[str, object]:
    try:
        summary = json.loads(workspace.update_summary.read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise DfotaError("no readable package summary: run `doit delta` first",
                         workspace.update_summary) from exc
    if not isinstance(summary, dict):
        raise DfotaError("not a package summary: not a JSON object", workspace.update_summary)
    return summary


def verify_needed(workspace: Workspace, digests: DigestCache | None = None) -> bool:
    """False when the last `doit delta` found nothing to update (and wrote no package), or when
    its package was already proven and published (`published_is_proven`)."""
    summary = read_summary(workspace)
    if not summary.get("changed", True):
        return False
    done = summary.get("verify")
    return not (isinstance(done, dict) and done.get("ok") and not workspace.pending_zip.exists()
                and published_is_proven(workspace, summary, digests))


def published_is_proven(workspace: Workspace, summary: Mapping[str, object] | None = None,
                        digests: DigestCache | None = None) -> bool:
    """`out/update.zip`, when there is one, has the sha256 of the package that was proven
    (by `digests` while the file is as it was when hashed; None: hashed now)."""
    if not workspace.update_zip.is_file():
        return True
    if summary is None:
        try:
            summary = read_summary(workspace)
        except DfotaError:
            return False
    # by the stat-keyed cache: any write to the file changes its stat, so it is hashed again
    return recorded_sha256(digests, workspace.update_zip) == summary.get("package_sha256")
