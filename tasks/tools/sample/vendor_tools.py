"""The vendor's own tools, as the vendor runs them to pack a release: Info-ZIP `zip` (made
reproducible) and any other tool by name, each failure one line naming the tool."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from dfota.core.errors import DfotaError


def tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise DfotaError(f"{name} not found; install the Debian package {package}")
    return found


def run(args: Sequence[str], *, cwd: Path | None = None, stdin: str | None = None) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"}
    try:
        done = subprocess.run(list(args), cwd=cwd, input=stdin, capture_output=True, text=True,
                              env=env, check=False)
    except OSError as exc:
        raise DfotaError(f"cannot run {args[0]}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no message"]
        raise DfotaError(f"{Path(args[0]).name} failed (exit {done.returncode}): {lines[-1]}")
    return done.stdout


def zip_tree(folder: Path, dest: Path) -> None:
    """`zip -qry0` of the folder's contents, made reproducible: -X, sorted names, TZ=UTC."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        names.extend((rel / n).as_posix() for n in dirnames + filenames)
    names.sort(key=lambda n: n.encode())
    if any("\n" in n or n != n.strip() for n in names):
        raise DfotaError("a name cannot be passed to zip -@", folder)
    run([tool("zip", "zip"), "-qy0X", "-@", str(dest)], cwd=folder,
        stdin="".join(n + "\n" for n in names))
    listing = run([tool("unzip", "unzip"), "-Z", str(dest)]).splitlines()
    entries = [line for line in listing if re.match(r"^[-dlrwxsStT]{10} ", line)]
    links = sum(1 for n in names if (folder / n).is_symlink())
    if (len(entries) != len(names) or any(" stor " not in e for e in entries)
            or sum(1 for e in entries if e.startswith("l")) != links):
        raise DfotaError("zip did not store every entry as expected (see unzip -Z)", dest)
