"""The package report: update.json against its schema, and the HTML page in headless chromium."""

from __future__ import annotations

import copy
import html.parser
import io
import itertools
import json
import os
import re
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from dfota.build.targetfiles import system_tree
from dfota.core.errors import DfotaError
from dfota.core.runlog import RunLog
from dfota.device.updater import load_package
from dfota.formats.filelists import lists_in
from dfota.formats.zipio import ZipSource
from dfota.package.delta import build_delta
from dfota.package.mode import parse_mode
from dfota.package.plan import expected_system
from dfota.proof.host_device import device_from_targetfiles, minor_partitions
from dfota.proof.publish import verify_delta
from dfota.proof.replays import Replays, replay_power_losses
from dfota.report.summary import render_report, write_report
from dfota.settings import VerifySettings
from tests.builders import binary, f, next_system
from tests.test_delta import pair, quiet
from tests.test_verify import CHECKS
from tests.workspace import PROJECT, Workspace

SCHEMA = PROJECT / "docs/summary.schema.json"
ANGLED = "a<b>&\"q'.txt"  # a file name that is markup if it is not escaped
NEWLINE = "odd/new new\nline"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text("utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def sample(sample_sdk: Path) -> Iterator[dict]:
    """update.json of the sample, made by the default chain as a user runs it."""
    root = Path(tempfile.mkdtemp(prefix="dfota-report-"))
    shutil.copytree(sample_sdk / "ql-ol-extsdk", root / "sdk", symlinks=True)
    shutil.copyfile(sample_sdk / "firmware/upgrade/targetfiles.zip", root / "source.zip")
    ws = Workspace(root, root / "sdk", root / "source.zip")
    run = ws.run("targetfiles", "--sdk", str(ws.sdk), "--source", str(ws.source), *ws.folders,
                 "delta", *ws.folders, "verify", *ws.folders)
    assert run.returncode == 0, run.stdout + run.stderr
    yield json.loads((ws.out / "update.json").read_text("utf-8"))
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A verified summary whose largest file's name holds markup, quotes and `&`."""
    target = next_system()
    target[ANGLED] = f(binary(11, 200_000))
    settings = pair(tmp_path_factory.mktemp("hostile"), target=target)
    made = build_delta(settings, quiet())
    verify_delta(VerifySettings(settings.workspace), quiet(), made.inputs)
    return json.loads(settings.workspace.update_summary.read_text("utf-8"))


def unchanged_summary() -> dict:
    return {"changed": False, "source": "A@20220622T1550", "target": "B@20220715T0930",
            "mode": ["kernel"], "warnings": []}


@pytest.mark.slow
def test_the_summaries_the_tool_writes_match_the_schema(
        validator: jsonschema.Draft202012Validator, sample: dict, hostile: dict) -> None:
    for summary in (sample, hostile, unchanged_summary()):
        errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(summary)]
        assert errors == []
    assert sample["verify"]["ok"] and ANGLED in [e["path"] for e in hostile["top"]]


def test_the_schema_refuses_a_summary_that_drifts(
        validator: jsonschema.Draft202012Validator, hostile: dict) -> None:
    def broken(change: Callable[[dict], object]) -> dict:
        summary = copy.deepcopy(hostile)
        change(summary)
        return summary

    assert validator.is_valid(broken(lambda s: None))
    assert not validator.is_valid(broken(lambda s: s.pop("top")))
    assert not validator.is_valid(broken(lambda s: s.update(surprise=1)))
    assert not validator.is_valid(broken(lambda s: s["changes"][0].update(kind="moved")))
    assert not validator.is_valid(broken(lambda s: s["bytes"].update(patches=-1)))
    assert not validator.is_valid(broken(lambda s: s["verify"]["checks"][0].pop("ok")))
    assert not validator.is_valid(broken(lambda s: s.update(mode=["everything"])))
    assert not validator.is_valid({**unchanged_summary(), "package": "out/update.zip"})


