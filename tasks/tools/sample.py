"""The sample SDK: a vendor firmware package of a base version and the SDK build of the next.

`generate_sample(root)` writes, from a fixed seed and nothing else:

- `root/firmware/`: the release package of the base version (note section 2.1.3):
  `update/` (sdxlemur-boot.img, sdxlemur-sysfs.ubi, NON-HLOS.ubi, abl.elf),
  `upgrade/targetfiles.zip`, `contents.xml`, `md5.txt`;
- `root/ql-ol-extsdk/`: the SDK output of the next version (note section 2.2.2):
  `target/` (sdxlemur-boot.img, abl.elf, sdxlemur-sysfs.ubi) and the rootfs `ql-ol-rootfs/`.

The trees are plain data (`base_rootfs()`, `next_rootfs()`, `modem_files()`,
`base_targetfiles_tree()`), and `CHANGES` says how the next version differs from the base.
The zip is packed by Info-ZIP `zip` and the UBI images by mtd-utils, as the vendor does.
"""

from __future__ import annotations

import base64
import calendar
import functools
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dfota.core.errors import DfotaError
from dfota.core.tree import DIR, FILE, SYMLINK
from dfota.formats import bootimg, elf
from dfota.formats.bootimg import build_boot_image, make_arm_zimage, make_dtb
from dfota.formats.elf import build_abl_elf

SEED = b"quecopen-dfota-sample/1"
FIRMWARE_DIR = "firmware"
SDK_DIR = "ql-ol-extsdk"
ROOTFS_DIR = "ql-ol-rootfs"
STAMP_NAME = ".sample-stamp"
_BUILD_PREFIX = ".sample-build."

# sdxlemur NAND geometry
MIN_IO = 4096
PEB_SIZE = 256 * 1024
LEB_SIZE = 253952
MAX_LEB_COUNT = 2146
SYSFS_VOLUMES = (("rootfs", 0), ("usrfs", 1), ("cachefs", 2), ("systemrw", 3))
# the volumes' sizes in LEBs, as on a module's 512 MiB NAND: the rootfs's room for updates
# (and for the bench's 210 MB of /system), a cache for the updater's copies; only the LEBs
# that hold data take room in the image
SYSFS_VOLUME_LEBS = {"rootfs": 1200, "usrfs": 16, "cachefs": 256, "systemrw": 24}
MODEM_VOLUME = "modem"

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
class Node:
    """One entry of a sample tree: a file (data), a directory, or a symlink (link text)."""

    kind: str
    mode: int  # permission bits incl. setuid; 0o777 for symlinks
    data: bytes = b""
    link: str = ""


def _file(data: bytes | str, mode: int = 0o644) -> Node:
    return Node(FILE, mode, data.encode() if isinstance(data, str) else data)


def _dir(mode: int = 0o755) -> Node:
    return Node(DIR, mode)


def _link(target: str) -> Node:
    return Node(SYMLINK, 0o777, link=target)


Tree = dict[str, Node]


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
DEVICE_NODES = (  # name, type, mode, major, minor: what the UBI image has under dev/
    ("console", "c", 0o600, 5, 1),
    ("kmsg", "c", 0o644, 1, 11),
    ("null", "c", 0o666, 1, 3),
    ("ptmx", "c", 0o666, 5, 2),
    ("random", "c", 0o666, 1, 8),
    ("tty", "c", 0o666, 5, 0),
    ("urandom", "c", 0o666, 1, 9),
    ("zero", "c", 0o666, 1, 5),
)


# ---------------------------------------------------------------------------------------------
# Content


def _prng(label: str, size: int) -> bytes:
    return hashlib.shake_256(SEED + b"/" + label.encode()).digest(size)


