"""The settings a command takes: each task's own parameters and the chain-wide ones, with
their defaults and help, as doit's command line and pyproject.toml give them; which chain-wide
settings each task reads, and which task runs which before it (doit's task_dep).
"""

from __future__ import annotations

from typing import Any

from dfota.core.volumes import DEFAULT_CACHE_SIZE_MB, DEFAULT_SYSTEM_SIZE_MB
from dfota.formats.ziplimits import DEFAULT_ZIP_LIMITS, DEFLATE_LIMIT
from dfota.settings import DEFAULT_DIFF_TIMEOUT, DEFAULT_SIZE_BUDGET_MB, EMPTY_BY_NATURE

TABLE = "tool.dfota"
NO_LISTS = "none"  # `config = "none"`: no vendor lists apply

Param = dict[str, Any]


def _param(name: str, kind: type, default: object, text: str) -> Param:
    return {"name": name, "long": name.replace("_", "-"), "type": kind, "default": default,
            "help": text}


# chain-wide settings: [tool.dfota], or an option of any task (default None: not given)
CHAIN_PARAMS: list[Param] = [
    _param("sdk", str, None, "the ql-ol-extsdk folder of the SDK build [chain-wide; default: "
                             "the sample SDK, in its own workspace sample_sdk/work]"),
    _param("source", str, None, "source version: an archived version key (or unique prefix) "
                                "or a targetfiles.zip [chain-wide; default: the newest "
                                "version this workspace built or imported]"),
    _param("out", str, None, "folder for the outputs [chain-wide; default: out]"),
    _param("archive", str, None, "folder holding every version's targetfiles.zip [chain-wide; "
                                 "default: archive]"),
    _param("state", str, None, "folder for bookkeeping between runs [chain-wide; default: "
                               "build]"),
    _param("config", str, None, "folder of the vendor lists (quectel_*_filelist.txt), or "
                                "'none' [chain-wide; required for your own SDK]"),
    {**_param("archive_group_readable", bool, None, "archive folders and files readable by "
                                                    "the group [chain-wide; default: on]"),
     "inverse": "archive-private"},
    _param("wait", float, None, "wait up to SECONDS for another run of this workspace to end "
                                "[chain-wide; default: 0, say it is busy]"),
    _param("max_entry_mb", int, None, "refuse a zip entry (source, target, package) that "
                                      "declares more MiB [chain-wide; default: "
                                      f"{DEFAULT_ZIP_LIMITS.max_entry_mb}]"),
    _param("max_deflate_ratio", int, None, "refuse a deflated zip entry that declares more "
                                           "than this many times its stored bytes [chain-wide; "
                                           f"default: {DEFLATE_LIMIT}, deflate's own limit]"),
]
CHAIN_DEFAULTS: dict[str, object] = {"out": "out", "archive": "archive", "state": "build",
                                     "source": "", "sdk": "", "config": "", "wait": 0.0,
                                     "archive_group_readable": True,
                                     "max_entry_mb": DEFAULT_ZIP_LIMITS.max_entry_mb,
                                     "max_deflate_ratio": DEFAULT_ZIP_LIMITS.max_deflate_ratio,
                                     "empty_by_nature": list(EMPTY_BY_NATURE)}
TABLE_ONLY = ("empty_by_nature",)  # chain-wide settings only pyproject.toml can give
FOLDERS = ("out", "archive", "state")

