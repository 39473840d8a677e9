"""The sample's rootfs, base and next (`base_rootfs()`, `next_rootfs()`): busybox and its
applet links, ARM programs and libraries, init scripts with their rc links, configuration
text, secrets, links that lead outside the tree, empty folders and the SDK's leftovers."""

from __future__ import annotations

import functools
import os

from dfota.tools.sample.content import (
    Program,
    default_config,
    init_script,
    pem,
    prng,
    system_map,
    tzif,
)
from dfota.tools.sample.nodes import Node, Tree, dir_node, file_node, link_node
from dfota.tools.sample.versions import (
    BASE,
    CHANGES,
    FULLOTA_FILE,
    NEXT,
    NOOTA_FILE,
    SECRET_FILE,
    SampleVersion,
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
    return init_script("ql_manager", "ql_manager_server", opts)


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




_FOLDERS = ("bin", "boot", "cache", "cache/recovery", "data", "data/ql_app", "dev", "etc",
            "etc/data", "etc/init.d", "etc/rc5.d", "etc/rc6.d", "etc/ssl", "etc/ssl/certs",
            "etc/webui", "etc/webui/www", "firmware", "firmware/image", "lib", "proc", "sbin",
            "sys", "usr", "usr/bin", "usr/lib", "usr/sbin", "usr/share", "usr/share/ql",
            "usr/share/udhcpc", "usr/share/zoneinfo", "usr/share/zoneinfo/Asia",
            "usr/share/zoneinfo/Europe", "usrdata", "usrdata/empty_dir", "var", "var/lib",
            "var/lib/ql", "var/volatile")


def _folders(tree: Tree) -> None:
    for folder in _FOLDERS:
        tree[folder] = dir_node()
    tree["etc/ql_secret"] = dir_node(0o700)


def _busybox(tree: Tree, next_version: bool) -> None:
    """busybox and its applet links."""
    for applet in _BIN_APPLETS:
        tree[f"bin/{applet}"] = link_node("busybox")
    for applet in _SBIN_APPLETS:
        tree[f"sbin/{applet}"] = link_node("../bin/busybox")
    for applet in _USR_BIN_APPLETS:
        tree[f"usr/bin/{applet}"] = link_node("../../bin/busybox")
    for applet in _USR_SBIN_APPLETS:
        tree[f"usr/sbin/{applet}"] = link_node("../../bin/busybox")
    tree["bin/busybox"] = file_node(Program("busybox", 256 * 1024, version="1.31.1",
                                            edits=5 if next_version else 0).elf(), 0o755)


def _programs(tree: Tree, next_version: bool) -> None:
    """The executables and libraries, the changed ones in the build of the version."""
    for path, size, mode in _EXECUTABLES:
        tree[path] = file_node(Program(path.rsplit("/", 1)[1], size).elf(), mode)
    for path, size, links in _LIBRARIES:
        tree[path] = file_node(Program(path.rsplit("/", 1)[1], size, shared=True).elf())
        for link in links:
            tree[link] = link_node(os.path.relpath(path, os.path.dirname(link)))
    tree["usr/lib/libql_common_api.so.1"] = file_node(Program(
        "libql_common_api.so.1", 148 * 1024, shared=True,
        version="1.2.0" if next_version else "1.1.0",
        edits=4 if next_version else 0, grow=4096 if next_version else 0).elf())
    tree["usr/lib/libql_common_api.so"] = link_node("libql_common_api.so.1")
    tree["usr/sbin/ql_manager_server"] = file_node(Program(
        "ql_manager_server", 200 * 1024, version="2.4.1" if next_version else "2.4.0",
        edits=3 if next_version else 0).elf(), 0o755)
    tree[FULLOTA_FILE] = file_node(Program(
        "ql_fullota_demo", 48 * 1024, version="1.1" if next_version else "1.0",
        edits=2 if next_version else 0).elf(), 0o755)


def _build_files(tree: Tree, version: SampleVersion, next_version: bool) -> None:
    """What the build leaves beside the programs, the SDK's leftovers in firmware/ and dev/
    included."""
    tree["build.prop"] = file_node(_build_prop(version))
    tree["boot/System.map-5.4.180"] = file_node(system_map(next_version))
    tree["cache/recovery/last_log"] = file_node(
        "Starting recovery (pid 412) on Thu Jan  1 00:00:07 1970\nrecovery filesystem table\n"
        "=========\n")
    tree["data/ql_app/app.ini"] = file_node("[app]\nautostart=1\nname=ql_app\n")
    tree["dev/.placeholder"] = file_node("")
    tree["firmware/image/stale_from_sdk.mbn"] = file_node(prng("stale-mbn", 4096))


def _texts(version: SampleVersion, next_version: bool) -> dict[str, str]:
    """The configuration and text files of mode 0644."""
    return {
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
        "etc/ssl/certs/ca-certificates.crt": pem("ca", "CERTIFICATE", 30, 900),
        "etc/ql_secret/cert.pem": pem("secret-cert", "CERTIFICATE", 1, 700),
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


def _configuration(tree: Tree, version: SampleVersion, next_version: bool) -> None:
    """The texts, the secrets, the init scripts with their rc links, the time zones and the
    compressed default configuration."""
    for path, text in _texts(version, next_version).items():
        tree[path] = file_node(text)
    tree[SECRET_FILE] = file_node(pem("secret-key", "PRIVATE KEY", 1, 1200), 0o600)
    tree["etc/shadow"] = file_node("root::19165:0:99999:7:::\ndaemon:*:19165:0:99999:7:::\n",
                                   0o600)
    tree["etc/init.d/rcS"] = file_node("#!/bin/sh\nfor s in /etc/rc5.d/S*; do $s start; done\n",
                                       0o755)
    tree["etc/init.d/rcK"] = file_node("#!/bin/sh\nfor s in /etc/rc6.d/K*; do $s stop; done\n",
                                       0o755)
    tree["etc/init.d/ql_manager"] = file_node(_manager_init(next_version), 0o755)
    tree["etc/rc5.d/S90ql_manager"] = link_node("../init.d/ql_manager")
    tree["etc/rc6.d/K10ql_manager"] = link_node("../init.d/ql_manager")
    for script, daemon, start, kill in _SERVICES:
        tree[f"etc/init.d/{script}"] = file_node(init_script(script, daemon), 0o755)
        tree[f"etc/rc5.d/{start}"] = link_node(f"../init.d/{script}")
        if kill:
            tree[f"etc/rc6.d/{kill}"] = link_node(f"../init.d/{script}")
    tree["usr/share/udhcpc/default.script"] = file_node(
        "#!/bin/sh\n[ -z \"$1\" ] && echo 'Error: call from udhcpc' && exit 1\n", 0o755)
    for zone in ("UTC", "Asia/Shanghai", "Europe/Berlin"):
        tree[f"usr/share/zoneinfo/{zone}"] = file_node(tzif(zone))
    tree[CHANGES.compressed_file] = file_node(default_config(next_version))


_LINKS = (  # absolute, inside the tree, and leading nowhere inside it
    ("etc/mtab", "/proc/self/mounts"),
    ("etc/resolv.conf", "/var/run/resolv.conf"),
    ("etc/os-release", "../usr/lib/os-release"),
    ("etc/localtime", "/usr/share/zoneinfo/UTC"),
    ("var/run", "/run"),
    ("var/tmp", "volatile/tmp"),
    ("var/log", "volatile/log"),
)


def _base_only(tree: Tree) -> None:
    """In the base only (removed, or replaced in the next version)."""
    tree["usr/bin/ql_old_tool"] = file_node(Program("ql_old_tool", 18 * 1024).elf(), 0o755)
    tree["usr/lib/libql_legacy.so.1"] = file_node(Program("libql_legacy.so.1", 14 * 1024,
                                                          shared=True).elf())
    tree["usr/lib/libql_legacy.so"] = link_node("libql_legacy.so.1")
    tree["usr/share/ql_legacy"] = dir_node()
    tree["usr/share/ql_legacy/profiles"] = dir_node()
    tree["usr/share/ql_legacy/readme.txt"] = file_node("Legacy profiles, removed in 01.002.\n")
    tree["usr/share/ql_legacy/data.bin"] = file_node(prng("legacy-data", 6000))
    tree["usr/share/ql_legacy/profiles/default.cfg"] = file_node(
        "profile=default\napn=internet\n")
    tree["usr/bin/ql_at_client"] = file_node(Program("ql_at_client", 16 * 1024).elf(), 0o755)
    tree["bin/ping"] = link_node("busybox")


def _rootfs(next_version: bool) -> Tree:
    version = NEXT if next_version else BASE
    tree: Tree = {}
    _folders(tree)
    _busybox(tree, next_version)
    _programs(tree, next_version)
    _build_files(tree, version, next_version)
    _configuration(tree, version, next_version)
    for path, target in _LINKS:
        tree[path] = link_node(target)
    _base_only(tree)
    if next_version:
        _apply_next_changes(tree)
    return tree


def _apply_next_changes(tree: Tree) -> None:
    for path in CHANGES.removed:
        del tree[path]
    for path, _old_mode, new in CHANGES.mode_changed:
        tree[path] = Node(tree[path].kind, new, tree[path].data, tree[path].link)
    for path, _old_target, target in CHANGES.retargeted:
        tree[path] = link_node(target)
    for path, target in CHANGES.file_to_symlink:
        tree[path] = link_node(target)
    tree["bin/ping"] = file_node(Program("ping", 30 * 1024, version="iputils-s20190709").elf(),
                                 0o755)
    tree["usr/bin/ql_new_app"] = file_node(Program("ql_new_app", 36 * 1024).elf(), 0o755)
    tree["usr/lib/libql_new.so.1"] = file_node(Program("libql_new.so.1", 20 * 1024,
                                                       shared=True).elf())
    tree["usr/lib/libql_new.so"] = link_node("libql_new.so.1")
    tree["etc/ql_new_app.conf"] = file_node("[new_app]\nenable=1\ninterval=60\n")
    tree["etc/init.d/ql_new_app"] = file_node(init_script("ql_new_app", "ql_new_app"), 0o755)
    tree["etc/rc5.d/S98ql_new_app"] = link_node("../init.d/ql_new_app")
    tree["usr/share/ql_new_app"] = dir_node()
    tree["usr/share/ql_new_app/icons"] = dir_node()
    tree["usr/share/ql_new_app/app.json"] = file_node(
        '{"name": "ql_new_app", "version": "1.0"}\n')
    tree["usr/share/ql_new_app/icons/app.svg"] = file_node(
        '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16">'
        '<rect width="16" height="16" fill="#0a5"/></svg>\n')
    for path in CHANGES.new_empty_dirs:
        tree[path] = dir_node()


@functools.cache
def _rootfs_items(next_version: bool) -> tuple[tuple[str, Node], ...]:
    return tuple(sorted(_rootfs(next_version).items()))


def base_rootfs() -> Tree:
    """The rootfs of the base version (paths relative to the rootfs, no leading '/')."""
    return dict(_rootfs_items(False))


def next_rootfs() -> Tree:
    """The rootfs of the next version: the SDK's `ql-ol-rootfs/`."""
    return dict(_rootfs_items(True))
