from __future__ import annotations

from pathlib import Path

import pytest

from dfota.core.errors import DfotaError
from dfota.formats.filelists import (
    CHMOD_LIST,
    FULLOTA_LIST,
    LIST_NAMES,
    MULTIFOTA_LIST,
    NO_LISTS,
    NOOTA_LIST,
    PROJECT_LIST,
    ChmodRule,
    FileLists,
    changed_noota_files,
    check_file_lists,
    chmod_for,
    lists_in,
    noota_changed_error,
    read_file_lists,
)

SAMPLE_CONFIG = Path(__file__).resolve().parent.parent / "sample_sdk" / "config"

# Figure 4 of the note (section 2.5): every line commented out, columns aligned with spaces.
# Values sit in the columns where the figure prints them; names use `_` as in decisions.md.
FIGURE_4 = """\
#this line is comment
#default
#example
#   file or folder      file permission   userid  groupid   folder permission
#    default            755               0       0         755
#    /home/test_folder/ 755               1       0         644
#   /usr/bin/test_bin   644               2       2
#   /usr/bin/test_bin1  742               3       1
#    /usr/bin/test_bin2
"""

# The same example put in force: the text lines stay comments, the example lines do not.
FIGURE_4_ACTIVE = "\n".join(
    line if index < 4 else line[1:] for index, line in enumerate(FIGURE_4.splitlines())
)

# The noota list of section 2.6 of the note (one path per line, blank lines between).
NOOTA_2_6 = """\
SYSTEM/kt_dms/ec21/kt_svc

SYSTEM/kt_dms/ec25/kt_dmc

SYSTEM/kt_dms/ec25/kt_svc

SYSTEM/kt_dms/lib/libkt_dev_detail-1.0.so

SYSTEM/kt_dms/lib/libkt_fw_flags-1.0.so

SYSTEM/kt_dms/lib/libkt_dmc_cm-1.0.so

SYSTEM/kt_dms/lib/libkt_fw_up-1.0.so

SYSTEM/firmware/image/seg_info.txt

SYSTEM/etc/webui/test.cfg
"""


def write_lists(folder: Path, **texts: str) -> Path:
    """Write list files named by key (fullota, noota, chmod, multifota, project)."""
    names = {
        "fullota": FULLOTA_LIST,
        "noota": NOOTA_LIST,
        "chmod": CHMOD_LIST,
        "multifota": MULTIFOTA_LIST,
        "project": PROJECT_LIST,
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key in ("fullota", "noota", "chmod", "multifota"):
        (folder / names[key]).touch()
    for key, text in texts.items():
        (folder / names[key]).write_text(text, encoding="utf-8")
    return folder


def read(tmp_path: Path, **texts: str) -> FileLists:
    return read_file_lists(write_lists(tmp_path / "config", **texts))


def error_of(tmp_path: Path, **texts: str) -> str:
    with pytest.raises(DfotaError) as info:
        read(tmp_path, **texts)
    return str(info.value)


# ---------------------------------------------------------------- the folder


def test_empty_files_are_empty_lists_and_the_project_list_is_optional(tmp_path: Path) -> None:
    lists = read(tmp_path)
    assert lists == FileLists((), (), (), (), (), tmp_path / "config")
    assert not (tmp_path / "config" / PROJECT_LIST).exists()


def test_a_folder_without_a_required_list_names_the_missing_ones(tmp_path: Path) -> None:
    folder = write_lists(tmp_path / "config")
    (folder / NOOTA_LIST).unlink()
    (folder / MULTIFOTA_LIST).unlink()
    with pytest.raises(DfotaError) as info:
        read_file_lists(folder)
    assert str(info.value) == (f"{folder}: vendor lists missing: {NOOTA_LIST}, "
                               f"{MULTIFOTA_LIST} (an empty file is an empty list)")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DfotaError, match="vendor lists missing: " + FULLOTA_LIST):
        read_file_lists(tmp_path / "empty")


def test_no_lists_at_all() -> None:
    assert lists_in(None) == NO_LISTS
    assert NO_LISTS.folder is None and not NO_LISTS.chmod


def test_missing_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DfotaError, match="config folder not found"):
        read_file_lists(tmp_path / "nope")


def test_list_file_that_is_a_folder_is_an_error(tmp_path: Path) -> None:
    (write_lists(tmp_path / "config") / CHMOD_LIST).unlink()
    (tmp_path / "config" / CHMOD_LIST).mkdir()
    with pytest.raises(DfotaError, match="is a folder, expected a text file"):
        read_file_lists(tmp_path / "config")