def _code(label: str, size: int) -> bytes:
    """ARM-looking code: words drawn from a small per-file vocabulary (compresses like code)."""
    vocab = _prng(label + "#vocab", 1024)
    words = [vocab[i : i + 4] for i in range(0, 1024, 4)]
    return b"".join(words[b] for b in _prng(label + "#code", (size + 3) // 4))[:size]


def _edit(data: bytes, label: str, count: int, *, grow: int = 0) -> bytes:
    """`data` with `count` small patches (24 bytes each) and `grow` bytes inserted mid-way."""
    out = bytearray(data)
    picks = _prng(label + "#edits", 4 * count)
    for i in range(count):
        pos = int.from_bytes(picks[4 * i : 4 * i + 4], "little") % max(1, len(out) - 24)
        out[pos : pos + 24] = _prng(f"{label}#edit{i}", 24)
    if grow:
        mid = len(out) // 2
        out[mid:mid] = _code(label + "#grow", grow)
    return bytes(out)


_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")
_PHDR = struct.Struct("<8I")
_INTERP = b"/lib/ld-linux-armhf.so.3\0"
_EF_ARM_HARD_FLOAT_EABI5 = 0x05000400


def _arm_elf(code: bytes, rodata: bytes, *, shared: bool) -> bytes:
    """A small ELF32 ARM executable or shared object: one PT_LOAD over the whole file."""
    base = 0 if shared else 0x00010000
    phnum = 1 if shared else 3
    head = _EHDR.size + phnum * _PHDR.size
    interp_off = head
    body_off = head + (0 if shared else len(_INTERP))
    body_off += -body_off % 16
    total = body_off + len(code) + len(rodata)
    phdrs = []
    if not shared:
        phdrs.append(_PHDR.pack(6, _EHDR.size, base + _EHDR.size, base + _EHDR.size,
                                phnum * _PHDR.size, phnum * _PHDR.size, 4, 4))  # PT_PHDR
        phdrs.append(_PHDR.pack(3, interp_off, base + interp_off, base + interp_off,
                                len(_INTERP), len(_INTERP), 4, 1))  # PT_INTERP
    phdrs.append(_PHDR.pack(1, 0, base, base, total, total, 5, 0x10000))  # PT_LOAD r-x
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    ehdr = _EHDR.pack(ident, 3 if shared else 2, 40, 1, base + body_off, _EHDR.size, 0,
                      _EF_ARM_HARD_FLOAT_EABI5, _EHDR.size, _PHDR.size, phnum, 40, 0, 0)
    out = bytearray(ehdr + b"".join(phdrs))
    if not shared:
        out += _INTERP
    out += bytes(body_off - len(out))
    return bytes(out + code + rodata)


def _program(name: str, size: int, *, shared: bool = False, version: str = "1.0.0",  # noqa: PLR0913
             edits: int = 0, grow: int = 0) -> bytes:
    """A binary of about `size` bytes; `edits`/`grow` give the next build of the same program."""
    label = f"elf:{name}"
    rodata = "\0".join((
        f"{name} {version}", f"Usage: {name} [options]", "GLIBC_2.4", "libc.so.6",
        "/etc/ql_manager.conf", "%s: %s\n", f"Copyright (c) Quectel Wireless Solutions {name}",
    )).encode() + b"\0"
    code = _code(label, max(256, size - 128 - len(rodata)))
    if edits or grow:
        code = _edit(code, label, edits, grow=grow)
    return _arm_elf(code, rodata, shared=shared)


def _gzip(data: bytes) -> bytes:
    """gzip with a fixed header (no name, mtime 0, OS Unix), whatever the Python version."""
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9)
    body = deflate.compress(data) + deflate.flush()
    trailer = struct.pack("<II", zlib.crc32(data), len(data) & 0xFFFFFFFF)
    return b"\x1f\x8b\x08\x00" + bytes(4) + b"\x02\x03" + body + trailer


def _pem(label: str, kind: str, count: int, size: int) -> str:
    blocks = []
    for i in range(count):
        raw = base64.b64encode(_prng(f"{label}:{i}", size)).decode()
        lines = "\n".join(raw[j : j + 64] for j in range(0, len(raw), 64))
        blocks.append(f"-----BEGIN {kind}-----\n{lines}\n-----END {kind}-----\n")
    return "".join(blocks)


_SYMBOL_WORDS = ("ql", "msm", "qcom", "ubi", "mtd", "usb", "gsi", "ipa", "rmnet", "smd",
                 "glink", "pcie", "clk", "gpio", "tz", "scm", "rpmh", "spmi", "i2c", "uart")
_SYMBOL_VERBS = ("init", "probe", "remove", "read", "write", "ioctl", "open", "release",
                 "suspend", "resume", "irq_handler", "work_fn", "get", "put", "alloc", "free")


def _system_map(shifted: bool) -> str:
    picks = _prng("system.map", 4000)
    lines, addr = [], 0xC0008000
    for i in range(2000):
        a, b = picks[2 * i], picks[2 * i + 1]
        sym = f"{_SYMBOL_WORDS[a % 20]}_{_SYMBOL_VERBS[b % 16]}_{i}"
        kind = "T" if a % 3 else "t"
        shift = 0x40 if shifted and 1200 <= i < 1260 else 0
        lines.append(f"{addr + shift:08x} {kind} {sym}\n")
        addr += 0x20 + (b % 8) * 0x10
    return "".join(lines)


def _default_config(next_version: bool) -> bytes:
    entries = [{"key": f"ql.config.item{i}", "value": _prng(f"cfg:{i}", 6).hex(),
                "persist": i % 3 == 0} for i in range(600)]
    if next_version:
        entries[17]["value"] = "enabled"
        entries.append({"key": "ql.config.new_app", "value": "1", "persist": True})
    return _gzip(json.dumps(entries, indent=1, sort_keys=True).encode() + b"\n")


def _tzif(name: str) -> bytes:
    return b"TZif2" + bytes(15) + _prng(f"tz:{name}", 120 + len(name) * 13)


def _init_script(name: str, daemon: str, extra: str = "") -> str:
    return (
        "#!/bin/sh\n"
        f"# /etc/init.d/{name}: start and stop {daemon}\n"
        f"DAEMON=/usr/sbin/{daemon}\n"
        f"{extra}"
        "case \"$1\" in\n"
        f"  start) echo \"Starting {daemon}\"; start-stop-daemon -S -b -x $DAEMON -- $OPTS ;;\n"
        f"  stop) echo \"Stopping {daemon}\"; start-stop-daemon -K -x $DAEMON ;;\n"
        "  restart) $0 stop; $0 start ;;\n"
        "  *) echo \"Usage: $0 {start|stop|restart}\"; exit 1 ;;\n"
        "esac\nexit 0\n"
    )


_BIN_APPLETS = (
    "ash", "cat", "chmod", "chown", "cp", "date", "dd", "df", "dmesg", "echo", "egrep", "false",
    "fgrep", "grep", "gunzip", "gzip", "hostname", "kill", "ln", "login", "ls", "mkdir", "mknod",
    "more", "mount", "mv", "netstat", "pidof", "ping", "ps", "pwd", "rm", "rmdir", "sed", "sh",
    "sleep", "stty", "su", "sync", "tar", "touch", "true", "umount", "uname", "vi", "zcat",
)
_SBIN_APPLETS = (
    "halt", "ifconfig", "ifdown", "ifup", "insmod", "klogd", "lsmod", "mdev", "modprobe",
    "poweroff", "reboot", "rmmod", "route", "syslogd", "udhcpc", "watchdog",
)
_USR_BIN_APPLETS = (
    "awk", "basename", "cut", "dirname", "du", "env", "expr", "find", "free", "head", "hexdump",
    "id", "killall", "less", "logger", "md5sum", "nslookup", "od", "printf", "readlink", "reset",
    "seq", "sort", "tail", "tee", "test", "tftp", "top", "tr", "traceroute", "uniq", "uptime",
    "wc", "wget", "which", "xargs", "yes",
)
_USR_SBIN_APPLETS = ("brctl", "chroot", "crond", "ntpd", "telnetd")

# (path, size, mode): executables in both versions, unchanged unless CHANGES says otherwise
_EXECUTABLES = (
    ("bin/ql_su_helper", 12 * 1024, 0o4755),
    ("sbin/init", 40 * 1024, 0o755),
    ("sbin/start-stop-daemon", 24 * 1024, 0o755),
    ("sbin/ubiattach", 24 * 1024, 0o755),
    ("sbin/ubidetach", 20 * 1024, 0o755),
    ("sbin/ubimkvol", 22 * 1024, 0o755),
    ("sbin/ubinfo", 26 * 1024, 0o755),
    ("usr/bin/curl", 96 * 1024, 0o755),
    ("usr/bin/iperf3", 64 * 1024, 0o755),
    ("usr/bin/openssl", 128 * 1024, 0o755),
    ("usr/bin/ql_atcmd_demo", 18 * 1024, 0o755),
    ("usr/bin/ql_data_call_demo", 26 * 1024, 0o755),
    ("usr/bin/ql_fota_demo", 24 * 1024, 0o755),
    ("usr/bin/ql_gpio_demo", 14 * 1024, 0o755),
    ("usr/bin/ql_manager_cli", 32 * 1024, 0o755),
    ("usr/bin/ql_nw_demo", 22 * 1024, 0o755),
    ("usr/bin/ql_secret_tool", 20 * 1024, 0o755),
    ("usr/bin/ql_sms_demo", 20 * 1024, 0o755),
    ("usr/bin/ql_uart_demo", 14 * 1024, 0o755),
    ("usr/sbin/atfwd_daemon", 36 * 1024, 0o755),
    ("usr/sbin/dnsmasq", 98 * 1024, 0o755),
    ("usr/sbin/hostapd", 180 * 1024, 0o755),
    ("usr/sbin/iptables", 64 * 1024, 0o755),
    ("usr/sbin/ql_dfota_agent", 28 * 1024, 0o755),
    ("usr/sbin/qmi_shutdown_modem", 12 * 1024, 0o755),
)
# (real file, size, links to it): shared libraries in both versions
_LIBRARIES = (
    ("lib/ld-2.31.so", 128 * 1024, ("lib/ld-linux-armhf.so.3",)),
    ("lib/libc-2.31.so", 288 * 1024, ("lib/libc.so.6",)),
    ("lib/libdl-2.31.so", 12 * 1024, ("lib/libdl.so.2",)),
    ("lib/libgcc_s.so.1", 64 * 1024, ()),
    ("lib/libm-2.31.so", 88 * 1024, ("lib/libm.so.6",)),
    ("lib/libpthread-2.31.so", 60 * 1024, ("lib/libpthread.so.0",)),
    ("lib/librt-2.31.so", 20 * 1024, ("lib/librt.so.1",)),
    ("lib/libz.so.1.2.11", 56 * 1024, ("lib/libz.so.1", "usr/lib/libz.so")),
    ("usr/lib/libcrypto.so.1.1", 280 * 1024, ("usr/lib/libcrypto.so",)),
    ("usr/lib/libcurl.so.4.7.0", 72 * 1024, ("usr/lib/libcurl.so", "usr/lib/libcurl.so.4")),
    ("usr/lib/libdsi_netctrl.so.1", 36 * 1024, ("usr/lib/libdsi_netctrl.so",)),
    ("usr/lib/libqmi_cci.so.1", 40 * 1024, ("usr/lib/libqmi_cci.so",)),
    ("usr/lib/libqmiservices.so.1", 90 * 1024, ("usr/lib/libqmiservices.so",)),
    ("usr/lib/libql_fota.so.1", 16 * 1024, ("usr/lib/libql_fota.so",)),
    ("usr/lib/libql_gpio.so.1", 12 * 1024, ("usr/lib/libql_gpio.so",)),
    ("usr/lib/libql_nw.so.1", 24 * 1024, ("usr/lib/libql_nw.so",)),
    ("usr/lib/libql_sim.so.1", 20 * 1024, ("usr/lib/libql_sim.so",)),
    ("usr/lib/libql_sms.so.1", 20 * 1024, ("usr/lib/libql_sms.so",)),
    ("usr/lib/libql_uart.so.1", 12 * 1024, ("usr/lib/libql_uart.so",)),
    ("usr/lib/libql_voice.so.1", 18 * 1024, ("usr/lib/libql_voice.so",)),
    ("usr/lib/libssl.so.1.1", 108 * 1024, ("usr/lib/libssl.so",)),
)
_SERVICES = (  # init script, daemon, rc5.d start link, rc6.d kill link (or "")
    ("atfwd", "atfwd_daemon", "S80atfwd", ""),
    ("dnsmasq", "dnsmasq", "S60dnsmasq", "K40dnsmasq"),
    ("hostapd", "hostapd", "S70hostapd", "K30hostapd"),
    ("networking", "ifup", "S20networking", "K90networking"),
    ("ql_fota", "ql_dfota_agent", "S95ql_fota", ""),
    ("syslog", "syslogd", "S10syslog", "K95syslog"),
    ("usb", "usb_composition", "S40usb", ""),
)


def _manager_conf(next_version: bool) -> str:
    return (
        "# ql_manager_server configuration\n"
        "[general]\n"
        "log_level = info\n"
        f"max_clients = {16 if next_version else 8}\n"
        "socket = /var/run/ql_manager.sock\n"
        "[modem]\n"
        "at_port = /dev/smd8\n"
        "retry_interval_ms = 500\n"
    )


def _manager_init(next_version: bool) -> str:
    opts = "OPTS=\"-c /etc/ql_manager.conf -d\"\n" if next_version else (
        "OPTS=\"-c /etc/ql_manager.conf\"\n")
    return _init_script("ql_manager", "ql_manager_server", opts)


def _build_prop(version: SampleVersion) -> str:
    return (
        "# begin build properties\n"
        f"ro.build.id={version.project_rev}\n"
        f"ro.build.display.id={version.project_rev}\n"
        f"ro.build.date={version.package_time.replace(',', ' ')}\n"
        f"ro.build.date.utc={version.epoch}\n"
        "ro.product.name=sdxlemur\n"
        "ro.product.device=RG520NNADA\n"
        "ro.board.platform=sdxlemur\n"
        "persist.sys.usb.config=diag,serial_smd,rmnet_ipa,adb\n"
        "# end build properties\n"
    )


def _rootfs(next_version: bool) -> Tree:  # noqa: C901, PLR0915
    version = NEXT if next_version else BASE
    tree: Tree = {}
    for folder in ("bin", "boot", "cache", "cache/recovery", "data", "data/ql_app", "dev",
                   "etc", "etc/data", "etc/init.d", "etc/rc5.d", "etc/rc6.d", "etc/ssl",
                   "etc/ssl/certs", "etc/webui", "etc/webui/www", "firmware", "firmware/image",
                   "lib", "proc", "sbin", "sys", "usr", "usr/bin", "usr/lib", "usr/sbin",
                   "usr/share", "usr/share/ql", "usr/share/udhcpc", "usr/share/zoneinfo",
                   "usr/share/zoneinfo/Asia", "usr/share/zoneinfo/Europe", "usrdata",
                   "usrdata/empty_dir", "var", "var/lib", "var/lib/ql", "var/volatile"):
        tree[folder] = _dir()
    tree["etc/ql_secret"] = _dir(0o700)

    for applet in _BIN_APPLETS:
        tree[f"bin/{applet}"] = _link("busybox")
    for applet in _SBIN_APPLETS:
        tree[f"sbin/{applet}"] = _link("../bin/busybox")
    for applet in _USR_BIN_APPLETS:
        tree[f"usr/bin/{applet}"] = _link("../../bin/busybox")
    for applet in _USR_SBIN_APPLETS:
        tree[f"usr/sbin/{applet}"] = _link("../../bin/busybox")
    tree["bin/busybox"] = _file(_program("busybox", 256 * 1024, version="1.31.1",
                                         edits=5 if next_version else 0), 0o755)
    for path, size, mode in _EXECUTABLES:
        tree[path] = _file(_program(path.rsplit("/", 1)[1], size), mode)
    for path, size, links in _LIBRARIES:
        tree[path] = _file(_program(path.rsplit("/", 1)[1], size, shared=True))
        for link in links:
            tree[link] = _link(os.path.relpath(path, os.path.dirname(link)))
    tree["usr/lib/libql_common_api.so.1"] = _file(_program(
        "libql_common_api.so.1", 148 * 1024, shared=True,
        version="1.2.0" if next_version else "1.1.0",
        edits=4 if next_version else 0, grow=4096 if next_version else 0))
    tree["usr/lib/libql_common_api.so"] = _link("libql_common_api.so.1")
    tree["usr/sbin/ql_manager_server"] = _file(_program(
        "ql_manager_server", 200 * 1024, version="2.4.1" if next_version else "2.4.0",
        edits=3 if next_version else 0), 0o755)
    tree[FULLOTA_FILE] = _file(_program(
        "ql_fullota_demo", 48 * 1024, version="1.1" if next_version else "1.0",
        edits=2 if next_version else 0), 0o755)

    tree["build.prop"] = _file(_build_prop(version))
    tree["boot/System.map-5.4.180"] = _file(_system_map(next_version))
    tree["cache/recovery/last_log"] = _file("Starting recovery (pid 412) on Thu Jan  1 00:00:07"
                                            " 1970\nrecovery filesystem table\n=========\n")
    tree["data/ql_app/app.ini"] = _file("[app]\nautostart=1\nname=ql_app\n")
    tree["dev/.placeholder"] = _file("")
    tree["firmware/image/stale_from_sdk.mbn"] = _file(_prng("stale-mbn", 4096))

    etc: dict[str, str] = {
        "etc/version": version.package_time.replace("-", "").replace(",", "").replace(":", "")
        + "00\n",
        "etc/quectel-project-version": version.version_file,
        "etc/hostname": "sdxlemur\n",
        "etc/hosts": "127.0.0.1\tlocalhost.localdomain\tlocalhost\n::1\tlocalhost ip6-localhost\n",
        "etc/passwd": "root:x:0:0:root:/home/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/sh\n"
        "radio:x:1001:1001::/var/lib/radio:/bin/false\nnobody:x:65534:65534:nobody:/:/bin/sh\n",
        "etc/group": "root:x:0:\ndaemon:x:1:\nradio:x:1001:\nnogroup:x:65534:\n",
        "etc/fstab": "/dev/root / auto ro 1 1\nproc /proc proc defaults 0 0\n"
        "sysfs /sys sysfs defaults 0 0\ntmpfs /var/volatile tmpfs defaults 0 0\n"
        "ubi0:usrfs /usrdata ubifs defaults 0 0\nubi0:cachefs /cache ubifs defaults 0 0\n"
        "ubi1:modem /firmware ubifs ro 0 0\n",
        "etc/inittab": "id:5:initdefault:\nsi::sysinit:/etc/init.d/rcS\n"
        "ttyMSM0::respawn:/sbin/getty -L ttyMSM0 115200 vt100\n",
        "etc/profile": "export PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin\n"
        "export PS1='\\u@\\h:\\w\\$ '\numask 022\n",
        "etc/shells": "/bin/sh\n/bin/ash\n",
        "etc/issue": "Quectel QuecOpen Linux \\n \\l\n",
        "etc/sysctl.conf": "net.ipv4.ip_forward = 1\nnet.ipv6.conf.all.forwarding = 1\n"
        "vm.min_free_kbytes = 2048\n",
        "etc/dnsmasq.conf": "interface=bridge0\ndhcp-range=192.168.225.20,192.168.225.60,12h\n"
        "no-resolv\nserver=8.8.8.8\n",
        "etc/hostapd.conf": "interface=wlan0\nbridge=bridge0\nssid=QUECTEL-SDX6X\nchannel=6\n"
        "hw_mode=g\nwpa=2\nwpa_key_mgmt=WPA-PSK\nrsn_pairwise=CCMP\nwpa_passphrase=12345678\n",
        "etc/ql_manager.conf": _manager_conf(next_version),
        "etc/data/dsi_config.xml": "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<list>\n"
        "  <data Type=\"int\" Name=\"num_dsi_handles\">8</data>\n"
        "  <data Type=\"string\" Name=\"qos_enabled\">1</data>\n</list>\n",
        "etc/ssl/openssl.cnf": "".join(f"[ section_{i} ]\nkey_{i} = value_{i}\n"
                                       for i in range(120)),
        "etc/ssl/certs/ca-certificates.crt": _pem("ca", "CERTIFICATE", 30, 900),
        "etc/ql_secret/cert.pem": _pem("secret-cert", "CERTIFICATE", 1, 700),
        NOOTA_FILE: "# webui test configuration, kept across updates\nuser=admin\n"
        "session_timeout=300\nlanguage=en\n",
        "etc/webui/webui.conf": "port=80\nroot=/etc/webui/www\nauth=digest\n",
        "etc/webui/www/index.html": "<!DOCTYPE html>\n<html><head><title>QuecOpen</title>"
        "</head>\n<body><div id=\"app\"></div><script src=\"app.js\"></script></body></html>\n",
        "etc/webui/www/app.js": "".join(f"function page{i}(s){{return s.render('p{i}');}}\n"
                                         for i in range(500)),
        "usr/lib/os-release": "ID=quecopen\nNAME=\"QuecOpen Linux\"\nVERSION_ID=5.4\n",
        "usr/bin/ql_log_collect.sh": "#!/bin/sh\n# collect logs for Quectel support\n"
        "tar czf /usrdata/ql_logs.tgz /var/log /data/ql_app 2>/dev/null\n",
        "var/lib/ql/persist.ini": "[persist]\nboot_count=0\n",
    }
    for path, text in etc.items():
        tree[path] = _file(text)
    tree[SECRET_FILE] = _file(_pem("secret-key", "PRIVATE KEY", 1, 1200), 0o600)
    tree["etc/shadow"] = _file("root::19165:0:99999:7:::\ndaemon:*:19165:0:99999:7:::\n", 0o600)
    tree["etc/init.d/rcS"] = _file("#!/bin/sh\nfor s in /etc/rc5.d/S*; do $s start; done\n",
                                   0o755)
    tree["etc/init.d/rcK"] = _file("#!/bin/sh\nfor s in /etc/rc6.d/K*; do $s stop; done\n",
                                   0o755)
    tree["etc/init.d/ql_manager"] = _file(_manager_init(next_version), 0o755)
    tree["etc/rc5.d/S90ql_manager"] = _link("../init.d/ql_manager")
    tree["etc/rc6.d/K10ql_manager"] = _link("../init.d/ql_manager")
    for script, daemon, start, kill in _SERVICES:
        tree[f"etc/init.d/{script}"] = _file(_init_script(script, daemon), 0o755)
        tree[f"etc/rc5.d/{start}"] = _link(f"../init.d/{script}")
        if kill:
            tree[f"etc/rc6.d/{kill}"] = _link(f"../init.d/{script}")
    tree["usr/share/udhcpc/default.script"] = _file(
        "#!/bin/sh\n[ -z \"$1\" ] && echo 'Error: call from udhcpc' && exit 1\n", 0o755)
    for zone in ("UTC", "Asia/Shanghai", "Europe/Berlin"):
        tree[f"usr/share/zoneinfo/{zone}"] = _file(_tzif(zone))
    tree[CHANGES.compressed_file] = _file(_default_config(next_version))

    tree["etc/mtab"] = _link("/proc/self/mounts")
    tree["etc/resolv.conf"] = _link("/var/run/resolv.conf")
    tree["etc/os-release"] = _link("../usr/lib/os-release")
    tree["etc/localtime"] = _link("/usr/share/zoneinfo/UTC")
    tree["var/run"] = _link("/run")
    tree["var/tmp"] = _link("volatile/tmp")
    tree["var/log"] = _link("volatile/log")

    # in the base only (removed, or replaced in the next version)
    tree["usr/bin/ql_old_tool"] = _file(_program("ql_old_tool", 18 * 1024), 0o755)
    tree["usr/lib/libql_legacy.so.1"] = _file(_program("libql_legacy.so.1", 14 * 1024,
                                                       shared=True))
    tree["usr/lib/libql_legacy.so"] = _link("libql_legacy.so.1")
    tree["usr/share/ql_legacy"] = _dir()
    tree["usr/share/ql_legacy/profiles"] = _dir()
    tree["usr/share/ql_legacy/readme.txt"] = _file("Legacy profiles, removed in 01.002.\n")
    tree["usr/share/ql_legacy/data.bin"] = _file(_prng("legacy-data", 6000))
    tree["usr/share/ql_legacy/profiles/default.cfg"] = _file("profile=default\napn=internet\n")
    tree["usr/bin/ql_at_client"] = _file(_program("ql_at_client", 16 * 1024), 0o755)
    tree["bin/ping"] = _link("busybox")
    if next_version:
        _apply_next_changes(tree)
    return tree


def _apply_next_changes(tree: Tree) -> None:
    for path in CHANGES.removed:
        del tree[path]
    for path, _old_mode, new in CHANGES.mode_changed:
        tree[path] = Node(tree[path].kind, new, tree[path].data, tree[path].link)
    for path, _old_target, target in CHANGES.retargeted:
        tree[path] = _link(target)
    for path, target in CHANGES.file_to_symlink:
        tree[path] = _link(target)
    tree["bin/ping"] = _file(_program("ping", 30 * 1024, version="iputils-s20190709"), 0o755)
    tree["usr/bin/ql_new_app"] = _file(_program("ql_new_app", 36 * 1024), 0o755)
    tree["usr/lib/libql_new.so.1"] = _file(_program("libql_new.so.1", 20 * 1024, shared=True))
    tree["usr/lib/libql_new.so"] = _link("libql_new.so.1")
    tree["etc/ql_new_app.conf"] = _file("[new_app]\nenable=1\ninterval=60\n")
    tree["etc/init.d/ql_new_app"] = _file(_init_script("ql_new_app", "ql_new_app"), 0o755)
    tree["etc/rc5.d/S98ql_new_app"] = _link("../init.d/ql_new_app")
    tree["usr/share/ql_new_app"] = _dir()
    tree["usr/share/ql_new_app/icons"] = _dir()
    tree["usr/share/ql_new_app/app.json"] = _file('{"name": "ql_new_app", "version": "1.0"}\n')
    tree["usr/share/ql_new_app/icons/app.svg"] = _file(
        '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">'
        '<rect width="16" height="16" fill="#0a5"/></svg>\n')
    for path in CHANGES.new_empty_dirs:
        tree[path] = _dir()


@functools.cache
def _rootfs_items(next_version: bool) -> tuple[tuple[str, Node], ...]:
    return tuple(sorted(_rootfs(next_version).items()))


def base_rootfs() -> Tree:
    """The rootfs of the base version (paths relative to the rootfs, no leading '/')."""
    return dict(_rootfs_items(False))


def next_rootfs() -> Tree:
    """The rootfs of the next version: the SDK's `ql-ol-rootfs/`."""
    return dict(_rootfs_items(True))


# ---------------------------------------------------------------------------------------------
# Modem firmware, kernel, abl and the other targetfiles folders

_EM_QDSP6 = 164
_QC_PHDR_FLAGS = 0x07000000
_QC_HASH_FLAGS = 0x02200000


def _pil_image(label: str, segment_sizes: Sequence[int], base: int) -> tuple[bytes, list[bytes]]:
    """A Qualcomm PIL image: (ELF headers + hash segment = the .mdt, [segment bytes...])."""
    phnum = 2 + len(segment_sizes)
    head = _EHDR.size + phnum * _PHDR.size
    hash_off, hash_size = 0x1000, 40 + 32 * phnum
    payloads = [_code(f"{label}:seg{i}", size) for i, size in enumerate(segment_sizes)]
    phdrs = [
        _PHDR.pack(0, 0, 0, 0, head, 0, _QC_PHDR_FLAGS, 0),
        _PHDR.pack(0, hash_off, base - 0x1000, base - 0x1000, hash_size, 0x1000,
                   _QC_HASH_FLAGS, 0x1000),
    ]
    offset, vaddr = 0x2000, base
    for blob in payloads:
        phdrs.append(_PHDR.pack(1, offset, vaddr, vaddr, len(blob), len(blob), 5, 0x1000))
        offset += len(blob) + (-len(blob) % 0x1000)
        vaddr += len(blob) + (-len(blob) % 0x100000)
    ident = b"\x7fELF" + bytes([1, 1, 1, 0]) + bytes(8)
    ehdr = _EHDR.pack(ident, 2, _EM_QDSP6, 1, base, _EHDR.size, 0, 0x73, _EHDR.size,
                      _PHDR.size, phnum, 40, 0, 0)
    headers = ehdr + b"".join(phdrs)
    digests = hashlib.sha256(headers).digest() + bytes(32)
    digests += b"".join(hashlib.sha256(p).digest() for p in payloads)
    hash_seg = struct.pack("<10I", 0, 3, 0, base - 0x1000 + 40, len(digests), len(digests),
                           0, 0, 0, 0) + digests
    mdt = headers + bytes(hash_off - len(headers)) + hash_seg
    return mdt, [headers, hash_seg, *payloads]


def _mbn(label: str, size: int, base: int) -> bytes:
    mdt, segments = _pil_image(label, [size], base)
    return mdt + bytes(0x2000 - len(mdt)) + segments[2]


@functools.cache
def _modem_items() -> tuple[tuple[str, Node], ...]:
    tree: Tree = {}
    for folder in ("image", "image/modem_pr", "image/modem_pr/so", "image/modem_pr/mcfg",
                   "image/modem_pr/mcfg/configs", "image/modem_pr/mcfg/configs/mcfg_sw",
                   "image/modem_pr/mcfg/configs/mcfg_sw/generic"):
        tree[folder] = _dir()
    sizes = (300 * 1024, 250 * 1024, 180 * 1024, 120 * 1024, 60 * 1024, 8 * 1024)
    mdt, segments = _pil_image("modem", sizes, 0x8CC00000)
    tree["image/modem.mdt"] = _file(mdt)
    seg_info = []
    for i, blob in enumerate(segments):
        tree[f"image/modem.b{i:02d}"] = _file(blob)
        seg_info.append(f"modem.b{i:02d} 0x{len(blob):08x}\n")
    tree["image/seg_info.txt"] = _file("".join(seg_info))
    tree["image/qdsp6m.qdb"] = _file(b"QDB\0" + _prng("qdsp6m.qdb", 120 * 1024))
    tree["image/modem_pr/so/895_0_0.mbn"] = _file(_mbn("so895", 48 * 1024, 0x9E000000))
    tree["image/modem_pr/so/896_0_0.mbn"] = _file(_mbn("so896", 40 * 1024, 0x9E100000))
    tree["image/modem_pr/mcfg/configs/mcfg_sw/generic/mcfg_sw.mbn"] = _file(
        _mbn("mcfg_sw", 24 * 1024, 0x9E200000))
    tree["image/modem_pr/mcfg/configs/mcfg_sw/mbn_sw.txt"] = _file(
        "mcfg_sw/generic/mcfg_sw.mbn\n")
    tree["image/Ver_Info.txt"] = _file(
        "{\n  \"Image_Build_IDs\": {\"modem\": \"MPSS.DE.2.0-01234-SDXLEMUR_GEN_PACK-1\"},\n"
        "  \"Metabuild_Info\": {\"Meta_Build_ID\": \"SDX65.LE.1.0-00345-NBOOT.NEFS.PROD-1\"}\n}\n")
    return tuple(sorted(tree.items()))


def modem_files() -> Tree:
    """The modem firmware: the root of NON-HLOS.ubi, and `SYSTEM/firmware/` in targetfiles."""
    return dict(_modem_items())


@functools.cache
def boot_image(next_version: bool = False) -> bytes:
    """`sdxlemur-boot.img`: an Android v0 boot image with an ARM zImage and an appended DTB."""
    version = NEXT if next_version else BASE
    payload = _code("kernel", 320 * 1024)
    if next_version:
        payload = _edit(payload, "kernel", 6)
    dtb = make_dtb(
        "Qualcomm Technologies, Inc. SDXLEMUR MTP",
        ["qcom,sdxlemur-mtp", "qcom,sdxlemur", "qcom,mtp"],
        {"chosen": {"bootargs": ""}, "memory": {"device_type": "memory",
                                                "reg": [0x80000000, 0x20000000]}},
        properties={"qcom,msm-id": [0x1A8, 0x10000], "qcom,board-id": [8, 0]},
    )
    return build_boot_image(make_arm_zimage(payload, [dtb]), cmdline=version.cmdline)


@functools.cache
def abl_image(next_version: bool = False) -> bytes:
    """`abl.elf`: the application bootloader."""
    version = NEXT if next_version else BASE
    code = _code("abl", 96 * 1024) + f"ABL {version.project_rev}\0".encode()
    if next_version:
        code = _edit(code, "abl", 3)
    return build_abl_elf(code)


_FILESMAP = "sdxlemur-boot.img                boot\nabl.elf                          abl\n"
_RECOVERY_FSTAB = (
    "# mount point\tfstype\t\tdevice\t\t[device2]\n"
    "/boot\t\tmtd\t\tboot\n"
    "/cache\t\tubifs\t\tcache\n"
    "/data\t\tubifs\t\tuserdata\n"
    "/recovery\tmtd\t\trecovery\n"
    "/system\t\tubifs\t\tsystem\n"
)


def base_targetfiles_tree() -> Tree:
    """Every entry of the base `targetfiles.zip`, directories included."""
    tree: Tree = {}
    tree["BOOTABLE_IMAGES/boot.img"] = _file(boot_image(False))
    tree["MULTIFOTA/abl.elf"] = _file(abl_image(False))
    tree["OTA/bin/updater"] = _file(_program("updater", 64 * 1024), 0o755)
    tree["OTA/bin/applypatch"] = _file(_program("applypatch", 32 * 1024), 0o755)
    tree["RADIO/filesmap"] = _file(_FILESMAP)
    tree["RECOVERY/RAMDISK/etc/recovery.fstab"] = _file(_RECOVERY_FSTAB)
    tree["RECOVERY/RAMDISK/etc/fstab"] = _file("proc /proc proc defaults 0 0\n")
    tree["RECOVERY/RAMDISK/etc/mtab"] = _link("/proc/self/mounts")
    tree["RECOVERY/RAMDISK/res/keys"] = _file("v2 {64,0x" + _prng("keys", 32).hex() + "}\n")
    tree["RECOVERY/RAMDISK/sbin/recovery"] = _file(_program("recovery", 24 * 1024), 0o755)
    for rel, node in base_rootfs().items():
        if not _under_kept(rel):
            tree[f"SYSTEM/{rel}"] = node
    for rel, node in modem_files().items():
        tree[f"SYSTEM/firmware/{rel}"] = node
    tree["SYSTEM/dev/pts"] = _dir()
    return _with_parents(tree)


def _under_kept(rel: str) -> bool:
    """Inside the rootfs's own firmware/ or dev/ (the folders themselves are not)."""
    return rel.startswith(("firmware/", "dev/"))


def _with_parents(tree: Tree) -> Tree:
    out = dict(tree)
    for path in tree:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            out.setdefault("/".join(parts[:depth]), _dir())
    return dict(sorted(out.items()))


def _ubi_rootfs(rootfs: Mapping[str, Node]) -> Tree:
    """What the rootfs volume holds: the rootfs with empty firmware/ and dev/ (mount points)."""
    return {rel: node for rel, node in rootfs.items() if not _under_kept(rel)}


# ---------------------------------------------------------------------------------------------
# Writing trees and running the vendor's tools


def _write_tree(tree: Mapping[str, Node], dest: Path, mtime: int) -> None:
    """Create `tree` under `dest` with exact modes and one mtime (umask and owner proof)."""
    dest.mkdir(parents=True, exist_ok=True)
    for rel in sorted(tree):
        node, path = tree[rel], dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if node.kind == DIR:
            path.mkdir(exist_ok=True)
        elif node.kind == SYMLINK:
            os.symlink(node.link, path)
        else:
            path.write_bytes(node.data)
    # modes and times last, deepest first, so no later write touches them
    for rel in sorted(tree, key=lambda r: (-r.count("/"), r)):
        node, path = tree[rel], dest / rel
        if node.kind != SYMLINK:
            os.chmod(path, node.mode)
        os.utime(path, (mtime, mtime), follow_symlinks=False)
    os.chmod(dest, 0o755)
    os.utime(dest, (mtime, mtime))


def _tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise DfotaError(f"{name} not found; install the Debian package {package}")
    return found


def _run(args: Sequence[str], *, cwd: Path | None = None, stdin: str | None = None) -> str:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LC_ALL": "C"}
    try:
        done = subprocess.run(list(args), cwd=cwd, input=stdin, capture_output=True, text=True,
                              env=env, check=False)
    except OSError as exc:
        raise DfotaError(f"cannot run {args[0]}: {exc.strerror or exc}") from exc
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no message"]
        raise DfotaError(f"{Path(args[0]).name} failed (exit {done.returncode}): {lines[-1]}")
    return done.stdout


def _zip_tree(folder: Path, dest: Path) -> None:
    """`zip -qry0` of the folder's contents, made reproducible: -X, sorted names, TZ=UTC."""
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        rel = Path(dirpath).relative_to(folder)
        names.extend((rel / n).as_posix() for n in dirnames + filenames)
    names.sort(key=lambda n: n.encode())
    if any("\n" in n or n != n.strip() for n in names):
        raise DfotaError("a name cannot be passed to zip -@", folder)
    _run([_tool("zip", "zip"), "-qy0X", "-@", str(dest)], cwd=folder,
         stdin="".join(n + "\n" for n in names))
    listing = _run([_tool("unzip", "unzip"), "-Z", str(dest)]).splitlines()
    entries = [line for line in listing if re.match(r"^[-dlrwxsStT]{10} ", line)]
    links = sum(1 for n in names if (folder / n).is_symlink())
    if (len(entries) != len(names) or any(" stor " not in e for e in entries)
            or sum(1 for e in entries if e.startswith("l")) != links):
        raise DfotaError("zip did not store every entry as expected (see unzip -Z)", dest)


def _devtable(tree: Mapping[str, Node], devices: bool) -> str:
    """mkfs.ubifs device table: every file and folder root:root with its mode, and dev/."""
    lines = ["/\td\t755\t0\t0\t-\t-\t-\t-\t-"]
    for rel, node in sorted(tree.items()):
        if node.kind == SYMLINK:
            continue
        if any(c.isspace() for c in rel):
            raise DfotaError(f"a device table cannot name {rel!r}")
        kind = "d" if node.kind == DIR else "f"
        lines.append(f"/{rel}\t{kind}\t{node.mode:o}\t0\t0\t-\t-\t-\t-\t-")
    if devices:
        lines.append("/dev/pts\td\t755\t0\t0\t-\t-\t-\t-\t-")
        for name, kind, mode, major, minor in DEVICE_NODES:
            lines.append(f"/dev/{name}\t{kind}\t{mode:o}\t0\t0\t{major}\t{minor}\t-\t-\t-")
    return "\n".join(lines) + "\n"


UBIFS_MAGIC = 0x06101831
_UBIFS_CH = struct.Struct("<IIQIBB2x")
_UBIFS_INO_NODE = 0
_UBIFS_PAD_NODE = 5
_UBIFS_SB_NODE = 6


def _ubifs_crc(node: bytes | bytearray) -> int:
    return zlib.crc32(node[8:]) ^ 0xFFFFFFFF


def fix_ubifs(image: bytearray, uuid: bytes, epoch: int) -> int:
    """Make a mkfs.ubifs image reproducible: a fixed superblock uuid and fixed inode times.

    Returns the number of inode nodes rewritten. Each changed node gets its CRC again.
    """
    magic, _crc, _sqnum, length, node_type, _group = _UBIFS_CH.unpack_from(image, 0)
    if magic != UBIFS_MAGIC or node_type != _UBIFS_SB_NODE:
        raise DfotaError("mkfs.ubifs output does not start with a UBIFS superblock")
    min_io, leb_size, leb_cnt = struct.unpack_from("<III", image, 32)
    log_lebs, lpt_lebs, orph_lebs = struct.unpack_from("<III", image, 56)
    image[108:124] = uuid
    struct.pack_into("<I", image, 4, _ubifs_crc(image[:length]))
    changed = 0
    for leb in range(3 + log_lebs + lpt_lebs + orph_lebs, leb_cnt):  # the main area
        start, offset = leb * leb_size, 0
        while offset + _UBIFS_CH.size <= leb_size and start + offset < len(image):
            pos = start + offset
            magic, crc, _sqnum, length, node_type, _group = _UBIFS_CH.unpack_from(image, pos)
            if magic != UBIFS_MAGIC:  # padding bytes or free space: on to the next I/O unit
                offset += -offset % min_io or min_io
                continue
            if length < _UBIFS_CH.size or offset + length > leb_size:
                raise DfotaError(f"UBIFS node with a bad length at LEB {leb} offset {offset}")
            if crc != _ubifs_crc(image[pos : pos + length]):
                raise DfotaError(f"UBIFS node with a bad CRC at LEB {leb} offset {offset}")
            if node_type == _UBIFS_INO_NODE:
                struct.pack_into("<QQQIII", image, pos + 56, epoch, epoch, epoch, 0, 0, 0)
                struct.pack_into("<I", image, pos + 4, _ubifs_crc(image[pos : pos + length]))
                changed += 1
            step = length
            if node_type == _UBIFS_PAD_NODE:
                step += struct.unpack_from("<I", image, pos + _UBIFS_CH.size)[0]
            offset += step + (-step % 8)
    return changed


def _mkfs_ubifs(folder: Path, dest: Path, devtable: str, label: str, epoch: int) -> None:
    table = dest.with_suffix(".devtable")
    table.write_text(devtable)
    _run([_tool("mkfs.ubifs", "mtd-utils"), "-m", str(MIN_IO), "-e", str(LEB_SIZE),
          "-c", str(MAX_LEB_COUNT), "-F", "-U", "-D", str(table), "-r", str(folder),
          "-o", str(dest)])
    image = bytearray(dest.read_bytes())
    if fix_ubifs(image, hashlib.sha256(SEED + label.encode()).digest()[:16], epoch) == 0:
        raise DfotaError("no inode found in the mkfs.ubifs output", dest)
    dest.write_bytes(image)


@dataclass(frozen=True, slots=True)
class _Volume:
    name: str
    vol_id: int
    image: Path | None = None
    size: int = 0  # bytes (at least the image's); 0: the image's size
    autoresize: bool = False


def _ubinize(dest: Path, volumes: Iterable[_Volume], image_seq: int, cfg: Path) -> None:
    sections = []
    for vol in volumes:
        lines = [f"[{vol.name}_volume]", "mode=ubi", f"vol_id={vol.vol_id}", "vol_type=dynamic",
                 f"vol_name={vol.name}"]
        if vol.image is not None:
            lines += [f"image={vol.image}",
                      f"vol_size={max(vol.size, vol.image.stat().st_size)}"]
        else:
            lines.append(f"vol_size={vol.size}")
        if vol.autoresize:
            lines.append("vol_flags=autoresize")
        sections.append("\n".join(lines) + "\n")
    cfg.write_text("\n".join(sections))
    _run([_tool("ubinize", "mtd-utils"), "-o", str(dest), "-m", str(MIN_IO), "-p",
          str(PEB_SIZE), "-s", str(MIN_IO), "-Q", str(image_seq), str(cfg)])


def _sysfs_ubi(rootfs: Mapping[str, Node], work: Path, dest: Path, label: str,
               epoch: int) -> None:
    """sdxlemur-sysfs.ubi: rootfs (0), usrfs (1, autoresize), cachefs (2), systemrw (3)."""
    tree = _ubi_rootfs(rootfs)
    _write_tree(tree, work / f"{label}-rootfs", epoch)
    ubifs = work / f"{label}-rootfs.ubifs"
    _mkfs_ubifs(work / f"{label}-rootfs", ubifs, _devtable(tree, devices=True), label, epoch)
    lebs = SYSFS_VOLUME_LEBS
    _ubinize(dest, [
        _Volume("rootfs", 0, ubifs, size=lebs["rootfs"] * LEB_SIZE),
        _Volume("usrfs", 1, size=lebs["usrfs"] * LEB_SIZE, autoresize=True),
        _Volume("cachefs", 2, size=lebs["cachefs"] * LEB_SIZE),
        _Volume("systemrw", 3, size=lebs["systemrw"] * LEB_SIZE),
    ], epoch & 0x7FFFFFFF, work / f"{label}-ubinize.cfg")


def _modem_ubi(work: Path, dest: Path, epoch: int) -> None:
    tree = modem_files()
    _write_tree(tree, work / "modem", epoch)
    ubifs = work / "modem.ubifs"
    _mkfs_ubifs(work / "modem", ubifs, _devtable(tree, devices=False), "modem", epoch)
    _ubinize(dest, [_Volume(MODEM_VOLUME, 0, ubifs)], (epoch + 1) & 0x7FFFFFFF,
             work / "modem-ubinize.cfg")


# ---------------------------------------------------------------------------------------------
# The firmware package and the SDK output

UPDATE_IMAGES = ("NON-HLOS.ubi", "abl.elf", "sdxlemur-boot.img", "sdxlemur-sysfs.ubi")


def _contents_xml() -> str:
    def download(name: str, folder: str, extra: str = "") -> str:
        return (f"        <download_file{extra} minimized=\"true\">\n"
                f"          <file_name>{name}</file_name>\n"
                f"          <file_path>{folder}/</file_path>\n"
                "        </download_file>\n")

    def build(name: str, build_id: str, files: str) -> str:
        return ("    <build>\n"
                f"      <name>{name}</name>\n      <role>{name}</role>\n"
                "      <chipset>sdxlemur</chipset>\n"
                f"      <build_id>{build_id}</build_id>\n"
                "      <windows_root_path cmm_root_path_var=\"ROOT\">.\\</windows_root_path>\n"
                "      <linux_root_path cmm_root_path_var=\"ROOT\">./</linux_root_path>\n"
                f"{files}    </build>\n")

    apps = (download("sdxlemur-boot.img", "update", ' fastboot_complete="boot"')
            + download("sdxlemur-sysfs.ubi", "update", ' fastboot_complete="system"')
            + download("abl.elf", "update", ' fastboot_complete="abl"'))
    return (
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<contents>\n"
        "  <product_info>\n    <product_name>SDX65.LE.1.0-RG520NNADA</product_name>\n"
        "    <hlos_type cmm_var=\"HLOS_TYPE\">LE</hlos_type>\n"
        "    <chipid cmm_var=\"CHIPID\">SDXLEMUR</chipid>\n  </product_info>\n"
        "  <builds_flat>\n"
        + build("apps", BASE.project_rev, apps)
        + build("modem", "MPSS.DE.2.0-01234-SDXLEMUR_GEN_PACK-1",
                download("NON-HLOS.ubi", "update", ' fastboot_complete="modem"'))
        + build("common", BASE.project_rev,
                "        <file_ref>\n          <file_name>targetfiles.zip</file_name>\n"
                "          <file_path>upgrade/</file_path>\n        </file_ref>\n")
        + "  </builds_flat>\n</contents>\n"
    )


def _md5_list(firmware: Path) -> str:
    lines = []
    for sub in ("update", "upgrade"):
        for path in (firmware / sub).rglob("*"):
            if path.is_file():
                digest = hashlib.md5(path.read_bytes()).hexdigest()
                lines.append((path.relative_to(firmware).as_posix(), digest))
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(lines,
                                                                     key=lambda x: x[0].encode()))


