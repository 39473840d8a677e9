"""One configuration, one workspace: the chain never builds, archives or publishes from settings
the user did not mean. Each case runs doit as a user does: in a project folder whose
pyproject.toml is edited as the README says, one command at a time."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from dfota.commands.params import CHAIN_PARAMS, TASK_PARAMS
from dfota.settings import SAMPLE_WORK
from tests.workspace import PROJECT, SAMPLE_LISTS, Run

VERSION_FILE = "etc/quectel-project-version"
BASE_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220622B_01.001@20220622T1550"
NEXT_KEY = "RG520NNADAR01A01M4G_OCPU_BETA_20220715A_01.002@20220715T0930"
FIXTURE_ARCHIVE = Path(__file__).parent / "fixtures" / "archive-59297fc.tar.xz"


class Project:
    """A project folder: pyproject.toml (the project's own, with [tool.dfota] as given), a copy
    of the sample's next SDK build under another name, and the sample's base zip."""

    def __init__(self, root: Path, sample_sdk: Path) -> None:
        self.root = root
        self.sdk = root / "my-sdk"
        shutil.copytree(sample_sdk / "ql-ol-extsdk", self.sdk, symlinks=True)
        self.base = root / "base.zip"
        shutil.copyfile(sample_sdk / "firmware/upgrade/targetfiles.zip", self.base)
        self.configure("")

    def configure(self, dfota: str, extra: str = "") -> None:
        """pyproject.toml: the project's own, its [tool.dfota] replaced by `dfota`."""
        text = (PROJECT / "pyproject.toml").read_text()
        text = re.sub(r"(?m)^\[tool\.dfota\]\n(?:(?!\[).*\n?)*", "[tool.dfota]\n" + dfota
                      + "\n\n", text)
        (self.root / "pyproject.toml").write_text(text + "\n" + extra)

    def doit(self, *argv: str) -> Run:
        done = subprocess.run([sys.executable, "-m", "doit", "-f", str(PROJECT / "dodo.py"),
                               "-d", str(self.root), *argv], cwd=self.root,
                              capture_output=True, text=True, check=False,
                              env={**os.environ, "PYTHONPATH": str(PROJECT)})
        return Run(done.returncode, done.stdout, done.stderr)

    def ok(self, *argv: str) -> Run:
        run = self.doit(*argv)
        assert run.returncode == 0, run.stdout + run.stderr
        return run

    def bump(self, when: str) -> str:
        """A new version of the SDK's rootfs; its key."""
        path = self.sdk / "ql-ol-rootfs" / VERSION_FILE
        path.write_text(re.sub(r"Package Time: .*", f"Package Time: {when}", path.read_text()))
        day, hour = when.split(",")
        return NEXT_KEY.split("@")[0] + "@" + day.replace("-", "") + "T" + hour.replace(":", "")

    def archived(self, archive: str = "archive") -> list[str]:
        folder = self.root / archive
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def summary(self, out: str = "out") -> dict:
        return json.loads((self.root / out / "update.json").read_text())


@pytest.fixture
def project(sample_sdk: Path, tmp_path: Path) -> Project:
    return Project(tmp_path, sample_sdk)


def error_lines(run: Run) -> list[str]:
    return [line for line in run.stderr.splitlines() if line.startswith("error: ")]


def own_sdk(project: Project, lists: str = str(SAMPLE_LISTS)) -> None:
    project.configure(f'sdk = "{project.sdk}"\nconfig = "{lists}"')


# ------------------------------------------------------------------ case 1: the sample's base


@pytest.mark.usefixtures("sample_checkout")
@pytest.mark.slow
def test_1_the_samples_versions_never_become_the_base_of_a_users_build(project: Project
                                                                       ) -> None:
    project.ok()  # the sample, in its own workspace
    assert (SAMPLE_WORK / "out" / "update.zip").is_file()
    own_sdk(project)
    stopped = project.doit("targetfiles", "delta", "verify")
    assert stopped.returncode == 1
    assert error_lines(stopped) == [
        f"error: {project.root / 'archive'}: this workspace has no version to build on: run "
        "`doit import_base --firmware DIR` once, or give `--source` a targetfiles.zip or an "
        "archived version"]
    assert project.archived() == [] and not (project.root / "out" / "update.zip").exists()
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    assert project.archived() == [BASE_KEY, NEXT_KEY]
    assert (project.summary()["source"], project.summary()["target"]) == (BASE_KEY, NEXT_KEY)
    assert project.summary()["package"] == "out/update.zip"


# ------------------------------------------------------------------ case 2: a typo


@pytest.mark.parametrize(("table", "line", "message"), [
    ("[tool.doit.tasks.targetfiles]", 'skd = "/x"',
     "[tool.doit.tasks.targetfiles] skd: unknown setting (did you mean sdk?)"),
    ("[tool.doit.tasks.targetfiles]", 'sdk = "/x"',
     "[tool.doit.tasks.targetfiles] sdk: a chain-wide setting; it moved to [tool.dfota]"),
    ("[tool.doit.tasks.delta]", "diff_timout = 3",
     "[tool.doit.tasks.delta] diff_timout: unknown setting (did you mean diff_timeout?)"),
    ("[tool.doit.tasks.deltas]", "mode = 'l'",
     "[tool.doit.tasks.deltas]: no such task (did you mean delta?)"),
])
@pytest.mark.slow
def test_2_a_typo_in_the_configuration_stops_the_command(project: Project, table: str,
                                                         line: str, message: str) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    published = (project.root / "out" / "update.zip").read_bytes()
    project.configure(f'sdk = "{project.sdk}"\nconfig = "{SAMPLE_LISTS}"', f"{table}\n{line}\n")
    run = project.doit()
    assert run.returncode == 1
    assert error_lines(run) == [f"error: {project.root / 'pyproject.toml'}: {message}"]
    assert (project.root / "out" / "update.zip").read_bytes() == published


@pytest.mark.slow
def test_2_a_typo_in_the_chain_table_names_the_nearest_setting(project: Project) -> None:
    project.configure('skd = "/x"')
    run = project.doit()
    assert run.returncode == 1
    assert error_lines(run) == [f"error: {project.root / 'pyproject.toml'}: [tool.dfota] skd: "
                                "unknown setting (did you mean sdk?)"]


# ------------------------------------------------------------------ case 3: settings travel


@pytest.mark.slow
def test_3_chain_settings_travel_along_the_chain(project: Project) -> None:
    own_sdk(project)
    project.configure(f'sdk = "{project.sdk}"\nconfig = "{SAMPLE_LISTS}"\nout = "elsewhere"')
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    assert (project.root / "elsewhere" / "update.zip").is_file()
    assert not (project.root / "out").exists()
    # a chain-wide option on the command line applies to every task of that command
    project.ok("targetfiles", "--out", "other", "delta", "verify")
    assert (project.root / "other" / "update.zip").is_file()
    # one command at a time, the same folders (a new workspace: its source named)
    key = project.bump("2022-08-01,08:00")
    project.ok("targetfiles", "--out", "third", "--state", "third-state", "--source", NEXT_KEY)
    project.ok("delta", "--out", "third", "--state", "third-state")
    project.ok("verify", "--out", "third", "--state", "third-state")
    assert project.summary("third")["target"] == key
    assert project.summary("third")["source"] == NEXT_KEY


@pytest.mark.slow
def test_3_verify_in_a_workspace_that_built_nothing_changes_nothing(project: Project) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    project.bump("2022-08-01,08:00")
    before = project.archived()
    run = project.doit("verify", "--out", "x", "--archive", "archive", "--state", "z")
    assert run.returncode == 1
    assert error_lines(run) == [f"error: {project.root / 'z' / 'workspace.json'}: this "
                                "workspace has no target yet: run `doit targetfiles` first"]
    assert project.archived() == before and not (project.root / "x").exists()
    assert (project.root / "out" / "update.zip").is_file()


# ------------------------------------------------------------------ case 4: a second command


@pytest.mark.slow
def test_4_a_second_command_works_on_the_recorded_target(project: Project) -> None:
    project.ok("targetfiles", "--sdk", str(project.sdk), "--source", str(project.base),
               "--config", str(SAMPLE_LISTS))
    before = project.archived()
    project.ok("delta", "--base", BASE_KEY, "--config", str(SAMPLE_LISTS))
    assert project.archived() == before  # nothing rebuilt from the sample
    assert project.summary()["target"] == NEXT_KEY
    # a changed SDK file rebuilds the target with the same SDK and the same (named) source
    key = project.bump("2022-08-01,08:00")
    project.ok("delta", "--config", str(SAMPLE_LISTS))
    assert project.archived() == sorted([*before, key])
    assert (project.summary()["source"], project.summary()["target"]) == (BASE_KEY, key)
    # naming another SDK than the record's is refused
    run = project.doit("delta", "--sdk", str(project.root / "another"), "--config",
                       str(SAMPLE_LISTS))
    assert run.returncode == 1
    assert "differs from this workspace's record" in run.stderr


# ------------------------------------------------------------------ case 5: derived keys


@pytest.mark.slow
def test_5_a_worse_package_is_never_kept_as_up_to_date(project: Project) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base))
    project.ok("delta", "--diff-timeout", "0.000001")
    assert project.summary()["diff_timeouts"] > 0
    again = project.ok("delta", "--diff-timeout", "0.000001")
    assert ".  delta" in again.stdout  # a time-out fired: never up to date
    project.ok("delta")
    assert project.summary()["diff_timeouts"] == 0


