#!/usr/bin/env python3
r"""Cloud TPU VMs for cxrjax: create a VM or pod slice, install the project, copy data, train on every
worker, stream worker 0's log, delete the VM. Each step prints the gcloud command it runs; `--dry-run`
prints it without running anything.

  python launch/tpu.py create  --name=cxr --zone=us-central2-b --type=v4-32 [--spot]
  python launch/tpu.py install --name=cxr --zone=us-central2-b          # this checkout's commit, every worker
  python launch/tpu.py data    --name=cxr --zone=us-central2-b --source=gs://$BUCKET/data --dest=/home/$USER/data
  python launch/tpu.py train   --name=cxr --zone=us-central2-b -- \
      --config=configs/iu_xray_attention.py:split=r2gen,tpu --workdir=gs://$BUCKET/iu \
      --config.data.data_dir=/home/$USER/data
  python launch/tpu.py logs    --name=cxr --zone=us-central2-b          # worker 0's training log
  python launch/tpu.py delete  --name=cxr --zone=us-central2-b

`install` clones the repository (REPO: --repo, default this checkout's origin) at this checkout's commit
on every worker, makes a venv and installs `jax[tpu]` and libtpu at the versions pinned in pyproject.toml (the
libtpu of its `tpu-compile` extra, which `cxrjax compile` compiles with), then cxrjax
(its pins include gcsfs and google-cloud-storage, for gs:// workdirs). `train` runs the same
`cxrjax train --distributed=auto` on every worker in the background (nohup, log in ~/cxrjax_train.log):
JAX's distributed runtime joins the hosts into one program over all chips (on TPU VMs it finds the
coordinator itself). Needs the gcloud CLI, authenticated, with a default project.
"""

import argparse
import pathlib
import re
import shlex
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOG_FILE = "~/cxrjax_train.log"
DEFAULT_VERSION = "tpu-ubuntu2204-base"


def pinned_jax_version(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> str:
  """The `jax==X` pin of pyproject.toml, so that the TPU workers run the JAX the project is tested with."""
  return _pin("jax", pyproject)


def pinned_libtpu_version(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> str:
  """The `libtpu==X` pin of pyproject.toml (its tpu-compile extra): the workers run the TPU compiler that
  `cxrjax compile` compiled for (jax[tpu] alone accepts any libtpu of its minor series)."""
  return _pin("libtpu", pyproject)


def _pin(package: str, pyproject: pathlib.Path) -> str:
  match = re.search(rf'"{package}==([0-9][^"]*)"', pyproject.read_text())
  if not match:
    raise SystemExit(f"{pyproject}: no {package}==VERSION pin found")
  return match.group(1)


def _git(*args: str) -> str:
  return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def _ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "ssh", args.name, f"--zone={args.zone}", f"--worker={worker}",
          f"--command={command}"]


def create_command(args: argparse.Namespace) -> list[str]:
  command = ["gcloud", "compute", "tpus", "tpu-vm", "create", args.name, f"--zone={args.zone}",
             f"--accelerator-type={args.type}", f"--version={args.version}"]
  return command + (["--spot"] if args.spot else [])


def install_command(args: argparse.Namespace) -> list[str]:
  repo = args.repo or _git("config", "--get", "remote.origin.url")
  commit = args.commit or _git("rev-parse", "HEAD")
  script = " && ".join([
      "set -e",
      f"(test -d cxrjax || git clone -q {shlex.quote(repo)} cxrjax)",
      "cd cxrjax", "git fetch -q origin", f"git checkout -q {shlex.quote(commit)}",
      "(test -d .venv || python3 -m venv .venv)", ". .venv/bin/activate",
      f"pip install -q 'jax[tpu]=={pinned_jax_version()}' 'libtpu=={pinned_libtpu_version()}'",
      "pip install -q -e ."])
  return _ssh(args, script)


def data_command(args: argparse.Namespace) -> list[str]:
  dest = shlex.quote(args.dest)
  return _ssh(args, f"mkdir -p {dest} && gcloud storage rsync --recursive {shlex.quote(args.source)} {dest}")


def train_command(args: argparse.Namespace) -> list[str]:
  flags = list(args.train_flags)
  if flags and flags[0] == "--":
    flags = flags[1:]
  if not any(flag.startswith("--config=") for flag in flags) or not any(
      flag.startswith("--workdir=") for flag in flags):
    raise SystemExit("train needs --config=... and --workdir=... after `--`")
  train = " ".join(["cxrjax", "train", "--distributed=auto", *map(shlex.quote, flags)])
  return _ssh(args, f"cd cxrjax && . .venv/bin/activate && nohup {train} > {LOG_FILE} 2>&1 &")


def logs_command(args: argparse.Namespace) -> list[str]:
  return _ssh(args, f"tail -n +1 -f {LOG_FILE}", worker="0")


def delete_command(args: argparse.Namespace) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, f"--zone={args.zone}", "--quiet"]


COMMANDS = {"create": create_command, "install": install_command, "data": data_command, "train": train_command,
            "logs": logs_command, "delete": delete_command}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  steps = parser.add_subparsers(dest="step", required=True)
  for step, help_text in (("create", "create the TPU VM or pod slice"),
                          ("install", "install cxrjax at this commit on every worker"),
                          ("data", "copy a prepared dataset from Cloud Storage to every worker"),
                          ("train", "run `cxrjax train FLAGS` on every worker (flags after --)"),
                          ("logs", "stream worker 0's training log"),
                          ("delete", "delete the TPU VM")):
    sub = steps.add_parser(step, help=help_text, description=help_text)
    sub.add_argument("--name", required=True, help="TPU VM name")
    sub.add_argument("--zone", required=True, help="e.g. us-central2-b")
    sub.add_argument("--dry-run", action="store_true", help="print the gcloud command, run nothing")
    if step == "create":
      sub.add_argument("--type", required=True, help="accelerator type, e.g. v4-8 or v4-32 (a pod slice)")
      sub.add_argument("--version", default=DEFAULT_VERSION, help="TPU VM software version")
      sub.add_argument("--spot", action="store_true", help="a preemptible (spot) VM")
    elif step == "install":
      sub.add_argument("--repo", default="", help="git URL (default: this checkout's origin)")
      sub.add_argument("--commit", default="", help="commit to check out (default: this checkout's HEAD)")
    elif step == "data":
      sub.add_argument("--source", required=True, help="gs:// folder of a prepared dataset")
      sub.add_argument("--dest", required=True, help="folder on every worker")
    elif step == "train":
      sub.add_argument("train_flags", nargs=argparse.REMAINDER, help="-- --config=... --workdir=... [overrides]")
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  command = COMMANDS[args.step](args)
  print(shlex.join(command), flush=True)
  if args.dry_run:
    return 0
  return subprocess.run(command).returncode


if __name__ == "__main__":
  sys.exit(main())
