"""What the wheel carries: every package under src/ and the presets (scripts/check-wheel.sh
installs a real wheel and runs it; this catches a package left out of pyproject's list)."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def setuptools_table() -> dict:
    tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python 3.11")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_the_wheel_lists_every_package_under_src_and_the_presets() -> None:
    table = setuptools_table()
    under_src = {".".join(p.parent.relative_to(ROOT / "src").parts)
                 for p in (ROOT / "src").rglob("__init__.py")}
    assert set(table["packages"]) == under_src | {"instil.presets"}
    assert table["package-dir"]["instil.presets"] == "configs"
    assert table["package-data"]["instil.presets"] == ["*.yaml"]
