"""The code stays ruff clean and mypy clean (part of the test command, so CI checks both)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is part of the test extra: pip install -e '.[test]'"
    return found


def test_ruff_reports_nothing() -> None:
    done = subprocess.run([_tool("ruff"), "check", "--no-cache", "tasks", "tests", "dodo.py"],
                          cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_reports_nothing() -> None:
    # what it checks and how strictly: [tool.mypy] in pyproject.toml (strict on the engine)
    done = subprocess.run([_tool("mypy"), "--cache-dir", os.devnull],
                          cwd=PROJECT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