def test_sample_config(tmp_path: Path) -> None:
    assert sorted(path.name for path in SAMPLE_CONFIG.iterdir()) == sorted(LIST_NAMES)
    lists = read_file_lists(SAMPLE_CONFIG)
    assert lists.fullota == ("SYSTEM/usr/bin/ql_fullota_demo",)
    assert lists.noota == ("SYSTEM/etc/webui/test.cfg",)
    assert lists.chmod == (
        ChmodRule("SYSTEM/usr/bin/ql_secret_tool", False, 0o700, 0, 0, 0o755, 12),
        ChmodRule("SYSTEM/etc/ql_secret", True, 0o600, 0, 0, 0o700, 13),
    )
    assert lists.multifota == (("abl.elf", "abl"),)
    assert lists.project == ("RG520NNADA_VB",)


# ---------------------------------------------------------------- fullota / noota


def test_noota_example_of_section_2_6(tmp_path: Path) -> None:
    lists = read(tmp_path, noota=NOOTA_2_6)
    assert lists.noota == tuple(line for line in NOOTA_2_6.splitlines() if line)


@pytest.mark.parametrize("key", ["fullota", "noota"])
def test_path_list_forms(tmp_path: Path, key: str) -> None:
    text = (
        "# a comment\n"
        "   # an indented comment\n"
        "\n"
        "  SYSTEM/etc/webui/test.cfg  \n"
        "/usr/bin/ql demo\n"
        "SYSTEM//usr///lib/libx.so\n"
        "\t/etc/#hash\r\n"
    )
    lists = read(tmp_path, **{key: text})
    assert getattr(lists, key) == (
        "SYSTEM/etc/webui/test.cfg",
        "SYSTEM/usr/bin/ql demo",
        "SYSTEM/usr/lib/libx.so",
        "SYSTEM/etc/#hash",
    )


def test_crlf_and_bom(tmp_path: Path) -> None:
    folder = write_lists(tmp_path / "config")
    (folder / NOOTA_LIST).write_bytes(b"\xef\xbb\xbf# c\r\nSYSTEM/etc/a\r\n/etc/b\r\n")
    assert read_file_lists(folder).noota == ("SYSTEM/etc/a", "SYSTEM/etc/b")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("SYSTEM/etc/webui/", "'SYSTEM/etc/webui/' is a folder: only single files are supported"),
        ("/etc/webui/", "'/etc/webui/' is a folder: only single files are supported"),
        ("BOOT/kernel", "'BOOT/kernel' is outside SYSTEM/"),
        ("etc/webui/test.cfg", "'etc/webui/test.cfg' is outside SYSTEM/"),
        ("SYSTEMX/a", "'SYSTEMX/a' is outside SYSTEM/"),
        ("SYSTEM/etc/../passwd", "'SYSTEM/etc/../passwd' contains a '.' or '..' component"),
        ("/etc/./a", "'/etc/./a' contains a '.' or '..' component"),
        ("SYSTEM", "'SYSTEM' names no file below SYSTEM/"),
        ("SYSTEM//", "'SYSTEM//' is a folder"),
        ("/", "'/' is a folder"),
    ],
)
@pytest.mark.parametrize(("key", "name"), [("fullota", FULLOTA_LIST), ("noota", NOOTA_LIST)])
def test_path_list_errors(tmp_path: Path, key: str, name: str, line: str, message: str) -> None:
    error = error_of(tmp_path, **{key: f"# ok\nSYSTEM/etc/fine\n\n{line}\n"})
    assert error.startswith(str(tmp_path / "config" / name) + ":4: ")
    assert message in error


def test_invalid_utf8_names_file_and_line(tmp_path: Path) -> None:
    folder = write_lists(tmp_path / "config")
    (folder / FULLOTA_LIST).write_bytes(b"SYSTEM/a\nSYSTEM/b\xff\n")
    with pytest.raises(DfotaError) as info:
        read_file_lists(folder)
    assert str(info.value) == f"{folder / FULLOTA_LIST}:2: line is not valid UTF-8: SYSTEM/b\\xff"


# ---------------------------------------------------------------- chmod


def test_figure_4_as_printed_has_no_effect(tmp_path: Path) -> None:
    assert read(tmp_path, chmod=FIGURE_4).chmod == ()


