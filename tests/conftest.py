"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.sample import generate_sample


@pytest.fixture(scope="session")
def sample_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A freshly generated sample (`firmware/` and `ql-ol-extsdk/`), shared by the session.

    Treat it as read-only: copy what a test changes.
    """
    root = tmp_path_factory.mktemp("sample_sdk")
    generate_sample(root)
    return root