def reordered(value: Any) -> Any:
    """The same JSON value with every object's keys in reverse order."""
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


def test_the_same_summary_gives_the_same_page_and_it_loads_nothing(hostile: dict) -> None:
    page = render_report(hostile)
    assert page == render_report(copy.deepcopy(hostile))
    assert page == render_report(reordered(hostile))
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"<script|<link|<img|<iframe|@import|url\(|src=|href=", page)


class Page(html.parser.HTMLParser):
    """The elements and the text of a page, as a browser reads them."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.chunks: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)

    @property
    def text(self) -> str:
        return " ".join(self.chunks)

    def count(self, tag: str, cls: str) -> int:
        return sum(1 for t, a in self.tags if t == tag and cls in (a.get("class") or "").split())


def test_names_are_text_and_control_characters_are_shown(hostile: dict) -> None:
    page = render_report(hostile)
    assert 'a&lt;b&gt;&amp;&#34;q&#39;.txt' in page
    parsed = Page(page)
    assert ANGLED in parsed.text and "b" not in {t for t, _ in parsed.tags}
    assert 'odd/new new<span class="esc">\\n</span>line' in page
    assert NEWLINE not in page  # a newline would read as a space


def test_a_package_that_failed_or_was_not_verified_says_so(hostile: dict) -> None:
    failed = copy.deepcopy(hostile)
    failed["verify"]["ok"] = False
    failed["verify"]["checks"][3].update(ok=False, detail="/system/<x> differs")
    page = render_report(failed)
    assert "Rejected: 1 of 7 checks failed." in page and ">FAIL<" in page
    assert "/system/&lt;x&gt; differs" in page
    unverified = {k: v for k, v in hostile.items() if k != "verify"}
    page = render_report(unverified)
    assert "Not verified" in page and ">pass<" not in page and "not verified" in page


def test_the_size_budget_is_drawn_when_the_summary_holds_it(hostile: dict) -> None:
    assert hostile["size_budget"] == 70 * 1024 * 1024  # delta records it
    unrecorded = {k: v for k, v in hostile.items() if k != "size_budget"}
    assert "no size budget recorded" in render_report(unrecorded)
    over = render_report({**hostile, "size_budget": hostile["package_size"] // 2})
    assert "over the budget" in over and "200.0 %" in over
    within = render_report({**hostile, "size_budget": 70 * 1024 * 1024})
    assert "over the budget" not in within and "of the 70.0 MB budget" in within


def test_nothing_changed_gives_a_short_page() -> None:
    summary = {**unchanged_summary(), "warnings": ["quectel_noota_filelist.txt: x is not in the "
                                                    "target"]}
    page = render_report(summary)
    assert "Nothing changed between these versions" in page
    assert "x is not in the target" in page
    assert "<svg" not in page and "Largest files" not in page and "Checks" not in page


def test_write_report_writes_the_page_and_refuses_what_is_not_a_summary(
        hostile: dict, tmp_path: Path) -> None:
    summary, page = tmp_path / "update.json", tmp_path / "out/update.html"
    summary.write_text(json.dumps(hostile), "utf-8")
    write_report(summary, page)
    assert page.read_text("utf-8") == render_report(hostile)
    assert [p.name for p in page.parent.iterdir()] == ["update.html"]
    with pytest.raises(DfotaError, match=r"missing\.json: no readable package summary"):
        write_report(tmp_path / "missing.json", page)
    for text, problem in (("[1]", "not a JSON object"), ('{"changed": true}', "no source"),
                          (json.dumps({**hostile, "top": 3}), "not a package summary")):
        summary.write_text(text, "utf-8")
        with pytest.raises(DfotaError, match=problem):
            write_report(summary, page)
    assert page.read_text("utf-8") == render_report(hostile)


def chromium(tmp: Path, page: Path, *args: str) -> str:
    browser = shutil.which("chromium")
    assert browser, "Debian's chromium is needed (apt-get install chromium; .ci/setup does)"
    env = {**os.environ, "HOME": str(tmp), "XDG_CONFIG_HOME": str(tmp / "config"),
           "XDG_CACHE_HOME": str(tmp / "cache")}
    done = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp / 'profile'}", *args, page.as_uri()],
        capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.slow  # a real browser renders the page
def test_headless_chromium_shows_versions_checks_bars_and_escaped_names(
        hostile: dict, tmp_path: Path) -> None:
    page = tmp_path / "update.html"
    charts_only = {k: v for k, v in hostile.items() if k != "size_budget"}  # no budget bar
    page.write_text(render_report(charts_only), "utf-8")
    dom = Page(chromium(tmp_path, page, "--dump-dom"))
    text = " ".join(dom.text.split())
    assert f"from (source) {hostile['source']} to (target) {hostile['target']}" in text
    assert all(name in text for name in CHECKS)
    assert f"Verified on the host: {len(CHECKS)} of {len(CHECKS)} checks passed." in text
    assert dom.count("svg", "bars") == 2
    assert dom.count("rect", "bar") == len(hostile["by_folder"]) + len(hostile["by_kind"])
    assert ANGLED in dom.text and "b" not in {t for t, _ in dom.tags}
    labels = [" ".join(c.split()) for c in dom.chunks]
    assert ANGLED in labels  # the chart's label of that top-level file, as text
    assert "Largest files" in text and "usr/bin/ql_fullota_demo" in text


@pytest.mark.slow
def test_headless_chromium_screenshots_the_sample_report(sample: dict, tmp_path: Path) -> None:
    page = tmp_path / "update.html"
    page.write_text(render_report(sample), "utf-8")
    shot = tmp_path / "shot.png"
    chromium(tmp_path, page, f"--screenshot={shot}", "--window-size=1200,1600")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (1200, 1600)
    assert len(data) > 20_000  # a blank page compresses to a few kilobytes


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_off_a_terminal_a_long_step_prints_a_line_at_least_every_10_seconds() -> None:
    clock, out = FakeClock(), io.StringIO()
    bar = RunLog(None, "test", out, clock=clock).progress("verify: power loss", 100)
    for _ in range(30):  # 3 s a step: a line after the 4th, the 8th, ...
        clock.now += 3
        bar.advance()
    clock.now += 10.5
    bar.advance(0)  # nothing done, still a line: the step is alive
    bar.finish()
    lines = out.getvalue().splitlines()
    assert lines[0] == "verify: power loss: 100 to do"
    assert lines[1:4] == ["verify: power loss: 4/100 done in 12 s",
                          "verify: power loss: 8/100 done in 24 s",
                          "verify: power loss: 12/100 done in 36 s"]
    assert lines[-2] == "verify: power loss: 30/100 done in 100 s"
    assert lines[-1] == "verify: power loss: 30 done in 100.5 s"
    said = [0.0] + [float(line.split(" in ")[1].split()[0]) for line in lines[1:-2]]
    assert max(b - a for a, b in itertools.pairwise(said)) <= 12  # 3 s steps: 12 s at most


def test_each_power_loss_replay_advances_the_bar(tmp_path: Path) -> None:
    settings = pair(tmp_path)
    build_delta(settings, quiet())
    calls: list[int] = []
    with ZipSource(Path(settings.base)) as base, ZipSource(settings.workspace.target_zip) as tz:
        minor = minor_partitions(tz, lists_in(settings.config_dir))
        device, source = device_from_targetfiles(base, minor)
        expected = expected_system(source, system_tree(tz), parse_mode("all"),
                                   lists_in(settings.config_dir))
    pkg = load_package(settings.workspace.pending_zip)
    steps = list(range(1, 21))
    assert replay_power_losses(Replays(pkg, device, expected, {}), steps, calls.append,
                               workers=1) == []
    assert calls == [1] * len(steps)