TASK_PARAMS: dict[str, list[Param]] = {
    "targetfiles": [
        _param("strict", bool, False, "treat warnings (empty directories, special files, "
                                      "image drift) as errors"),
        _param("metadata_from_image", bool, False, "take SYSTEM's modes and owners from "
                                                   "target/sdxlemur-sysfs.ubi"),
        _param("allow_outside_links", bool, False, "pack rootfs files hard-linked from "
                                                   "outside the rootfs, with a warning"),
    ],
    "delta": [
        _param("base", str, "", "base version: an archived version key (or unique prefix) or "
                                "a targetfiles.zip [default: the source of the target]"),
        _param("mode", str, "all", "what the package updates: all, rootfs, modem, kernel (or "
                                   "a, l, m, o), alone or combined as l,m [default: all]"),
        _param("size_budget_mb", float, DEFAULT_SIZE_BUDGET_MB,
               "warn when the package is larger [default: %(default)s]"),
        _param("diff_timeout", float, DEFAULT_DIFF_TIMEOUT,
               "seconds per diff before the file is shipped whole [default: %(default)s]"),
        _param("workers", int, 0, "diff processes [default: one per core]"),
        _param("system_size_mb", float, None,
               "the room of the module's system volume, MiB [default: volume rootfs of the "
               f"SDK's target/sdxlemur-sysfs.ubi, else {DEFAULT_SYSTEM_SIZE_MB}]"),
        _param("cache_size_mb", float, None,
               "the room of the module's /cache, MiB [default: volume cachefs of the SDK's "
               f"target/sdxlemur-sysfs.ubi, else {DEFAULT_CACHE_SIZE_MB}]"),
        _param("bases", str, "", "also make and verify one package from each of these bases: "
                                 "N (the N newest versions older than the target) or a comma "
                                 "list of versions, into out/deltas/"),
    ],
    "verify": [
        _param("package", str, "", "prove this update.zip instead of the workspace's package "
                                   "(never moved or published; --source KEY overrides the "
                                   "version its quectel-project-version names)"),
        _param("target", str, "", "with --package: the target version (key or zip) [default: "
                                  "the one the update.json beside the package names]"),
    ],
    "prune": [
        _param("keep", int, 0, "how many of the newest archived versions to keep"),
        _param("force", bool, False, "also remove versions a kept version was built on"),
    ],
    "bench": [
        _param("folder", str, "", "where the benchmark's data and runs go [default: "
                                  "<state>/bench]"),
        _param("keep_data", bool, False, "keep the benchmark's folder (gigabytes) afterwards"),
        _param("update_benchmarks", bool, False, "rewrite BENCHMARKS.md with the results"),
        _param("before", str, "", "run the steps with this git revision's code too, and compare"),
        _param("ram_disk", str, "/dev/shm", "a folder on a tmpfs where the pair's steps run "
                                            "again (none: not at all)"),
    ],
    "import_base": [
        _param("firmware", str, "", "a release firmware package folder (update/, upgrade/, "
                                    "md5.txt, contents.xml)"),
        _param("template", str, "", "a targetfiles.zip whose OTA/, RADIO/, RECOVERY/ complete "
                                    "a base built from the images [default: the package's "
                                    "own upgrade/targetfiles.zip]"),
        _param("from_images", bool, False, "build the base from the images even when "
                                           "upgrade/targetfiles.zip is there"),
    ],
    "versions": [],
    "twin": [
        _param("version", str, "", "the archived version (key or unique prefix) whose flash "
                                   "the module starts with, when --root holds another or none"),
        _param("root", str, "", "the folder holding the module's flash (system tree, "
                                "partitions, usrdata)"),
        _param("adb", str, "127.0.0.1:5600", "HOST:PORT the module listens on for `adb connect` "
                                             "[default: %(default)s; adb's server probes "
                                             "5555-5585 for emulators]"),
        _param("at_pty", bool, False, "also give the module a USB AT port (a pty; its path is "
                                      "printed)"),
        _param("fault", list, [], "a fault to simulate (repeatable): power-cut:N, "
                                  "low-space:MB, wrong-version, corrupt-download, "
                                  "modified-file:PATH, slow-link:KBPS, port-busy:NAME, "
                                  "cut-download:KB"),
        _param("cafile", str, "", "certificates the module trusts for HTTPS downloads "
                                  "[default: the system's]"),
    ],
    "upgrade": [
        _param("device", list, [], "a module's adb serial (repeatable), or 'all' online"),
        _param("package", str, "", "the update.zip to send [default: for each module, the "
                                   "proven package whose source is the version it runs]"),
        _param("transfer", str, "adb", "adb (push it) or url (the module downloads it from "
                                       "--serve-url) [default: %(default)s]"),
        _param("at", str, "smd7", "the AT port: smd7 or smd11 (through adb shell) or the USB "
                                  "AT port's device [default: %(default)s]"),
        _param("serve_url", str, "", "the address of a `doit serve` the modules reach "
                                     "(http(s)://HOST:PORT), for --transfer url"),
        _param("unverified", bool, False, "send a package `doit verify` did not prove (with a "
                                          "warning)"),
        _param("kill_port_users", bool, False, "kill what holds the AT port (note 4.2.1 "
                                               "step 1)"),
        _param("push_timeout", float, 600.0, "seconds for adb push [default: %(default)s]"),
        _param("update_timeout", float, 1800.0, "seconds from AT+QFOTADL to the module back "
                                                "with its result [default: %(default)s]"),
    ],
    "serve": [
        _param("bind", str, "127.0.0.1", "the address to listen on; modules need one they "
                                         "reach [default: %(default)s]"),
        _param("port", int, 8070, "the port (0: any free one) [default: %(default)s]"),
        _param("cert", str, "", "serve HTTPS with this certificate (PEM)"),
        _param("key", str, "", "the certificate's private key (PEM), with --cert"),
    ],
}
DEVICE_TASKS = ("twin", "upgrade", "serve")  # tasks that deal with modules; none writes
# the chain-wide settings each task reads (the folders: every task)
CHAIN_READS: dict[str, tuple[str, ...]] = {
    "targetfiles": ("sdk", "source", "empty_by_nature"),
    "delta": ("config",),
}
DEPENDS_ON = {"delta": "targetfiles", "verify": "delta"}  # doit's task_dep
RECORDED = ("targetfiles", "delta")  # tasks whose settings the workspace records


def params_of(task: str) -> list[Param]:
    """The options a task takes on the command line: its own and the chain-wide ones."""
    return [*TASK_PARAMS[task], *CHAIN_PARAMS]


def chain_keys() -> tuple[str, ...]:
    return tuple(p["name"] for p in CHAIN_PARAMS)


def needs(task: str, other: str) -> bool:
    """`task` runs `other` (itself, or through doit's task_dep chain)."""
    while task:
        if task == other:
            return True
        task = DEPENDS_ON.get(task, "")
    return False