def test_figure_4_in_force(tmp_path: Path) -> None:
    assert read(tmp_path, chmod=FIGURE_4_ACTIVE).chmod == (
        ChmodRule("SYSTEM/home/test_folder", True, 0o755, 1, 0, 0o644, 6),
        ChmodRule("SYSTEM/usr/bin/test_bin", False, 0o644, 2, 2, 0o755, 7),
        ChmodRule("SYSTEM/usr/bin/test_bin1", False, 0o742, 3, 1, 0o755, 8),
        ChmodRule("SYSTEM/usr/bin/test_bin2", False, 0o755, 0, 0, 0o755, 9),
    )


def test_default_line_fills_omitted_fields_before_and_after_it(tmp_path: Path) -> None:
    text = "/usr/bin/a\n/usr/bin/b 0644\n\tdefault 0700 5 6 0750\n/usr/lib/c/ 0640 7\n"
    assert read(tmp_path, chmod=text).chmod == (
        ChmodRule("SYSTEM/usr/bin/a", False, 0o700, 5, 6, 0o750, 1),
        ChmodRule("SYSTEM/usr/bin/b", False, 0o644, 5, 6, 0o750, 2),
        ChmodRule("SYSTEM/usr/lib/c", True, 0o640, 7, 6, 0o750, 4),
    )


def test_default_line_omitting_fields_keeps_builtin_values(tmp_path: Path) -> None:
    rules = read(tmp_path, chmod="default 0600 1000\n/a\n").chmod
    assert rules == (ChmodRule("SYSTEM/a", False, 0o600, 1000, 0, 0o755, 2),)
    rules = read(tmp_path, chmod="default\n/a\n").chmod
    assert rules == (ChmodRule("SYSTEM/a", False, 0o755, 0, 0, 0o755, 2),)


def test_builtin_defaults_without_default_line(tmp_path: Path) -> None:
    assert read(tmp_path, chmod="/etc/x/\n").chmod == (
        ChmodRule("SYSTEM/etc/x", True, 0o755, 0, 0, 0o755, 1),
    )


@pytest.mark.parametrize(
    ("text", "mode"),
    [("755", 0o755), ("0755", 0o755), ("4755", 0o4755), ("000", 0), ("7777", 0o7777)],
)
def test_mode_forms(tmp_path: Path, text: str, mode: int) -> None:
    (rule,) = read(tmp_path, chmod=f"/usr/bin/x {text} 0 0 {text}\n").chmod
    assert (rule.mode, rule.dir_mode) == (mode, mode)


def test_whitespace_and_ids(tmp_path: Path) -> None:
    (rule,) = read(tmp_path, chmod="  /usr/bin/x\t0711   1000\t\t1001 \n").chmod
    assert (rule.path, rule.mode, rule.uid, rule.gid) == ("SYSTEM/usr/bin/x", 0o711, 1000, 1001)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/usr/bin/x 8x5", "mode '8x5' is not octal"),
        ("/usr/bin/x 789", "mode '789' is not octal"),
        ("/usr/bin/x 75", "mode '75' must have 3 or 4 octal digits"),
        ("/usr/bin/x 07555", "mode '07555' must have 3 or 4 octal digits"),
        ("/usr/bin/x 755 root", "uid 'root' is not a decimal number"),
        ("/usr/bin/x 755 0 -1", "gid '-1' is not a decimal number"),
        ("/usr/bin/x 755 4294967295", "uid '4294967295' is out of range"),
        ("/usr/bin/x/ 755 0 0 7x5", "folder mode '7x5' is not octal"),
        ("/usr/bin/x 755 0 0 755 1", "too many fields (6)"),
        ("/usr/bin/x 755 # set by hand", "comments must be on a line of their own"),
        ("usr/bin/x 755", "'usr/bin/x 755' is neither a comment, a 'default' line nor a path"),
        ("SYSTEM/usr/bin/x", "'SYSTEM/usr/bin/x' is neither a comment"),
        ("defaults 755", "'defaults 755' is neither a comment"),
        ("/usr/../etc/x", "'/usr/../etc/x' contains a '.' or '..' component"),
        ("/ 755", "'/' names the whole root filesystem"),
        ("default 700", "a second 'default' line (the first is line 2)"),
        ("/etc/a/", "'/etc/a/' is already listed on line 3"),
    ],
)
def test_chmod_errors(tmp_path: Path, line: str, message: str) -> None:
    text = f"# header\ndefault 755\n/etc/a 644\n\n{line}\n"
    error = error_of(tmp_path, chmod=text)
    assert error.startswith(str(tmp_path / "config" / CHMOD_LIST) + ":5: ")
    assert message in error


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("default 8x5", "mode '8x5' is not octal"),
        ("default 755 0 0 755 9", "too many fields (6)"),
        ("default 755 x", "uid 'x' is not a decimal number"),
    ],
)
def test_default_line_errors(tmp_path: Path, line: str, message: str) -> None:
    error = error_of(tmp_path, chmod=f"/etc/a 644\n{line}\n")
    assert error.startswith(f"{tmp_path / 'config' / CHMOD_LIST}:2: {message}")


