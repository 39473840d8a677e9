"""The package as a user installs it: the wheel `python -m build --wheel` makes, installed in a
fresh virtual environment, and its `dfota` command run in a folder with no dodo.py and no
pyproject.toml."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from dfota.core.errors import EXIT_INPUT
from tests.oracle import check_published
from tests.test_configuration import BASE_KEY, NEXT_KEY
from tests.workspace import PROJECT, SAMPLE_LISTS

pytestmark = pytest.mark.slow  # a wheel built, a virtual environment made, the chain run

SOURCES = ("pyproject.toml", "README.md", "tasks", "templates")  # what the wheel is made of


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources: setuptools' scratch folders (build/,
    *.egg-info) stay out of the checkout, where build/ is a workspace's state folder."""
    root = tmp_path_factory.mktemp("wheel")
    (root / "src").mkdir()
    for name in SOURCES:
        source = PROJECT / name
        if source.is_dir():
            shutil.copytree(source, root / "src" / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copyfile(source, root / "src" / name)
    done = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation",
                           "--outdir", str(root / "dist"), str(root / "src")],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    (made,) = (root / "dist").glob("quecopen_dfota-*.whl")
    return made


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment (its bin/) holding the wheel's package. The libraries it
    depends on come from the project's environment (pip resolved them from the same
    dependency list for it), added to the path by a .pth file: the editable install there is
    never imported, the package is the wheel's alone."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True)
    site = subprocess.run([str(python), "-c", "import sysconfig; "
                           "print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "project-libraries.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    where = subprocess.run([str(python), "-c", "import dfota.cli, dfota.templates as t; "
                            "print(dfota.cli.__file__); print(t.__file__)"],
                           capture_output=True, text=True, check=True, cwd=venv,
                           env=_without_checkout()).stdout.split()
    assert all(Path(p).is_relative_to(Path(site) / "dfota") for p in where), where
    return venv / "bin"


def _without_checkout() -> dict[str, str]:
    """The environment, without a path that would import the package from the checkout."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def dfota(bin_dir: Path, folder: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / "dfota"), *argv], cwd=folder, capture_output=True,
                          text=True, env=_without_checkout(), check=False, timeout=600)


def test_the_wheel_holds_every_module_the_templates_and_the_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(zf.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    modules = {"dfota/" + p.relative_to(PROJECT / "tasks").as_posix()
               for p in (PROJECT / "tasks").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules <= names, sorted(modules - names)
    assert {"dfota/templates/updater-script.j2", "dfota/templates/report.html.j2"} <= names
    assert "dfota = dfota.cli:main" in entry_points


def test_the_installed_command_runs_the_chain_from_an_empty_folder(
        installed: Path, sample_sdk: Path, tmp_path: Path) -> None:
    """A copy of the sample stands for the user's own SDK, its base and its vendor lists;
    doit's configuration (default tasks, task processes, reporter, backend, record file)
    comes from the package."""
    user = tmp_path / "user"
    user.mkdir()
    shutil.copytree(sample_sdk / "ql-ol-extsdk", user / "sdk", symlinks=True)
    shutil.copyfile(sample_sdk / "firmware/upgrade/targetfiles.zip", user / "base.zip")
    shutil.copytree(SAMPLE_LISTS, user / "lists")
    chain = ["targetfiles", "--sdk", "sdk", "--source", "base.zip", "--config", "lists",
             "delta", "verify"]
    run = dfota(installed, user, *chain)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads((user / "out" / "update.json").read_text())
    assert summary["published"] and summary["verify"]["ok"], summary
    assert (summary["package"], summary["source"], summary["target"]) == (
        "out/update.zip", BASE_KEY, NEXT_KEY)
    check_published(user / "out", set())  # and by the module's real updater, when it is here
    assert f"verify: {user / 'out' / 'update.zip'} passed " in run.stdout
    assert sorted(p.name for p in user.iterdir()) == [".doit.db", "archive", "base.zip",
                                                      "build", "lists", "out", "sdk"]
    with sqlite3.connect(user / ".doit.db") as db:  # the package's backend: a write-ahead log
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    # no task named: the package's default tasks, with the same settings, nothing to do
    again = dfota(installed, user, "--sdk", "sdk", "--source", "base.zip", "--config", "lists")
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.splitlines()[-1].startswith("up to date: nothing changed; ")
    assert ".  targetfiles" in run.stdout and ".  " not in again.stdout, again.stdout


def test_the_installed_command_without_an_sdk_asks_for_one(installed: Path,
                                                           tmp_path: Path) -> None:
    """No --sdk, no pyproject.toml naming one, no sample beside the package: one line and
    the exit code of bad input (a setting the user must give, as the vendor lists are)."""
    run = dfota(installed, tmp_path)
    assert run.returncode == EXIT_INPUT, run.stdout + run.stderr
    assert run.stderr.splitlines() == [
        f"error: {tmp_path / 'pyproject.toml'}: name your SDK (its ql-ol-extsdk folder): "
        'sdk = "DIR" in [tool.dfota], or --sdk DIR']
    assert not (tmp_path / "out").exists() and not (tmp_path / "build").exists()
    listed = dfota(installed, tmp_path, "list")  # a command that builds nothing needs none
    assert listed.returncode == 0 and "targetfiles " in listed.stdout, listed.stderr
    sample = dfota(installed, tmp_path, "sample")  # never made inside the installed package
    assert sample.returncode == EXIT_INPUT, sample.stdout + sample.stderr
    (line,) = sample.stderr.splitlines()
    assert line.startswith("error: ") and line.endswith("; this package is installed"), line
    site = installed.parent / "lib"
    assert not list(site.glob("python*/site-packages/sample_sdk"))
