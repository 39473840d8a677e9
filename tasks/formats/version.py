"""The firmware version of a rootfs: `etc/quectel-project-version`, and the key it is archived by.

The file looks like this (labels are column-aligned, and the spacing varies between builds):

    Project Name: RG520NNADA_VB
    Project Rev : RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001
    Branch  Name: SDX6X
    Custom  Name: STD
    Package Time: 2022-06-22,15:50

A version's key is `<Project Rev>@<Package Time as YYYYMMDDTHHMM>`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from dfota.core.errors import DfotaError

VERSION_FILE = "etc/quectel-project-version"
_KEY_SAFE = re.compile(r"[A-Za-z0-9._+-]+")


@dataclass(frozen=True, slots=True)
class ProjectVersion:
    project_name: str
    project_rev: str
    branch_name: str
    custom_name: str
    package_time: datetime
    text: str  # the file exactly as read: the package carries it byte for byte

    @property
    def key(self) -> str:
        return f"{self.project_rev}@{self.package_time:%Y%m%dT%H%M}"

    def to_json(self) -> dict[str, str]:
        return {
            "key": self.key,
            "project_name": self.project_name,
            "project_rev": self.project_rev,
            "branch_name": self.branch_name,
            "custom_name": self.custom_name,
            "package_time": f"{self.package_time:%Y-%m-%d,%H:%M}",
        }


def _label(raw: str) -> str:
    return " ".join(raw.split()).lower()


def parse_version(data: bytes, where: str) -> ProjectVersion:
    """Read the version file's fields; `where` names the file in messages."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DfotaError("project version file is not UTF-8 text", where) from None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        label, sep, value = line.partition(":")
        if sep:
            fields[_label(label)] = value.strip()
    rev = fields.get("project rev", "")
    time_text = fields.get("package time", "")
    if not rev:
        raise DfotaError("project version file has no 'Project Rev' line", where)
    if not _KEY_SAFE.fullmatch(rev):
        raise DfotaError(f"Project Rev {rev!r} holds characters other than letters, digits "
                         "and . _ + -", where)
    try:
        when = datetime.strptime(" ".join(time_text.replace(",", " ").split()), "%Y-%m-%d %H:%M")
    except ValueError:
        raise DfotaError(f"Package Time {time_text!r} is not 'YYYY-MM-DD,HH:MM'", where) from None
    return ProjectVersion(
        project_name=fields.get("project name", ""),
        project_rev=rev,
        branch_name=fields.get("branch name", ""),
        custom_name=fields.get("custom name", ""),
        package_time=when,
        text=text,
    )
