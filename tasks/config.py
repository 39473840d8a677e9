"""The run's settings: one frozen value, built once from doit's parameters.

Defaults of the parameters live in pyproject.toml (`[tool.doit.tasks.NAME]`); relative paths
are taken from the project folder (where dodo.py is).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
SAMPLE_DIR = PROJECT_DIR / "sample_sdk"
TEMPLATES = PROJECT_DIR / "templates"
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
    metadata_from_image: bool = False  # SYSTEM's modes/owners from target/sdxlemur-sysfs.ubi
    base: str = ""  # delta: a version key, a unique prefix, a zip, or "" for the target's source
    mode: str = "all"  # delta: all, rootfs, modem, kernel (or a, l, m, o), alone or combined
    config_dir: Path = SAMPLE_DIR / "config"  # the vendor's config lists
    size_budget: int = 70 * 1024 * 1024  # bytes; a larger package is warned about (note 2.4)
    diff_timeout: float = 300.0  # seconds per diff; past it the file is shipped whole
    workers: int = 0  # diff processes; 0 = one per core
    permission_replays: int | None = 32  # verify: power losses among permission steps
    bases: str = ""  # delta: "N" (the last N archived versions) or a comma list; "" = one base
    target: Path | None = None  # the target targetfiles.zip when not `<out>/targetfiles.zip`

    @property
    def sdk_is_sample(self) -> bool:
        return self.sdk.resolve() == SAMPLE_SDK.resolve()

    @property
    def target_zip(self) -> Path:
        return self.target or self.out_dir / "targetfiles.zip"

    @property
    def pending_zip(self) -> Path:
        """Where `doit delta` leaves a package until `doit verify` has proven it: never where
        a job that publishes `out/` would take it."""
        return self.out_dir / ".unverified" / "update.zip"

    @property
    def update_zip(self) -> Path:
        return self.out_dir / "update.zip"

    @property
    def update_summary(self) -> Path:
        return self.out_dir / "update.json"

    @property
    def update_report(self) -> Path:
        return self.out_dir / "update.html"

    @property
    def log_dir(self) -> Path:
        """One log file per task run (`<UTC time>-<task>.log`)."""
        return self.state_dir / "logs"

    @property
    def verify_stamp(self) -> Path:
        """Written when `out/update.zip` passed verification (doit's target for `verify`)."""
        return self.state_dir / "verified"

    @property
    def bspatch_record(self) -> Path:
        """The patches Debian's bspatch proved, by the bytes involved (see `verify`)."""
        return self.state_dir / "bspatch-proven.json"

    @property
    def patch_cache(self) -> Path:
        return self.state_dir / "patch-cache"

    @property
    def inputs_manifest(self) -> Path:
        return self.state_dir / "targetfiles-inputs.json"

    @property
    def hash_cache(self) -> Path:
        return self.state_dir / "hash-cache.json"

    @property
    def image_tree_cache(self) -> Path:
        """The tree read from the SDK's sysfs image, by the image's sha1."""
        return self.state_dir / "sdk-image-tree.json"

    def member_sha1s(self, zip_sha256: str) -> Path:
        """The sha1s of the entries of a base not built here, kept by the zip's sha256."""
        return self.state_dir / "member-sha1s" / f"{zip_sha256}.json"

    @property
    def archive_hashes(self) -> Path:
        """sha256s of archived zips and their copies, by path (see `Archive`)."""
        return self.state_dir / "archive-sha256.json"


def resolve_path(value: str | Path, base: Path = PROJECT_DIR) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def make_settings(*, sdk: str = "", source: str = "", out: str = "out",
                  archive: str = "archive", state: str = "build", strict: bool = False,
                  metadata_from_image: bool = False,
                  base: str = "", mode: str = "all", config: str = "",
                  size_budget_mb: float = 70, diff_timeout: float = 300.0,
                  workers: int = 0, bases: str = "") -> Settings:
    return Settings(
        sdk=resolve_path(sdk) if sdk else SAMPLE_SDK,
        source=source,
        out_dir=resolve_path(out),
        archive_dir=resolve_path(archive),
        state_dir=resolve_path(state),
        strict=strict,
        metadata_from_image=metadata_from_image,
        base=base,
        mode=mode,
        config_dir=resolve_path(config) if config else SAMPLE_DIR / "config",
        size_budget=int(size_budget_mb * 1024 * 1024),
        diff_timeout=diff_timeout,
        workers=workers,
        bases=bases,
    )
