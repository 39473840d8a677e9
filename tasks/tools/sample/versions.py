"""The sample's two versions (base and next, as `etc/quectel-project-version` states them),
how the next one differs from the base (`CHANGES`), and the paths that the sample's vendor
lists and its tests name."""

from __future__ import annotations

import calendar
from dataclasses import dataclass

CMDLINE_BASE = (
    "noinitrd ro console=ttyMSM0,115200,n8 androidboot.hardware=qcom ehci-hcd.park=3 "
    "msm_rtb.filter=0x37 lpm_levels.sleep_disabled=1 rootfstype=ubifs rootflags=bulk_read "
    "root=ubi0:rootfs ubi.mtd=system"
)
CMDLINE_NEXT = CMDLINE_BASE + " loglevel=4"


@dataclass(frozen=True, slots=True)
class SampleVersion:
    """One firmware version of the sample, as `etc/quectel-project-version` states it."""

    project_rev: str
    package_time: str  # "YYYY-MM-DD,HH:MM", the vendor's format
    cmdline: str

    @property
    def epoch(self) -> int:
        """The package time read as UTC: the mtime of every file of this version."""
        day, clock = self.package_time.split(",")
        y, mo, d = (int(x) for x in day.split("-"))
        h, mi = (int(x) for x in clock.split(":"))
        return calendar.timegm((y, mo, d, h, mi, 0))

    @property
    def key(self) -> str:
        day, clock = self.package_time.split(",")
        return f"{self.project_rev}@{day.replace('-', '')}T{clock.replace(':', '')}"

    @property
    def version_file(self) -> str:
        return (
            "Project Name: RG520NNADA_VB\n"
            f"Project Rev : {self.project_rev}\n"
            "Branch  Name: SDX6X\n"
            "Custom  Name: STD\n"
            f"Package Time: {self.package_time}\n"
        )


BASE = SampleVersion("RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001", "2022-06-22,15:50",
                     CMDLINE_BASE)
NEXT = SampleVersion("RG520NNADAR01A01M4G_OCPU_BETA_20220715A_01.002", "2022-07-15,09:30",
                     CMDLINE_NEXT)


@dataclass(frozen=True, slots=True)
class SampleChanges:
    """How the next rootfs differs from the base one (paths relative to the rootfs)."""

    modified: tuple[str, ...]  # same kind, other content
    added: tuple[str, ...]  # every new path, directories included
    removed: tuple[str, ...]  # every path gone, directories included
    mode_changed: tuple[tuple[str, int, int], ...]  # (path, base mode, next mode)
    retargeted: tuple[tuple[str, str, str], ...]  # (symlink, base target, next target)
    file_to_symlink: tuple[tuple[str, str], ...]  # (path, next target)
    symlink_to_file: tuple[str, ...]
    new_empty_dirs: tuple[str, ...]
    removed_dir: str  # a directory removed with the files in it
    grown_file: str  # a binary that grew (bytes inserted in the middle)
    compressed_file: str  # a changed gzip file (never worth a binary diff)
    boot_cmdline: tuple[str, str]  # the kernel command line before and after
    abl_changed: bool = True
    kernel_changed: bool = True


CHANGES = SampleChanges(
    modified=(
        "bin/busybox",
        "boot/System.map-5.4.180",
        "build.prop",
        "etc/init.d/ql_manager",
        "etc/ql_manager.conf",
        "etc/quectel-project-version",
        "etc/version",
        "usr/bin/ql_fullota_demo",
        "usr/lib/libql_common_api.so.1",
        "usr/sbin/ql_manager_server",
        "usr/share/ql/ql_default_config.json.gz",
    ),
    added=(
        "etc/init.d/ql_new_app",
        "etc/ql_new_app.conf",
        "etc/rc5.d/S98ql_new_app",
        "usr/bin/ql_new_app",
        "usr/lib/libql_new.so",
        "usr/lib/libql_new.so.1",
        "usr/share/ql_new_app",
        "usr/share/ql_new_app/app.json",
        "usr/share/ql_new_app/icons",
        "usr/share/ql_new_app/icons/app.svg",
        "usrdata/new_empty_dir",
    ),
    removed=(
        "usr/bin/ql_old_tool",
        "usr/lib/libql_legacy.so",
        "usr/lib/libql_legacy.so.1",
        "usr/share/ql_legacy",
        "usr/share/ql_legacy/data.bin",
        "usr/share/ql_legacy/profiles",
        "usr/share/ql_legacy/profiles/default.cfg",
        "usr/share/ql_legacy/readme.txt",
    ),
    mode_changed=(("usr/bin/ql_log_collect.sh", 0o644, 0o755),),
    retargeted=(("etc/localtime", "/usr/share/zoneinfo/UTC", "/usr/share/zoneinfo/Asia/Shanghai"),),
    file_to_symlink=(("usr/bin/ql_at_client", "ql_manager_cli"),),
    symlink_to_file=("bin/ping",),
    new_empty_dirs=("usrdata/new_empty_dir",),
    removed_dir="usr/share/ql_legacy",
    grown_file="usr/lib/libql_common_api.so.1",
    compressed_file="usr/share/ql/ql_default_config.json.gz",
    boot_cmdline=(CMDLINE_BASE, CMDLINE_NEXT),
)

# Paths the vendor config lists of the sample name (identical or present in both versions).
NOOTA_FILE = "etc/webui/test.cfg"  # the same in both versions
FULLOTA_FILE = "usr/bin/ql_fullota_demo"
CHMOD_FILE = "usr/bin/ql_secret_tool"
CHMOD_DIR = "etc/ql_secret"
SECRET_FILE = "etc/ql_secret/key.pem"  # 0600
SETUID_FILE = "bin/ql_su_helper"  # 04755
DANGLING_LINKS = ("etc/resolv.conf", "var/log", "var/run", "var/tmp")
ABSOLUTE_LINKS = ("etc/localtime", "etc/mtab", "etc/resolv.conf", "var/run")
EMPTY_DIRS_BASE = ("proc", "sys", "usrdata/empty_dir", "var/volatile")
EMPTY_DIRS_NEXT = (*EMPTY_DIRS_BASE, "usrdata/new_empty_dir")
# In the SDK rootfs but never in a targetfiles SYSTEM: those folders come from the firmware.
SDK_ONLY = ("dev/.placeholder", "firmware/image/stale_from_sdk.mbn")