def _write_firmware(firmware: Path, work: Path) -> None:
    epoch = BASE.epoch
    update, upgrade = firmware / "update", firmware / "upgrade"
    update.mkdir(parents=True)
    upgrade.mkdir()
    (update / "sdxlemur-boot.img").write_bytes(boot_image(False))
    (update / "abl.elf").write_bytes(abl_image(False))
    _sysfs_ubi(base_rootfs(), work, update / "sdxlemur-sysfs.ubi", "base", epoch)
    _modem_ubi(work, update / "NON-HLOS.ubi", epoch)
    _write_tree(base_targetfiles_tree(), work / "targetfiles", epoch)
    _zip_tree(work / "targetfiles", upgrade / "targetfiles.zip")
    (firmware / "contents.xml").write_text(_contents_xml())
    (firmware / "md5.txt").write_text(_md5_list(firmware))
    _fix_modes_and_times(firmware, epoch)


def _write_sdk(sdk: Path, work: Path) -> None:
    epoch = NEXT.epoch
    target = sdk / "target"
    target.mkdir(parents=True)
    (target / "sdxlemur-boot.img").write_bytes(boot_image(True))
    (target / "abl.elf").write_bytes(abl_image(True))
    _sysfs_ubi(next_rootfs(), work, target / "sdxlemur-sysfs.ubi", "next", epoch)
    _fix_modes_and_times(target, epoch)
    _write_tree(next_rootfs(), sdk / ROOTFS_DIR, epoch)
    os.chmod(sdk, 0o755)


