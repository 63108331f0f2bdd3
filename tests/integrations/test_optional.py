"""Integrations are optional: instil imports and runs without their frameworks."""

from __future__ import annotations

import subprocess
import sys

BLOCKED = "import sys; sys.modules['avalanche'] = None  # as if not installed\n"


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED + code], capture_output=True,
                          text=True, timeout=120)


def test_instil_and_its_command_line_work_without_avalanche() -> None:
    proc = python("import instil, instil.cli, instil.integrations\n"
                  "print(instil.__version__, instil.cli.main(['list']))")
    assert proc.returncode == 0, proc.stderr
    assert "dbd" in proc.stdout and "toy2d" in proc.stdout


def test_the_avalanche_integration_without_avalanche_names_the_extra() -> None:
    proc = python("import instil.integrations.avalanche")
    assert proc.returncode != 0
    assert "pip install 'instil[avalanche]'" in proc.stderr.strip().splitlines()[-1]