def test_chmod_error_message_exactly(tmp_path: Path) -> None:
    text = "#\n#\n#\n#\n#\n#\n/usr/bin/test_bin 8x5\n"
    error = error_of(tmp_path, chmod=text)
    assert error.endswith(f"{CHMOD_LIST}:7: mode '8x5' is not octal")


def test_chmod_for_resolution(tmp_path: Path) -> None:
    text = (
        "/etc/ql_secret/ 0600 1 2 0700\n"
        "/etc/ql_secret/inner/ 0640 3 4 0750\n"
        "/etc/ql_secret/key 0400 5 6\n"
        "/usr/bin/tool 0711 0 0 0700\n"
    )
    rules = read(tmp_path, chmod=text).chmod
    assert chmod_for(rules, "SYSTEM/etc/ql_secret", is_dir=True) == (1, 2, 0o700)
    assert chmod_for(rules, "SYSTEM/etc/ql_secret/a.cfg", is_dir=False) == (1, 2, 0o600)
    assert chmod_for(rules, "SYSTEM/etc/ql_secret/sub", is_dir=True) == (1, 2, 0o700)
    assert chmod_for(rules, "SYSTEM/etc/ql_secret/inner", is_dir=True) == (3, 4, 0o750)
    assert chmod_for(rules, "SYSTEM/etc/ql_secret/inner/b", is_dir=False) == (3, 4, 0o640)
    assert chmod_for(rules, "SYSTEM/etc/ql_secret/key", is_dir=False) == (5, 6, 0o400)
    assert chmod_for(rules, "SYSTEM/usr/bin/tool", is_dir=False) == (0, 0, 0o711)
    assert chmod_for(rules, "SYSTEM/etc/ql_secretx", is_dir=False) is None
    assert chmod_for(rules, "SYSTEM/usr/bin/tool/x", is_dir=False) is None


# ---------------------------------------------------------------- multifota / project


def test_multifota(tmp_path: Path) -> None:
    text = "# images\nabl.elf abl\n  MULTIFOTA/tz.mbn\ttz  \nxbl_config.elf\n"
    assert read(tmp_path, multifota=text).multifota == (
        ("abl.elf", "abl"),
        ("tz.mbn", "tz"),
        ("xbl_config.elf", None),
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("abl.elf abl extra", "expected 'IMAGE PARTITION' or 'IMAGE'"),
        ("/abl.elf abl", "image '/abl.elf' must name a file under MULTIFOTA/"),
        ("sub/ abl", "image 'sub/' must name a file under MULTIFOTA/"),
        ("../abl.elf x", "'../abl.elf' contains a '.' or '..' component"),
        ("MULTIFOTA/ x", "must name a file under MULTIFOTA/"),
        ("tz.mbn a/b", "'a/b' is not a partition name"),
        ("MULTIFOTA/boot.img boot", "image 'boot.img' is already listed on line 2"),
        ("other.elf abl", "partition 'abl' is already written by line 1"),
    ],
)
def test_multifota_errors(tmp_path: Path, line: str, message: str) -> None:
    error = error_of(tmp_path, multifota=f"abl.elf abl\nboot.img\n{line}\n")
    assert error.startswith(str(tmp_path / "config" / MULTIFOTA_LIST) + ":3: ")
    assert message in error


def test_project_lines_kept_verbatim(tmp_path: Path) -> None:
    text = "# unused\nRG520NNADA_VB\n\n  SDX6X  extra words\n"
    assert read(tmp_path, project=text).project == ("RG520NNADA_VB", "  SDX6X  extra words")


# ---------------------------------------------------------------- checks against the target

TARGET = (
    "SYSTEM/",
    "SYSTEM/etc/",
    "SYSTEM/etc/webui/test.cfg",
    "SYSTEM/usr/bin/ql_fullota_demo",
    "SYSTEM/usr/bin/ql_secret_tool",
    "SYSTEM/etc/ql_secret/key.pem",
    "MULTIFOTA/abl.elf",
)


def test_sample_config_matches_a_full_target() -> None:
    assert check_file_lists(read_file_lists(SAMPLE_CONFIG), TARGET) == []