ALL = {"targetfiles", "delta", "verify"}


@pytest.mark.parametrize(("where", "setting", "readers"), [
    ("targetfiles", ("--strict",), ALL),
    ("targetfiles", ("--metadata-from-image",), ALL),
    ("targetfiles", ("--allow-outside-links",), ALL),
    ("delta", ("--mode", "l"), {"delta", "verify"}),
    ("delta", ("--base", BASE_KEY), {"delta", "verify"}),
    ("delta", ("--bases", "1"), {"delta", "verify"}),
    ("delta", ("--size-budget-mb", "60"), {"delta", "verify"}),
    ("delta", ("--diff-timeout", "200"), {"delta", "verify"}),
    ("delta", ("--workers", "1"), {"delta", "verify"}),
    ("delta", ("--cache-size-mb", "32"), {"delta", "verify"}),
    ("pyproject", ("config", "lists-copy"), {"delta", "verify"}),
    ("pyproject", ("empty_by_nature", ["proc"]), ALL),
    ("pyproject", ("source", BASE_KEY[:40]), ALL),  # the same base, by a key prefix
    ("pyproject", ("max_entry_mb", 1024), ALL),  # every task reads the zips
])
@pytest.mark.slow
def test_5_a_changed_setting_reruns_the_tasks_that_read_it(project: Project, where: str,
                                                           setting: tuple, readers: set[str]
                                                           ) -> None:
    """Each setting in turn: the tasks that read it run again (and those after them, whose
    inputs they rewrite), the tasks before them do not; the same command again does nothing."""
    lines = f'sdk = "{project.sdk}"\nconfig = "{SAMPLE_LISTS}"\nsource = "{project.base}"'
    project.configure(lines)
    if setting[0] == "--strict":  # the sample's own empty folders would stop --strict
        for folder in ("usrdata/empty_dir", "usrdata/new_empty_dir"):
            (project.sdk / "ql-ol-rootfs" / folder).rmdir()
        (project.sdk / "ql-ol-rootfs" / "usrdata" / "kept").write_text("x")
        (project.sdk / "target" / "sdxlemur-sysfs.ubi").unlink()  # no drift warnings
    project.ok()
    args = ["targetfiles", *(setting if where == "targetfiles" else ()), "delta",
            *(setting if where == "delta" else ()), "verify"]
    if where == "pyproject":
        key, value = setting
        if key == "config":
            value = str(shutil.copytree(SAMPLE_LISTS, project.root / value))
        lines = "\n".join(line for line in lines.splitlines() if not line.startswith(key))
        project.configure(f"{lines}\n{key} = {json.dumps(value)}")
    ran = project.ok(*args)
    assert {t for t in ALL if f".  {t}\n" in ran.stdout} == readers, ran.stdout
    assert "up to date" in project.ok(*args).stdout


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (PROJECT / "README.md").read_text()
    table = readme[readme.index("## Configuration"):]
    names = [p["name"] for p in CHAIN_PARAMS] + ["empty_by_nature"] + \
        [p["name"] for params in TASK_PARAMS.values() for p in params]
    missing = [n for n in names
               if f"`{n}`" not in table and f"--{n.replace('_', '-')}" not in table]
    assert missing == []


