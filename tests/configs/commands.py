"""The commands of a config's docstring, and their smoke variant (tests/configs/)."""

import importlib
import pathlib
import shlex

ROOT = pathlib.Path(__file__).resolve().parents[2]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_"))


def docstring_commands(name: str) -> list[list[str]]:
  """The `cxrjax ...` commands of configs/<name>.py's docstring (continuation lines joined, comments cut)."""
  doc = importlib.import_module(f"configs.{name}").__doc__
  commands, current = [], ""
  for line in doc.splitlines():
    line = line.strip()
    if current:
      current += " " + line
    elif line.startswith("cxrjax "):
      current = line
    if current and not current.endswith("\\"):
      commands.append(shlex.split(current.split("  #")[0]))
      current = ""
    current = current[:-1] if current.endswith("\\") else current
  return commands


def smoke(argv: list[str]) -> list[str]:
  """The same command with the smoke variant of its config (`configs/x.py[:args]` -> `...:args,smoke`)."""
  result = []
  for arg in argv:
    if arg.startswith("--config=configs/"):
      path, _, args = arg.removeprefix("--config=").partition(":")
      arg = f"--config={path}:{args + ',' if args else ''}smoke"
    result.append(arg)
  return result
