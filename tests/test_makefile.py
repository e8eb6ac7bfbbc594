"""What the first `make run` says while it installs (pip is quiet for minutes)."""

import subprocess
from pathlib import Path

from tests.support.cli import ROOT

# A stand-in for python: `-m venv DIR` makes DIR/bin/python (a copy of itself); any other use
# prints its arguments. So make's install steps run without installing anything.
STAND_IN_PYTHON = """#!/bin/sh
if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin" && cp "$0" "$3/bin/python"; exit 0; fi
echo "stand-in python: $*"
"""


def test_the_first_install_says_what_it_does_before_pip_starts(tmp_path: Path) -> None:
    python = tmp_path / "python"
    python.write_text(STAND_IN_PYTHON)
    python.chmod(0o755)
    venv = tmp_path / "venv"

    result = subprocess.run(
        ["make", "--no-print-directory", "install", f"PYTHON={python}", f"VENV={venv}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = result.stdout.splitlines()

    announcement = lines.index(
        f"Installing the service's packages (requirements.txt) into {venv}; "
        "the first time takes a few minutes..."
    )
    install = lines.index("stand-in python: -m pip install --quiet -r requirements.txt")
    assert lines[0] == f"Creating a virtual environment in {venv} and updating pip..."
    assert announcement < install
    assert (venv / ".installed").exists()
