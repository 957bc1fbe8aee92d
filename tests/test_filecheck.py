"""Runs the lit + filecheck tests of irfuse-opt (tests/filecheck)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# The tools sit beside this interpreter (`.venv/bin/python -m pytest` does not put them
# on PATH): look there first.
TOOLS_PATH = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])


def test_lit_suite():
    pytest.importorskip("lit")
    tools = ("irfuse-opt", "filecheck")
    missing = [tool for tool in tools if not shutil.which(tool, path=TOOLS_PATH)]
    assert not missing, f"{missing} not beside {sys.executable} (pip install -e '.[test]')"
    suite = Path(__file__).parent / "filecheck"
    run_lit = "import sys; from lit.main import main; sys.argv = ['lit', '-v', sys.argv[1]]; main()"
    result = subprocess.run(
        [sys.executable, "-c", run_lit, str(suite)],
        capture_output=True,
        text=True,
        env={**os.environ, "PATH": TOOLS_PATH},
    )
    assert result.returncode == 0, result.stdout + result.stderr
