"""The package report for people: `update.json` as one HTML page readable offline.

The page is rendered from `templates/report.html.j2` with autoescaping on: every name and
message from the summary is shown as text. It holds no script and loads nothing: CSS and the
SVG charts are inline. The same summary always gives the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from dfota.core import atomic
from dfota.core.errors import DfotaError
from dfota.settings import TEMPLATES, without_host_paths

TEMPLATE = "report.html.j2"

BAR_SPACE = 440  # px for the longest bar of a chart
LABEL_SPACE = 230  # px left of the bars for their names
VALUE_SPACE = 190  # px right of the bars for their sizes
ROW_HEIGHT = 26
LABEL_CHARS = 30  # longer names are cut in the chart (the SVG title holds the whole name)

KIND_NAMES = {
    "patched": "patched",
    "whole": "shipped whole",
    "new": "new file",
    "new_dir": "new directory",
    "deleted": "deleted",
    "dir_removed": "directory removed",
    "symlink_created": "symlink created",
    "symlink_retargeted": "symlink retargeted",
    "symlink_removed": "symlink removed",
    "metadata": "metadata only",
    "replaced": "replaced (other type)",
    "kernel": "kernel (boot image)",
    "minor partitions": "minor partitions",
}
KIND_COLORS = {
    "patched": "#2f6db5",
    "whole": "#d9822b",
    "new": "#2f9e44",
    "replaced": "#8e44ad",
    "kernel": "#c0392b",
    "minor partitions": "#6b7b8c",
}
OTHER_COLOR = "#8a9bab"
FOLDER_COLOR = "#2f6db5"


@dataclass(frozen=True)
class Bar:
    """One row of a chart: its name, its bytes, and where the template draws it."""

    label: str  # the whole name, for the SVG title
    short: str  # the name as drawn
    value: int
    size: str  # the value for people
    note: str
    color: str
    y: int
    width: float


@dataclass(frozen=True)
class Chart:
    title: str
    bars: tuple[Bar, ...]
    width: int
    height: int
    label_space: int
    bar_space: int
    total: str


@dataclass(frozen=True)
class Meter:
    """The package size against the size budget."""

    size: int
    budget: int
    width: float
    space: int
    over: bool
    percent: str


def human_size(n: int) -> str:
    """Bytes for people, in the units of the tool's messages (1 KB = 1024 bytes)."""
    if n < 1024:
        return f"{n} B"
    value = float(n)
    for unit in ("KB", "MB", "GB"):
        value /= 1024
        if value < 1024 or unit == "GB":
            return f"{value:.1f} {unit}"
    raise AssertionError("unreachable")


def kind_name(kind: str) -> str:
    return KIND_NAMES.get(kind, kind.replace("_", " "))


def shown_name(text: object) -> Markup:
    """A name as HTML text: escaped, with control characters drawn as visible escapes."""
    out = []
    for c in str(text):
        if c.isprintable():
            out.append(str(escape(c)))
        else:
            out.append(f'<span class="esc">{escape(repr(c)[1:-1])}</span>')
    return Markup("".join(out))


