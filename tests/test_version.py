"""The project version file and the archive key."""

from __future__ import annotations

import pytest

from dfota.core.errors import DfotaError
from dfota.formats.version import parse_version

NOTE_TEXT = b"""Project Name: RG520NNADA_VB
Project Rev : RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001
Branch  Name: SDX6X
Custom  Name: STD
Package Time: 2022-06-22,15:50
"""


def test_fields_and_key_from_the_vendor_format() -> None:
    v = parse_version(NOTE_TEXT, "v")
    assert v.project_name == "RG520NNADA_VB"
    assert v.branch_name == "SDX6X" and v.custom_name == "STD"
    assert v.key == "RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001@20220622T1550"
    assert v.text == NOTE_TEXT.decode()


def test_labels_are_read_whatever_their_spacing() -> None:
    text = b"Project Name:X\nProject   Rev:   R1\nPackage Time : 2023-01-02, 03:04\n"
    assert parse_version(text, "v").key == "R1@20230102T0304"


@pytest.mark.parametrize(("text", "message"), [
    (b"Project Name: X\nPackage Time: 2022-06-22,15:50\n", "no 'Project Rev' line"),
    (b"Project Rev: R1\nPackage Time: yesterday\n", "is not 'YYYY-MM-DD,HH:MM'"),
    (b"Project Rev: R 1/x\nPackage Time: 2022-06-22,15:50\n", "holds characters"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_bad_version_files_are_refused(text: bytes, message: str) -> None:
    with pytest.raises(DfotaError, match=message):
        parse_version(text, "some/etc/quectel-project-version")
