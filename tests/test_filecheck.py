"""Runs the lit + filecheck tests of irfuse-opt (tests/filecheck)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(shutil.which("irfuse-opt") is None, reason="irfuse-opt is not installed")
def test_lit_suite():
    suite = Path(__file__).parent / "filecheck"
    result = subprocess.run(
        [sys.executable, "-m", "lit", "-v", str(suite)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
