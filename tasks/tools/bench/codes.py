"""The code a measured command runs: this checkout's, or, for a before/after comparison, a git
revision's, checked out in a temporary `git worktree` and made importable the way that
revision laid out its package (`tasks` before the layout, `dfota` after it), with this
checkout's virtual environment for the libraries. doit finds the revision's loader through
the `pyproject.toml` of its working folder, the revision's own."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dfota.core.errors import DfotaError
from dfota.settings import PROJECT_DIR

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AFTER = "after"  # this checkout's code
BEFORE = "before"  # the revision's


@dataclass(frozen=True, slots=True)
class Code:
    """Where a command of this code runs (its project folder: `pyproject.toml`, `dodo.py`)
    and what its environment adds."""

    name: str  # AFTER or BEFORE
    root: Path
    revision: str  # what it is, for the report
    ubi_module: str  # the module that defines read_ubifs
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def prefix(self) -> str:
        """Before the name of each log: none for this checkout's code."""
        return "" if self.name == AFTER else f"{self.name}-"

    @property
    def tag(self) -> str:
        """After a step's name in what the run says: none for this checkout's code."""
        return "" if self.name == AFTER else f" [{self.name}: {self.revision.split()[0]}]"

    def folder(self, run: Path) -> Path:
        """Where this code's workspaces go in the run's folder."""
        return run if self.name == AFTER else run / self.name


def _git(*args: str, failed: str = "") -> str:
    """git's output in this checkout; `failed`: what a failure means, instead of git's words."""
    try:
        done = subprocess.run(["git", "-C", str(PROJECT_DIR), *args], capture_output=True,
                              text=True, check=False)
    except OSError as exc:
        raise DfotaError(f"cannot run git: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no message"]
        raise DfotaError(failed or f"git {args[0]} failed: {lines[-1]}", PROJECT_DIR)
    return done.stdout.strip()


def _package_dirs(root: Path) -> dict[str, str]:
    """The revision's `[tool.setuptools] package-dir`: import name -> folder (none before the
    layout, whose folder `tasks/` is its package)."""
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DfotaError(f"cannot read its pyproject.toml ({exc})", root) from exc
    dirs = project.get("tool", {}).get("setuptools", {}).get("package-dir", {})
    return {str(name): str(folder) for name, folder in dirs.items()}


def _link_packages(root: Path, dirs: Mapping[str, str]) -> None:
    """Make each import name of `dirs` a folder under `root`, a link to its folder, as the
    installed package maps them (`dfota` -> tasks/, `dfota.templates` -> templates/)."""
    root = root.resolve()
    for name in sorted(dirs, key=lambda n: n.count(".")):
        where = root.joinpath(*name.split("."))
        parent = where.parent.resolve()
        if not os.path.lexists(parent / where.name):
            os.symlink(os.path.relpath(root / dirs[name], parent), parent / where.name)


def _ubi_module(root: Path, package: str) -> str:
    """The module of the code under `root/tasks` that defines read_ubifs, by its import name."""
    for path in sorted((root / "tasks").rglob("*.py")):
        if "\ndef read_ubifs(" in path.read_text("utf-8", errors="replace"):
            parts = path.relative_to(root / "tasks").with_suffix("").parts
            return ".".join([package, *(p for p in parts if p != "__init__")])
    raise DfotaError("no module of the code defines read_ubifs", root / "tasks")


def this_checkout(compared: bool = False) -> Code:
    """This checkout's code; `compared`: named by its git revision for the report."""
    revision = "this checkout"
    if compared:
        revision = _git("describe", "--always", "--dirty=, with changes not committed")
    return Code(AFTER, PROJECT_DIR, revision, _ubi_module(PROJECT_DIR, "dfota"))


def _subject(commit: str) -> str:
    return f"{commit[:9]} \"{_git('log', '-1', '--format=%s', commit)}\""


@contextlib.contextmanager
def revision_checkout(revision: str, where: Path) -> Iterator[Code]:
    """The code of git revision `revision`, checked out at `where` for as long as the context
    lasts (then removed)."""
    commit = _git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}",
                  failed=f"--before {revision}: not a commit of this checkout's repository")
    _remove_worktree(where)
    _git("worktree", "add", "--detach", "--force", str(where), commit)
    try:
        dirs = _package_dirs(where)
        _link_packages(where, dirs)
        package = next((name for name, folder in dirs.items() if folder == "tasks"), "tasks")
        yield Code(BEFORE, where, _subject(commit), _ubi_module(where, package),
                   {"PYTHONPATH": str(where)})
    finally:
        _remove_worktree(where)


def _remove_worktree(where: Path) -> None:
    if where.exists():
        with contextlib.suppress(DfotaError):
            _git("worktree", "remove", "--force", str(where))
        shutil.rmtree(where, ignore_errors=True)
    _git("worktree", "prune")


def compile_code(code: Code) -> None:
    """Write the bytecode of the code's modules beforehand, so no measured run compiles them."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(code.root / "tasks")],
                   cwd=code.root, env={**os.environ, **code.env}, check=False,
                   stdout=subprocess.DEVNULL)
