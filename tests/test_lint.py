"""The linter pinned in pyproject.toml ([tool.ruff]) finds nothing in the whole tree."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing_in_the_whole_tree():
  result = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stdout + result.stderr