def plain_name(text: object) -> str:
    """A name on one line, for SVG text and titles (no markup there)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _cut(text: str, limit: int = LABEL_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def chart(title: str, rows: Iterable[tuple[str, str, int, str, str]]) -> Chart:
    """A bar chart of (key, name, bytes, note, color) rows, largest first (then by key)."""
    ordered = sorted(rows, key=lambda r: (-r[2], r[0]))
    largest = max((r[2] for r in ordered), default=0)
    bars = tuple(
        Bar(label=plain_name(name), short=_cut(plain_name(name)), value=value,
            size=human_size(value), note=note, color=color, y=i * ROW_HEIGHT,
            width=_bar_width(value, largest, BAR_SPACE))
        for i, (_key, name, value, note, color) in enumerate(ordered))
    return Chart(title, bars, LABEL_SPACE + BAR_SPACE + VALUE_SPACE,
                 max(len(bars), 1) * ROW_HEIGHT, LABEL_SPACE, BAR_SPACE,
                 human_size(sum(b.value for b in bars)))


def _bar_width(value: int, largest: int, space: int) -> float:
    """Pixels for `value`; any non-zero value stays visible."""
    if value <= 0 or largest <= 0:
        return 0.0
    return max(2.0, round(space * min(value, largest) / largest, 1))


def _entries(n: int) -> str:
    return f"{n:,} entr{'y' if n == 1 else 'ies'}"


def folder_chart(by_folder: Mapping[str, Mapping[str, int]],
                 changes: Iterable[Mapping[str, object]]) -> Chart:
    """Bytes per top-level name of /system; a name is drawn as a folder (`usr/`) when a changed
    entry lies below it."""
    folders = {str(c["path"]).split("/", 1)[0] for c in changes if "/" in str(c["path"])}
    return chart("By folder of /system", (
        (name, name + "/" if name in folders else name, int(v["bytes"]),
         _entries(int(v["entries"])), FOLDER_COLOR)
        for name, v in by_folder.items()))


def kind_chart(by_kind: Mapping[str, int], counts: Mapping[str, int]) -> Chart:
    return chart("By kind of change", (
        (kind, kind_name(kind), int(value),
         _entries(int(counts[kind])) if kind in counts else "",
         KIND_COLORS.get(kind, OTHER_COLOR))
        for kind, value in by_kind.items()))


def size_meter(size: int, budget: int | None) -> Meter | None:
    if not budget:
        return None
    space = BAR_SPACE
    return Meter(size, budget, _bar_width(size, budget, space), space, size > budget,
                 f"{100 * size / budget:.1f}")


def _by_count(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def _require(summary: Mapping[str, object], keys: Sequence[str]) -> None:
    missing = [k for k in keys if k not in summary]
    if missing:
        raise DfotaError(f"not a package summary: no {', '.join(missing)}")


CHANGED_KEYS = ("source", "target", "mode", "package", "package_size", "counts", "unchanged",
                "bytes", "whole_reasons", "boot", "minor", "timings", "by_folder", "by_kind",
                "top", "changes", "warnings", "tool")


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
        autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["human"] = human_size
    env.filters["kind"] = kind_name
    env.filters["name"] = shown_name
    env.filters["plain"] = plain_name
    env.filters["grouped"] = lambda n: f"{int(n):,}"
    return env


def render_report(summary: Mapping[str, object]) -> str:
    """The HTML page of a package summary (`update.json`), the same bytes for the same summary."""
    s: Mapping[str, Any] = summary
    changed = bool(s.get("changed", False))
    _require(s, CHANGED_KEYS if changed else ("source", "target", "mode"))
    context: dict[str, object] = {"s": s, "changed": changed, "verify": s.get("verify"),
                                  "warnings": [*(f"targetfiles: {w}" for w in
                                                 s.get("build_warnings") or ()),
                                               *(s.get("warnings") or ())]}
    if changed:
        budget = s.get("size_budget")
        context.update(
            folders=folder_chart(s["by_folder"], s["changes"]),
            kinds=kind_chart(s["by_kind"], s["counts"]),
            meter=size_meter(int(s["package_size"]), None if budget is None else int(budget)),
            counted=_by_count(s["counts"]),
            reasons=_by_count(s["whole_reasons"]),
            changed_total=sum(s["counts"].values()),
        )
    return _environment().get_template(TEMPLATE).render(context)


def write_report(summary_path: Path, html_path: Path) -> None:
    """Render the summary at `summary_path` to `html_path`, atomically."""
    try:
        summary = json.loads(summary_path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DfotaError("no readable package summary: run `doit delta` first",
                         summary_path) from exc
    if not isinstance(summary, dict):
        raise DfotaError("not a package summary: not a JSON object", summary_path)
    try:
        html = render_report(summary)
    except DfotaError as exc:
        raise DfotaError(str(exc), summary_path) from exc
    except (KeyError, TypeError, ValueError, AttributeError, jinja2.UndefinedError) as exc:
        raise DfotaError(f"not a package summary ({type(exc).__name__}: {exc})",
                         summary_path) from exc
    atomic.write_text(html_path, html)


def write_summary(path: Path, summary: Mapping[str, object],
                  places: Mapping[Path, str]) -> None:
    """Write a package summary (`update.json`) naming no path of this machine: each of
    `places` by its public name (see `dfota.settings.public_name`)."""
    public = without_host_paths(dict(summary), places)
    atomic.write_text(path, json.dumps(public, indent=1, sort_keys=True) + "\n")