def _fix_modes_and_times(folder: Path, epoch: int) -> None:
    for path in [*folder.rglob("*"), folder]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
        os.utime(path, (epoch, epoch))


def sample_stamp() -> str:
    """A hash of the generator's source (this module and the writers it uses)."""
    digest = hashlib.sha256()
    for source in (__file__, bootimg.__file__, elf.__file__):
        path = Path(source)
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def sample_is_current(root: Path) -> bool:
    """Whether `root` holds a whole sample made by this very generator."""
    root = Path(root)
    try:
        stamp = (root / SDK_DIR / STAMP_NAME).read_text().strip()
    except OSError:
        return False
    return (stamp == sample_stamp()
            and (root / FIRMWARE_DIR / "upgrade" / "targetfiles.zip").is_file()
            and (root / SDK_DIR / ROOTFS_DIR).is_dir())


def generate_sample(root: Path) -> None:
    """Write the sample under `root` (firmware/ and ql-ol-extsdk/), replacing any old one.

    Everything is built in a temporary folder inside `root` and renamed into place at the end;
    the stamp arrives last, so an interrupted run never leaves a sample that looks current.
    """
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        for leftover in root.glob(_BUILD_PREFIX + "*"):
            shutil.rmtree(leftover, ignore_errors=True)
        build = Path(tempfile.mkdtemp(prefix=_BUILD_PREFIX, dir=root))
    except OSError as exc:
        raise DfotaError(f"cannot write the sample here ({exc.strerror})", root) from exc
    try:
        work = build / "work"
        work.mkdir()
        _write_firmware(build / FIRMWARE_DIR, work)
        _write_sdk(build / SDK_DIR, work)
        stamp = build / SDK_DIR / STAMP_NAME
        stamp.write_text(sample_stamp() + "\n")
        os.chmod(stamp, 0o644)
        old = build / "old"
        old.mkdir()
        for name in (SDK_DIR, FIRMWARE_DIR):  # the stamp goes first...
            if os.path.lexists(root / name):
                os.replace(root / name, old / name)
        for name in (FIRMWARE_DIR, SDK_DIR):  # ...and comes back last
            os.replace(build / name, root / name)
    except OSError as exc:
        raise DfotaError(f"cannot write the sample ({exc.strerror})",
                         exc.filename or root) from exc
    finally:
        shutil.rmtree(build, ignore_errors=True)

