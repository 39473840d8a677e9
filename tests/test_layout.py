"""The package's shape: imports go only the documented way, and modules stay readable.

Each part of `dfota` (a subpackage, or a top-level module) has a layer; a module may import
its own part and the parts of lower layers, never a higher one. `docs/architecture.md` and
each subpackage's `__init__` say the same in words.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tasks"  # installed as `dfota`
# lowest first: a part may import the parts before it
LAYERS = ("core", "state", "formats", "settings", "report", "build", "package", "device",
          "proof", "upgrade", "tools", "commands", "cli")
MAX_LINES = 500


def part_of(module: str) -> str:
    """`dfota.build.archive` -> `build`; `dfota` itself (its version) -> `core`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "core"


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def name_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("")
    return ".".join(["dfota", *(p for p in rel.parts if p != "__init__")])


def imported(path: Path) -> set[str]:
    """Every `dfota` module the file imports, at the top, in a function or for the types."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dfota"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "dfota":
            found.add(node.module)
    return found


def test_every_part_has_a_layer_and_says_what_it_owns() -> None:
    parts = {part_of(name_of(p)) for p in modules() if p.parent != PACKAGE or
             p.name != "__init__.py"}
    assert parts <= set(LAYERS), parts - set(LAYERS)
    for sub in (p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((sub / "__init__.py").read_bytes()))
        assert doc and "May import" in doc, f"{sub.name}/__init__.py: no 'May import' line"


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(PACKAGE).as_posix())
def test_imports_go_only_downwards(path: Path) -> None:
    own = LAYERS.index(part_of(name_of(path)))
    upward = sorted(m for m in imported(path) if LAYERS.index(part_of(m)) > own)
    assert not upward, f"{name_of(path)} imports a higher layer: {upward}"


def test_no_module_is_longer_than_500_lines() -> None:
    long = {p.relative_to(PACKAGE).as_posix(): n for p in modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long
