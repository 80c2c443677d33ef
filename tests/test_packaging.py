"""What packaging promises that can be checked without building: the version is written once, and the install
page names every extra. (`.ci/packaging` builds the sdist and wheel and runs the installed wheel.)"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from pathlib import Path

import aurelis_core

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_version_is_written_once_and_the_installed_metadata_reads_it() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "aurelis_core.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]|rc)?\d*", aurelis_core.__version__)
    assert importlib.metadata.version("aurelis") == aurelis_core.__version__


def test_the_install_page_says_what_each_extra_brings() -> None:
    page = (ROOT / "docs" / "installing.md").read_text(encoding="utf-8")
    documented = dict(re.findall(r"^\| `([\w-]+)` \| ([^|]+) \|", page, re.MULTILINE))
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert sorted(documented) == sorted(extras)
    for extra, requirements in extras.items():
        if extra in ("all", "test"):
            continue
        for requirement in requirements:
            # A requirement's distribution name, as the page spells it (case and separators aside).
            name = re.split(r"[<>=\[; ]", requirement, maxsplit=1)[0].lower().replace("_", "-")
            assert name in documented[extra].lower(), (extra, name)
