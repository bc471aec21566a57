"""The docs stay true to the code: docs/architecture.md names every module of the package."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "notochord_rt"


def documented_modules() -> set[str]:
    """``folder/name.py`` for every module named under its folder's heading in the
    "Every module" section (headings are lines starting with a backticked folder, or
    "Top level")."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Every module", 1)[1].split("\n## ", 1)[0]
    found, folder = set(), None
    for line in section.splitlines():
        head = re.match(r"^`([\w/]+)/`", line)
        if head:
            folder = head.group(1)
        elif line.startswith("Top level"):
            folder = ""
        if folder is None:
            continue
        for name in re.findall(r"`(\w+\.py)`", line):
            found.add(f"{folder}/{name}" if folder else name)
    return found


def test_architecture_names_every_module():
    modules = {str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" or p.parent == PACKAGE or p.parent.name == "cli"}
    documented = documented_modules()
    assert not modules - documented, f"modules missing from docs/architecture.md: " \
                                     f"{sorted(modules - documented)}"
    assert not documented - modules, f"docs/architecture.md names modules that do not " \
                                     f"exist: {sorted(documented - modules)}"
