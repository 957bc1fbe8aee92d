"""Runs the lit + filecheck tests of irfuse-opt (tests/filecheck)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(
    not (shutil.which("irfuse-opt") and shutil.which("filecheck")),
    reason="needs irfuse-opt and filecheck on PATH (pip install -e '.[test]')",
)
def test_lit_suite():
    pytest.importorskip("lit")
    suite = Path(__file__).parent / "filecheck"
    run_lit = "import sys; from lit.main import main; sys.argv = ['lit', '-v', sys.argv[1]]; main()"
    result = subprocess.run(
        [sys.executable, "-c", run_lit, str(suite)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
