"""Quality gates: lint, formatting and strict typing of the package (see STYLE.md)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*cmd):
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(
    shutil.which("ruff", path=str(Path(sys.executable).parent)) is None, reason="ruff not installed"
)
def test_ruff_lint_and_format():
    ruff = str(Path(sys.executable).parent / "ruff")
    lint = run(ruff, "check", "src", "tests", "examples", "bench")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fmt = run(ruff, "format", "--check", "src", "tests", "examples", "bench")
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr


def test_mypy_strict_on_the_package():
    typed = run(sys.executable, "-m", "mypy", "src/tideflow")
    assert typed.returncode == 0, typed.stdout + typed.stderr
