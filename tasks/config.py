"""The run's settings: one frozen value, built once from doit's parameters.

Defaults of the parameters live in pyproject.toml (`[tool.doit.tasks.NAME]`); relative paths
are taken from the project folder (where dodo.py is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DIR = PROJECT_DIR / "sample_sdk"
SAMPLE_SDK = SAMPLE_DIR / "ql-ol-extsdk"
SAMPLE_BASE = SAMPLE_DIR / "firmware" / "upgrade" / "targetfiles.zip"


@dataclass(frozen=True, slots=True)
class Settings:
    sdk: Path  # the ql-ol-extsdk folder
    source: str  # a version key, a unique prefix of one, a path to a zip, or "" for the default
    out_dir: Path
    archive_dir: Path
    state_dir: Path  # bookkeeping between runs (hash cache, input manifests); safe to delete
    strict: bool = False

    @property
    def sdk_is_sample(self) -> bool:
        return self.sdk.resolve() == SAMPLE_SDK.resolve()

    @property
    def target_zip(self) -> Path:
        return self.out_dir / "targetfiles.zip"

    @property
    def inputs_manifest(self) -> Path:
        return self.state_dir / "targetfiles-inputs.json"

    @property
    def hash_cache(self) -> Path:
        return self.state_dir / "hash-cache.json"


def resolve_path(value: str | Path, base: Path = PROJECT_DIR) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def make_settings(*, sdk: str = "", source: str = "", out: str = "out",
                  archive: str = "archive", state: str = "build",
                  strict: bool = False) -> Settings:
    return Settings(
        sdk=resolve_path(sdk) if sdk else SAMPLE_SDK,
        source=source,
        out_dir=resolve_path(out),
        archive_dir=resolve_path(archive),
        state_dir=resolve_path(state),
        strict=strict,
    )
