"""A private copy of the sample's inputs, and doit run on it as a user runs it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.oracle import check_published

PROJECT = Path(__file__).resolve().parent.parent
SAMPLE_LISTS = PROJECT / "sample_sdk" / "config"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Workspace:
    """A copy of the sample's inputs and private out/archive/state folders."""

    root: Path
    sdk: Path
    source: Path
    # packages (sha256) the real updater already applied (tests.oracle)
    checked: set[str] = field(default_factory=set)

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def archive(self) -> Path:
        return self.root / "archive"

    @property
    def rootfs(self) -> Path:
        return self.sdk / "ql-ol-rootfs"

    def doit(self, *args: str, env: dict[str, str] | None = None, default_source: bool = False,
             without_dac_override: bool = False) -> Run:
        """`doit targetfiles` on the workspace; the source is the sample's base unless
        `default_source` leaves the choice to the tool."""
        source = [] if default_source else ["--source", str(self.source)]
        return self.run("targetfiles", "--sdk", str(self.sdk), *source, *self.folders, *args,
                        env=env, without_dac_override=without_dac_override)

    @property
    def folders(self) -> list[str]:
        """The options that keep a task's outputs inside the workspace."""
        return ["--out", str(self.out), "--archive", str(self.archive),
                "--state", str(self.root / "state")]

    def run(self, *argv: str, env: dict[str, str] | None = None,
            without_dac_override: bool = False) -> Run:
        """doit with these arguments (tasks and their options), its own dependency file; the
        sample's vendor lists unless the arguments name others (a user's SDK must name them)."""
        if "--config" not in argv:
            argv = (*argv, "--config", str(SAMPLE_LISTS))
        command = [sys.executable, "-m", "doit", "--db-file", str(self.root / "doit.db"), *argv]
        if without_dac_override:  # root that cannot read past file modes, like any user
            command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
        done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, check=False)
        check_published(self.out, self.checked)
        return Run(done.returncode, done.stdout, done.stderr)

    def build(self, *args: str, env: dict[str, str] | None = None,
              default_source: bool = False) -> Run:
        run = self.doit(*args, env=env, default_source=default_source)
        assert run.returncode == 0, run.stdout + run.stderr
        return run


def snapshot(*folders: Path) -> dict[str, str]:
    """Every file under the folders with its content hash (the state that must not change)."""
    seen: dict[str, str] = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")) if folder.exists() else []:
            if path.is_file() and not path.is_symlink():
                seen[str(path)] = hashlib.sha1(path.read_bytes()).hexdigest()
            else:
                seen[str(path)] = "dir" if path.is_dir() else "other"
    return seen