# ------------------------------------------------------------------ case 6: downgrades


@pytest.mark.slow
def test_6_bases_count_older_versions_and_a_downgrade_is_named(project: Project) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    newer = project.bump("2022-09-01,08:00")
    project.ok("targetfiles", "delta", "verify")
    older = project.bump("2022-08-01,08:00")
    project.ok("targetfiles", "--source", NEXT_KEY)
    run = project.ok("delta", "--bases", "3", "verify")
    assert "this workspace has only 2 version(s) older than" in run.stdout
    index = json.loads((project.root / "out" / "deltas" / "index.json").read_text())
    assert [p["base"] for p in index["packages"]] == [NEXT_KEY, BASE_KEY]
    assert all((project.root / p["package"]).is_file() for p in index["packages"])
    down = project.ok("delta", "--base", newer, "verify")
    line = (f"downgrade: the base {newer} is newer than the target {older}; the package takes "
            "modules back to an older version")
    assert f"warning: {line}" in down.stdout
    assert line in project.summary()["warnings"]
    assert line in (project.root / "out" / "update.html").read_text()
    run = project.doit("delta", "--bases", "0")
    assert run.returncode == 1 and error_lines(run) == ["error: --bases 0: must be at least 1"]


# ------------------------------------------------------------------ case 7: out/ tells the truth


