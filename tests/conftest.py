"""Fixtures shared by the test modules."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfota.tools.sample.generate import generate_sample
from tests.oracle import ENV, OracleMissing, oracle_folder
from tests.workspace import Workspace


@pytest.fixture(scope="session")
def sample_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly generated sample (`firmware/` and `ql-ol-extsdk/`), shared by the session.

    Treat it as read-only: copy what a test changes.
    """
    root = tmp_path_factory.mktemp("sample_sdk")
    generate_sample(root)
    return root


@pytest.fixture
def ws(sample_sdk: Path) -> Iterator[Workspace]:
    """The sample's next SDK build and base targetfiles.zip in a private folder."""
    root = Path(tempfile.mkdtemp(prefix="dfota-ws-"))
    shutil.copytree(sample_sdk / "ql-ol-extsdk", root / "sdk", symlinks=True)
    source = root / "source.zip"
    shutil.copyfile(sample_sdk / "firmware/upgrade/targetfiles.zip", source)
    yield Workspace(root, root / "sdk", source)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def oracle() -> Path:
    """The real updater's folder (`DFOTA_ORACLE`): the test skips when it is unset and fails
    when it names no runnable oracle."""
    try:
        folder = oracle_folder()
    except OracleMissing as exc:
        pytest.fail(str(exc))
    if folder is None:
        pytest.skip(f"{ENV} is not set: no real updater to compare the host model with "
                    "(.ci/run sets it)")
    return folder
