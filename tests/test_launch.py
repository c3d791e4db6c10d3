"""launch/tpu.py: every step's gcloud command, printed by --dry-run exactly as it would run."""

import pathlib
import shlex
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "launch" / "tpu.py"
VM = ["--name=cxr", "--zone=us-central2-b", "--dry-run"]


def dry_run(*args: str) -> list[str]:
  result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=True)
  lines = result.stdout.strip().splitlines()
  assert len(lines) == 1, result.stdout
  return shlex.split(lines[0])


def test_help_lists_every_step():
  result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, check=True)
  for step in ("plan", "create", "install", "data", "train", "logs", "delete"):
    assert step in result.stdout


def test_create_and_delete():
  assert dry_run("create", *VM, "--type=v4-32", "--spot") == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    "cxr",
    "--zone=us-central2-b",
    "--accelerator-type=v4-32",
    "--version=tpu-ubuntu2204-base",
    "--spot",
  ]
  assert dry_run("delete", *VM) == [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "delete",
    "cxr",
    "--zone=us-central2-b",
    "--quiet",
  ]


def test_install_pins_the_projects_jax_and_this_commit():
  command = dry_run("install", *VM, "--repo=https://example.org/cxrjax.git", "--commit=abc123")
  assert command[:8] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "cxr", "--zone=us-central2-b", "--worker=all"]
  script = command[8].removeprefix("--command=")
  pin = next(line for line in (ROOT / "pyproject.toml").read_text().splitlines() if '"jax==' in line)
  version = pin.split("==")[1].strip('",')
  assert f"'jax[tpu]=={version}'" in script and script.endswith(" -e .")
  assert "git clone -q https://example.org/cxrjax.git cxrjax" in script and "git checkout -q abc123" in script
  # The venv's Python is the project's (uv's), not the image's python3 (3.10 on tpu-ubuntu2204-base).
  assert "venv -q --clear --python 3.11 .venv" in script and "python3 -m venv" not in script
  # tests/test_launch_install.py runs this script.


@pytest.mark.parametrize(
  "accelerator_type, topology",
  [("v5litepod-4", "v5e:2x2"), ("v5litepod-16", "v5e:4x4"), ("v5p-16", "v5p:2x2x2"), ("v6e-64", "v6e:8x8")],
)
def test_plan_compiles_for_the_slice_create_would_make(accelerator_type, topology):
  assert dry_run(
    "plan", f"--type={accelerator_type}", "--dry-run", "--", "--config=configs/roco_git.py:tpu", "--batch-size=8"
  ) == ["cxrjax", "compile", f"--topology={topology}", "--config=configs/roco_git.py:tpu", "--batch-size=8"]


@pytest.mark.parametrize(
  "accelerator_type, why",
  [
    ("v5litepod-12", "no slice shape"),
    ("v4-32", "v4 slices"),
    ("tpu-8", "unknown accelerator type"),
    ("v6e-1", "one chip"),
  ],
)
def test_plan_refuses_a_slice_it_cannot_describe_in_one_line(accelerator_type, why):
  result = subprocess.run(
    [sys.executable, str(SCRIPT), "plan", f"--type={accelerator_type}", "--", "--config=configs/demo.py:smoke"],
    capture_output=True,
    text=True,
  )
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.count("\n") == 1 and f"--type={accelerator_type}" in result.stderr and why in result.stderr


def test_plan_runs_cxrjax_compile_and_passes_its_exit_status():
  result = subprocess.run(
    [
      sys.executable,
      str(SCRIPT),
      "plan",
      "--type=v5litepod-4",
      "--",
      "--config=configs/demo.py:smoke",
      "--program=train",
    ],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )
  assert result.returncode == 0, result.stderr
  assert "train: 4 chips (TPU v5 lite) on 1 host of v5e:2x2" in result.stdout and "): fits" in result.stdout


def test_train_runs_the_same_command_on_every_worker_and_logs_worker_0():
  command = dry_run(
    "train", *VM, "--", "--config=configs/demo.py:tpu", "--workdir=gs://bucket/run", "--config.train.num_steps=10"
  )
  assert "--worker=all" in command
  script = command[-1].removeprefix("--command=")
  assert (
    "nohup cxrjax train --distributed=auto --config=configs/demo.py:tpu --workdir=gs://bucket/run "
    "--config.train.num_steps=10 > ~/cxrjax_train.log 2>&1 &"
  ) in script
  logs = dry_run("logs", *VM)
  assert "--worker=0" in logs and logs[-1] == "--command=tail -n +1 -f ~/cxrjax_train.log"


def test_data_copies_to_every_worker():
  command = dry_run("data", *VM, "--source=gs://bucket/data", "--dest=/home/me/data")
  assert (
    command[-1] == "--command=mkdir -p /home/me/data && gcloud storage rsync --recursive gs://bucket/data /home/me/data"
  )


def test_train_without_config_or_workdir_is_refused():
  result = subprocess.run(
    [sys.executable, str(SCRIPT), "train", *VM, "--", "--config=configs/demo.py"], capture_output=True, text=True
  )
  assert result.returncode != 0 and "--workdir" in result.stderr


@pytest.mark.parametrize("step", ["create", "train"])
def test_missing_required_flags_are_usage_errors(step):
  result = subprocess.run([sys.executable, str(SCRIPT), step, "--zone=z"], capture_output=True, text=True)
  assert result.returncode == 2 and "--name" in result.stderr
