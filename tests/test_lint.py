"""The linter and the formatter pinned in pyproject.toml ([tool.ruff]) find nothing to change in the whole tree."""

import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
  "command",
  [["check", "--no-cache", "--output-format", "concise"], ["format", "--check", "--no-cache"]],
  ids=["lint", "format"],
)
def test_ruff_finds_nothing_in_the_whole_tree(command):
  result = subprocess.run([sys.executable, "-m", "ruff", *command, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
  assert result.returncode == 0, result.stdout + result.stderr