def test_warnings_for_missing_paths(tmp_path: Path) -> None:
    lists = read(
        tmp_path,
        fullota="SYSTEM/usr/bin/ql_fullota_demo\nSYSTEM/usr/bin/gone\n/usr/bin/gone\n",
        noota="SYSTEM/etc/webui/test.cfg\nSYSTEM/etc/webui/old.cfg\nSYSTEM/etc\n",
        chmod="/etc/ql_secret/\n/etc/\n/etc/missing/\n/usr/bin/nope 0700\n/etc/webui/test.cfg\n",
        multifota="abl.elf abl\ntz.mbn tz\n",
    )
    assert check_file_lists(lists, TARGET) == [
        f"{FULLOTA_LIST}: SYSTEM/usr/bin/gone is listed 2 times",
        f"{FULLOTA_LIST}: SYSTEM/usr/bin/gone is not in the target",
        f"{NOOTA_LIST}: SYSTEM/etc/webui/old.cfg is not in the target",
        f"{NOOTA_LIST}: SYSTEM/etc is a folder in the target; list its files",
        f"{CHMOD_LIST}:3: folder SYSTEM/etc/missing is not in the target",
        f"{CHMOD_LIST}:4: file SYSTEM/usr/bin/nope is not in the target",
        f"{MULTIFOTA_LIST}: MULTIFOTA/tz.mbn is not in the target",
    ]


def test_folder_rule_found_through_files_without_folder_entries(tmp_path: Path) -> None:
    lists = read(tmp_path, chmod="/opt/app/\n/opt/ap/\n")
    warnings = check_file_lists(lists, ["SYSTEM/opt/app/bin/run"])
    assert warnings == [f"{CHMOD_LIST}:2: folder SYSTEM/opt/ap is not in the target"]


def test_noota_and_fullota_conflict(tmp_path: Path) -> None:
    lists = read(
        tmp_path,
        fullota="SYSTEM/etc/webui/test.cfg\nSYSTEM/usr/bin/ql_fullota_demo\n",
        noota="/etc/webui/test.cfg\n",
    )
    with pytest.raises(DfotaError) as info:
        check_file_lists(lists, TARGET)
    assert str(info.value) == (
        f"{tmp_path / 'config'}: 1 file(s) in both {NOOTA_LIST} and {FULLOTA_LIST} "
        "(SYSTEM/etc/webui/test.cfg): keep each in one list"
    )


# ---------------------------------------------------------------- restriction 2


def test_changed_noota_files(tmp_path: Path) -> None:
    lists = read(
        tmp_path,
        noota="SYSTEM/etc/same.cfg\nSYSTEM/etc/changed.cfg\nSYSTEM/etc/new.cfg\n"
        "SYSTEM/etc/removed.cfg\nSYSTEM/etc/absent.cfg\n",
    )
    source = {
        "SYSTEM/etc/same.cfg": "a" * 40,
        "SYSTEM/etc/changed.cfg": "b" * 40,
        "SYSTEM/etc/removed.cfg": "c" * 40,
        "SYSTEM/etc/other.cfg": "d" * 40,
    }
    target = {
        "SYSTEM/etc/same.cfg": "a" * 40,
        "SYSTEM/etc/changed.cfg": "e" * 40,
        "SYSTEM/etc/new.cfg": "f" * 40,
        "SYSTEM/etc/other.cfg": "0" * 40,
    }
    assert changed_noota_files(lists, source, target) == [
        "SYSTEM/etc/changed.cfg",
        "SYSTEM/etc/new.cfg",
    ]
    assert changed_noota_files(lists, source, source) == []


def test_noota_changed_error_messages(tmp_path: Path) -> None:
    lists = read(tmp_path)
    noota = tmp_path / "config" / NOOTA_LIST
    one = noota_changed_error(lists, ["SYSTEM/etc/webui/test.cfg"])
    assert isinstance(one, DfotaError)
    assert str(one) == (
        f"{noota}: SYSTEM/etc/webui/test.cfg changed between source and target: move it from "
        f"the noota list to the fullota list ({FULLOTA_LIST})"
    )
    two = noota_changed_error(lists, ["SYSTEM/a", "SYSTEM/b"])
    assert str(two) == (
        f"{noota}: 2 files changed between source and target (SYSTEM/a, SYSTEM/b): move them "
        f"from the noota list to the fullota list ({FULLOTA_LIST})"
    )
    assert "\n" not in str(two)
