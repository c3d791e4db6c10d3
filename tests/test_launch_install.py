"""launch/tpu.py install, run on this machine: gcloud is a stub that runs the ssh command's script here, in a
fresh HOME, as a worker's shell would. The script clones this checkout's HEAD (a clean clone), installs uv
from PyPI, makes the venv and installs the project; then the venv's `cxrjax` must run and compile.

It downloads from PyPI. uv's cache is this machine's (UV_CACHE_DIR, else ~/.cache/uv), so that a second run
copies instead of downloading: the script is the same either way (the workers use their own ~/.cache/uv).
"""

import importlib.util
import os
import pathlib
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "tpu.py"
_spec = importlib.util.spec_from_file_location("launch_tpu", SCRIPT)
tpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tpu)

# `gcloud compute tpus tpu-vm ssh ... --command=SCRIPT`: records its arguments (NUL-separated), then runs
# SCRIPT with bash in $HOME, where ssh puts a worker's shell.
FAKE_GCLOUD = r"""#!/bin/bash
printf '%s\0' "$@" >> "$GCLOUD_CALLS"
for arg; do [[ $arg == --command=* ]] && script=${arg#--command=}; done
cd "$HOME" && exec bash -c "$script"
"""
# What a worker's non-interactive ssh shell has on PATH (Ubuntu's default): the system's python3, not ours.
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
  result = subprocess.run(command, capture_output=True, text=True, **kwargs)
  assert result.returncode == 0, f"{shlex.join(command)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
  return result


def test_install_script_makes_a_venv_that_runs_cxrjax(tmp_path):
  home, stubs = tmp_path / "home", tmp_path / "bin"
  home.mkdir()
  stubs.mkdir()
  (stubs / "gcloud").write_text(FAKE_GCLOUD)
  (stubs / "gcloud").chmod(0o755)
  env = {
    key: value
    for key, value in os.environ.items()
    if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_CACHE_DIR")
  }
  env.update(
    HOME=str(home),
    PATH=f"{stubs}:{SYSTEM_PATH}",
    GCLOUD_CALLS=str(tmp_path / "calls"),
    UV_CACHE_DIR=os.environ.get("UV_CACHE_DIR") or os.path.expanduser("~/.cache/uv"),
  )
  commit = run(["git", "-C", str(ROOT), "rev-parse", "HEAD"]).stdout.strip()
  install = [sys.executable, str(SCRIPT), "install", "--name=cxr", "--zone=z", f"--repo={ROOT}"]

  # Twice: a rerun on a worker that has everything must work too (and replace the venv).
  first = run(install, env=env, timeout=1200)
  run(install, env=env, timeout=1200)

  # What ran is what main printed, and the command the script's function builds.
  sent = shlex.split(first.stdout.splitlines()[0])
  calls = (tmp_path / "calls").read_text().split("\0")[:-1]
  assert calls == sent[1:] * 2
  assert sent[-1] == "--command=" + tpu.install_script(str(ROOT), commit)

  clone, venv = home / "cxrjax", home / "cxrjax" / ".venv"
  assert run(["git", "-C", str(clone), "rev-parse", "HEAD"]).stdout.strip() == commit
  assert run(["git", "-C", str(clone), "status", "--porcelain"]).stdout == ""  # A later checkout can proceed.
  # The project's Python (requires-python's oldest), its pins, and the clone's package.
  versions = run(
    [
      str(venv / "bin" / "python"),
      "-c",
      "import sys, cxrjax; from importlib import metadata; "
      "print('%d.%d' % sys.version_info[:2], metadata.version('jax'), metadata.version('libtpu'), "
      "cxrjax.__file__)",
    ],
    env=env,
    cwd=tmp_path,
  ).stdout.split()
  assert versions == [
    tpu.python_version(),
    tpu.pinned_jax_version(),
    tpu.pinned_libtpu_version(),
    str(clone / "cxrjax" / "__init__.py"),
  ]

  assert "compile" in run([str(venv / "bin" / "cxrjax"), "--help"], env=env, cwd=clone).stdout
  report = run(
    [
      str(venv / "bin" / "cxrjax"),
      "compile",
      "--config=configs/demo.py:smoke",
      "--topology=v5e:2x2",
      "--program=train",
    ],
    env=env,
    cwd=clone,
  ).stdout
  assert "train: 4 chips (TPU v5 lite) on 1 host of v5e:2x2" in report
  assert "): fits" in report and "compiled in" in report