@pytest.mark.slow
def test_7_out_holds_only_this_targets_outputs(project: Project) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    project.ok("delta", "--bases", "1", "verify")
    assert (project.root / "out" / "deltas" / "index.json").is_file()
    project.bump("2022-08-01,08:00")
    made = project.ok("targetfiles", "delta")
    pending = project.root / "out" / ".unverified" / "update.zip"
    assert f"delta: {pending} (" in made.stdout and "unverified" in made.stdout
    assert not (project.root / "out" / "deltas").exists()
    assert project.summary()["package"] == "out/.unverified/update.zip" and pending.is_file()
    project.ok("verify")
    summary = project.summary()
    for path in (summary["package"], summary["verify"]["package"], summary["target_zip"],
                 summary["base_zip"]):  # named from the workspace's folder
        assert (project.root / path).is_file(), path
    assert summary["package"] == "out/update.zip"
    quiet = project.ok()
    assert quiet.stdout.splitlines()[-1].startswith("up to date: nothing changed; ")
    assert (project.root / "out" / "update.zip").is_file()


# ------------------------------------------------------------------ case 8: vendor lists


@pytest.mark.slow
def test_8_a_users_sdk_names_its_vendor_lists(project: Project) -> None:
    project.configure(f'sdk = "{project.sdk}"')
    run = project.doit("targetfiles", "--source", str(project.base), "delta")
    assert run.returncode == 1
    assert error_lines(run) == [
        f"error: {project.root / 'pyproject.toml'}: name the vendor lists of your SDK: config "
        "= \"DIR\" (or \"none\") in [tool.dfota], or --config DIR"]
    (project.root / "lists").mkdir()
    own_sdk(project, str(project.root / "lists"))
    run = project.doit("targetfiles", "--source", str(project.base), "delta")
    assert run.returncode == 1
    assert error_lines(run) == [
        f"error: {project.root / 'lists'}: vendor lists missing: quectel_fullota_filelist.txt, "
        "quectel_noota_filelist.txt, quectel_chmod_filelist.txt, "
        "quectel_multifota_filelist.txt (an empty file is an empty list)"]
    own_sdk(project, "none")
    run = project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    assert run.stderr.count("no vendor lists apply") == 1
    assert project.summary()["config"] is None


# ------------------------------------------------------------------ the workspace


@pytest.mark.slow
def test_folders_empty_by_nature_are_carried_without_a_word(project: Project) -> None:
    own_sdk(project)
    rootfs = project.sdk / "ql-ol-rootfs"
    for folder in ("usrdata/empty_dir", "usrdata/new_empty_dir"):
        (rootfs / folder).rmdir()
    (rootfs / "usrdata" / "kept").write_text("x")
    (project.sdk / "target" / "sdxlemur-sysfs.ubi").unlink()  # no drift warnings
    (rootfs / "mnt").mkdir(exist_ok=True)
    run = project.ok("targetfiles", "--source", str(project.base), "--strict")
    assert "empty directory" not in run.stdout
    with zipfile.ZipFile(project.root / "out" / "targetfiles.zip") as zf:
        assert {"SYSTEM/mnt/", "SYSTEM/proc/"} <= set(zf.namelist())
    (rootfs / "usrdata" / "fresh").mkdir()
    stopped = project.doit("targetfiles", "--strict")
    assert stopped.returncode == 1 and "usrdata/fresh: empty directory" in stopped.stdout


