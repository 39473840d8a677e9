"""The settings each task reads: small frozen values, cut from the one configuration that
`dfota.commands.configure` builds and checks when a command starts.

A task's up-to-date key is its settings value itself (`key_of`), so a task cannot read a
setting that is not in its key. Paths are absolute by the time a settings value exists.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dfota import __version__
from dfota.core.volumes import DEFAULT_VOLUMES, Volumes
from dfota.formats.ziplimits import DEFAULT_ZIP_LIMITS, ZipLimits
from dfota.state.store import State

PACKAGE_DIR = Path(__file__).resolve().parent
# the templates ship inside the package (package data); from a checkout, they are templates/
TEMPLATES = Path(str(importlib.resources.files("dfota.templates")))
# the checkout, when the package runs from one: the sample SDK and BENCHMARKS.md are there
PROJECT_DIR = PACKAGE_DIR.parent
SAMPLE_DIR = PROJECT_DIR / "sample_sdk"
SAMPLE_SDK = SAMPLE_DIR / "ql-ol-extsdk"
SAMPLE_BASE = SAMPLE_DIR / "firmware" / "upgrade" / "targetfiles.zip"
SAMPLE_CONFIG = SAMPLE_DIR / "config"
SAMPLE_WORK = SAMPLE_DIR / "work"  # the sample's own workspace: out/, archive/, state/

# rootfs folders that are empty on every build (mount points, run-time folders): carried by
# the package, never warned about
EMPTY_BY_NATURE = ("proc", "sys", "dev", "tmp", "run", "var/volatile", "mnt", "media")
DEFAULT_DIFF_TIMEOUT = 300.0
DEFAULT_SIZE_BUDGET_MB = 70.0
MB = 1024 * 1024
# the parts of the package that make no output of the chain: a change to them leaves every
# package up to date
NOT_IN_OUTPUTS = ("cli.py", "tools", "upgrade")


@functools.cache
def tool_digest() -> str:
    """The tool's own code and templates: a change to them makes every output out of date
    and every record of `dfota.state.store` one to rebuild."""
    digest = hashlib.sha1(__version__.encode())
    code = sorted(p for p in PACKAGE_DIR.rglob("*.py")
                  if p.relative_to(PACKAGE_DIR).parts[0] not in NOT_IN_OUTPUTS)
    templates = sorted(TEMPLATES.glob("*.j2"))
    for path, home in [*((p, PACKAGE_DIR) for p in code), *((p, TEMPLATES.parent)
                                                             for p in templates)]:
        name = path.relative_to(home).as_posix()
        digest.update(name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True, slots=True)
class Workspace:
    """Where one chain keeps its outputs, its state between runs, and the archive it uses.

    The workspace is the pair (outputs, state); the archive may be shared between workspaces.
    """

    out_dir: Path
    state_dir: Path
    archive_dir: Path
    target: Path | None = None  # the target targetfiles.zip when not `<out>/targetfiles.zip`
    archive_group_readable: bool = True  # archive folders 0750, files 0440 (else 0700, 0400)
    # what an entry of any zip the chain reads may declare: chain-wide, as every task reads
    # the zips another task read or wrote (the source, the target, the package)
    zip_limits: ZipLimits = DEFAULT_ZIP_LIMITS

    @property
    def root(self) -> Path:
        """The folder holding the outputs and the state: what `out/` names files against."""
        return Path(os.path.commonpath([self.out_dir, self.state_dir]))

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
    def deltas_dir(self) -> Path:
        """The packages from several bases (`doit delta --bases`)."""
        return self.out_dir / "deltas"

    @property
    def record(self) -> Path:
        """What this workspace built and with which settings (`dfota.state.workspace`)."""
        return self.state_dir / "workspace.json"

    @property
    def log_dir(self) -> Path:
        """One log file per task run (`<UTC time>-<task>.log`)."""
        return self.state_dir / "logs"

    @property
    def verify_stamp(self) -> Path:
        """Written when `out/update.zip` passed verification (doit's target for `verify`)."""
        return self.state_dir / "verified"

    @property
    def inputs_manifest(self) -> Path:
        return self.state_dir / "targetfiles-inputs.json"

    @property
    def delta_ahead(self) -> Path:
        """What `_delta_ahead` made for the next `doit delta`, and from what (its target)."""
        return self.state_dir / "delta-ahead.json"

    def open_state(self) -> State:
        """What this workspace keeps between runs (`dfota.state.store`), for one task action."""
        return State(self.state_dir, tool_digest())


@dataclass(frozen=True, slots=True)
class PackageInputs:
    """The files a package was made from, by their paths on this machine: kept in the state
    folder for `doit verify`; `out/` names them by `public_name` only."""

    base_zip: Path
    target_zip: Path
    config_dir: Path | None
    sdk: Path | None = None  # whose folder the target's build warnings name
    base_sha256: str = ""
    target_sha256: str = ""

    def places(self, workspace: Workspace) -> dict[Path, str]:
        """Each path of this machine that the package's summary may name, and its public
        name."""
        paths = (self.base_zip, self.target_zip, self.config_dir, self.sdk, workspace.out_dir,
                 workspace.state_dir)
        return {p: public_name(p, workspace.root) for p in paths if p is not None}

    def to_json(self) -> dict[str, str | None]:
        return {"base_zip": str(self.base_zip), "target_zip": str(self.target_zip),
                "config": str(self.config_dir) if self.config_dir else None,
                "sdk": str(self.sdk) if self.sdk else None,
                "base_sha256": self.base_sha256, "target_sha256": self.target_sha256}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> PackageInputs:
        def path(key: str) -> Path | None:
            value = data.get(key)
            return Path(str(value)) if value else None

        base, target = path("base_zip"), path("target_zip")
        if base is None or target is None:
            raise ValueError("no base or target")
        return cls(base, target, path("config"), path("sdk"), str(data.get("base_sha256", "")),
                   str(data.get("target_sha256", "")))


@dataclass(frozen=True, slots=True)
class TargetfilesSettings:
    """What `doit targetfiles` reads."""

    workspace: Workspace
    sdk: Path  # the ql-ol-extsdk folder
    source: str = ""  # a version key, a unique prefix of one, a zip, or "" for the default
    strict: bool = False
    metadata_from_image: bool = False  # SYSTEM's modes/owners from target/sdxlemur-sysfs.ubi
    empty_by_nature: tuple[str, ...] = EMPTY_BY_NATURE  # rootfs folders empty on every build
    allow_outside_links: bool = False  # pack files hard-linked from outside, with a warning

    @property
    def sdk_is_sample(self) -> bool:
        return is_sample_sdk(self.sdk)


@dataclass(frozen=True, slots=True)
class DeltaSettings:
    """What `doit delta` reads."""

    workspace: Workspace
    config_dir: Path | None  # the vendor's config lists; None: no lists apply
    base: str = ""  # a version key, a unique prefix, a zip, or "" for the target's source
    mode: str = "all"  # all, rootfs, modem, kernel (or a, l, m, o), alone or combined
    size_budget: int = int(DEFAULT_SIZE_BUDGET_MB * MB)  # bytes; larger is warned about
    diff_timeout: float = DEFAULT_DIFF_TIMEOUT  # seconds per diff; past it: shipped whole
    workers: int = 0  # diff processes; 0 = one per core
    bases: str = ""  # "N" (the N newest older versions) or a comma list; "" = one base
    # the module's system volume and /cache in bytes, as the user set them (else the
    # defaults): a size not set is the target's SDK image's when it has one (`Volumes.over`)
    volumes: Volumes = DEFAULT_VOLUMES


@dataclass(frozen=True, slots=True)
class VerifySettings:
    """What `doit verify` reads."""

    workspace: Workspace
    permission_replays: int | None = None  # power losses among permission steps (None: all)
    # `doit verify --package PATH`: prove that update.zip, from `source` (a version key or a
    # zip; "": the version its quectel-project-version names) to `target` ("": the one the
    # update.json beside it names); never moved or published
    package: Path | None = None
    source: str = ""
    target: str = ""
    config_dir: Path | None = None  # with `package`: the vendor lists it was made with


def key_of(settings: object) -> dict[str, object]:
    """A settings value as doit's `config_changed` key (paths as text)."""
    assert dataclasses.is_dataclass(settings) and not isinstance(settings, type)
    return {k: _plain(v) for k, v in dataclasses.asdict(settings).items()}


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def is_sample_sdk(sdk: Path) -> bool:
    return sdk.resolve() == SAMPLE_SDK.resolve()


def resolve_path(value: str | Path, base: Path | None = None) -> Path:
    """`value` as an absolute path; a relative one is taken from `base` (default: the
    current folder, where the command was started)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base or Path.cwd()) / path


def public_name(path: Path, root: Path) -> str:
    """How `out/` and the archive name a file of the build machine: by its path relative to
    the workspace's folder when inside it, else by its base name (the build machine's layout
    stays in the state folder and the logs)."""
    root = root.resolve()
    if root == root.parent:  # outputs and state share no folder but /
        return path.name
    try:
        return path.resolve().relative_to(root).as_posix()
    except ValueError:
        return path.name


def without_host_paths(value: object, places: Mapping[Path, str]) -> object:
    """`value` (JSON-like) with every absolute path of `places` in its text replaced by its
    public name (the longest first, so a folder inside another keeps its own name)."""
    order = sorted(((os.fspath(p), name) for p, name in places.items()),
                   key=lambda item: -len(item[0]))

    def scrub(item: object) -> object:
        if isinstance(item, str):
            for path, name in order:
                item = item.replace(path, name)
            return item
        if isinstance(item, dict):
            return {k: scrub(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [scrub(v) for v in item]
        return item

    return scrub(value)