@pytest.mark.slow
def test_out_and_the_archive_name_no_path_of_the_build_machine(project: Project) -> None:
    """Inputs inside the workspace's folder by relative path, outside it by base name (the
    state folder and the logs may keep the machine's paths)."""
    outside = project.root.parent / f"{project.root.name}-lists"
    shutil.copytree(SAMPLE_LISTS, outside)
    own_sdk(project, str(outside))
    project.ok("targetfiles", "--source", str(project.base), "delta", "--bases", "1", "verify")
    for folder in (project.root / "out", project.root / "archive"):
        for path in folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert str(project.root.parent).encode() not in data, path
    manifest = json.loads((project.root / "archive" / NEXT_KEY / "manifest.json").read_text())
    assert manifest["inputs"]["sdk"] == "my-sdk"
    source = json.loads((project.root / "archive" / BASE_KEY / "manifest.json").read_text())
    assert source["imported_from"] == "base.zip"
    summary = project.summary()
    assert (summary["config"], summary["base_zip"]) == (outside.name,
                                                       f"archive/{BASE_KEY}/targetfiles.zip")
    assert summary["base_sha256"] == hashlib.sha256(project.base.read_bytes()).hexdigest()


@pytest.mark.slow
def test_build_warnings_reach_the_summary_and_the_report(project: Project) -> None:
    own_sdk(project)
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    warning = "my-sdk/ql-ol-rootfs/usrdata/empty_dir: empty directory"  # no host layout
    assert any(w.startswith(warning) for w in project.summary()["build_warnings"])
    assert warning in (project.root / "out" / "update.html").read_text()


@pytest.mark.slow
def test_two_workspaces_sharing_an_archive_build_on_their_own_versions(project: Project,
                                                                       sample_sdk: Path
                                                                       ) -> None:
    other = Project(project.root / "other", sample_sdk)
    shared = project.root / "shared-archive"
    for one in (project, other):
        one.configure(f'sdk = "{one.sdk}"\nconfig = "{SAMPLE_LISTS}"\narchive = "{shared}"')
    project.ok("targetfiles", "--source", str(project.base), "delta", "verify")
    # the other product: its own base (another Project Rev) and SDK
    other_base_key = "OTHERPRODUCTR01A01_BASE_01.001@20220601T1000"
    other_key = other.bump("2022-10-01,08:00")  # newer than everything of the first
    with zipfile.ZipFile(other.base) as zf:
        items = [(i, zf.read(i)) for i in zf.infolist()]
    with zipfile.ZipFile(other.base, "w") as out:
        for info, data in items:
            if info.filename == "SYSTEM/" + VERSION_FILE:
                data = re.sub(rb"Project Rev : \S+",
                              b"Project Rev : OTHERPRODUCTR01A01_BASE_01.001", data)
                data = re.sub(rb"Package Time: .*", b"Package Time: 2022-06-01,10:00", data)
            out.writestr(info, data)
    other.ok("targetfiles", "--source", str(other.base), "delta", "verify")
    assert other.summary()["source"] == other_base_key
    mine = project.bump("2022-08-01,08:00")
    project.ok()
    assert (project.summary()["source"], project.summary()["target"]) == (NEXT_KEY, mine)
    assert other_key in project.archived(str(shared))


@pytest.mark.slow
def test_an_archive_written_by_an_earlier_version_stays_usable(project: Project) -> None:
    with tarfile.open(FIXTURE_ARCHIVE) as tar:
        tar.extractall(project.root, filter="data")
    own_sdk(project)
    key = project.bump("2022-08-01,08:00")
    project.ok("targetfiles", "--source", NEXT_KEY, "delta", "verify")
    assert (project.summary()["source"], project.summary()["target"]) == (NEXT_KEY, key)
    project.ok("delta", "--base", BASE_KEY, "verify")
    assert project.summary()["source"] == BASE_KEY


@pytest.fixture
def sample_checkout() -> Iterator[None]:
    """The sample's own workspace, as the checkout has it: saved and put back."""
    saved = SAMPLE_WORK.with_name("work.saved-by-tests")
    if SAMPLE_WORK.exists():
        shutil.rmtree(saved, ignore_errors=True)
        SAMPLE_WORK.rename(saved)
    try:
        yield
    finally:
        shutil.rmtree(SAMPLE_WORK, ignore_errors=True)
        if saved.exists():
            saved.rename(SAMPLE_WORK)
