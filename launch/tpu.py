#!/usr/bin/env python3
r"""Cloud TPU VMs for cxrjax: check that a config fits a slice, create the VM or pod slice, install the
project, copy data, train on every worker, stream worker 0's log, delete the VM. Each step prints the
command it runs; `--dry-run` prints it without running anything.

  python launch/tpu.py plan    --type=v5litepod-8 -- --config=configs/roco_git.py:tpu [--batch-size N]
  python launch/tpu.py create  --name=cxr --zone=$ZONE --type=v5litepod-8 [--spot]
  python launch/tpu.py install --name=cxr --zone=$ZONE          # this checkout's commit, every worker
  python launch/tpu.py data    --name=cxr --zone=$ZONE --source=gs://$BUCKET/data --dest=/home/$USER/data
  python launch/tpu.py train   --name=cxr --zone=$ZONE -- \
      --config=configs/iu_xray_attention.py:split=r2gen,tpu --workdir=gs://$BUCKET/iu \
      --config.data.data_dir=/home/$USER/data
  python launch/tpu.py logs    --name=cxr --zone=$ZONE          # worker 0's training log
  python launch/tpu.py delete  --name=cxr --zone=$ZONE

`plan` runs `cxrjax compile` here for the slice `create --type` would make (HBM per chip, step time; exit
status 2 when a program does not fit), before paying for it; it needs cxrjax with libtpu installed here
(`pip install -e '.[tpu-compile]'`). v4 slices cannot be planned (libtpu lists two devices per v4 chip).
`create` picks the TPU software version of the type's generation unless --version says otherwise.
`install` clones the repository (REPO: --repo, default this checkout's origin) at this checkout's commit on
every worker, installs uv (pinned, from PyPI with the system's pip: Google's TPU VM images have Python 3.10,
older than the project's requires-python), makes a venv of the project's Python with uv (a managed one is
downloaded where the image has none) and installs `jax[tpu]` and libtpu at the versions pinned in
pyproject.toml (the libtpu of its `tpu-compile` extra, which `cxrjax compile` compiles with), then cxrjax
(its pins include gcsfs and google-cloud-storage, for gs:// workdirs). Running it again updates a worker to
this commit. `train` runs the same `cxrjax train --distributed=auto` on every worker in the background
(nohup, log in ~/cxrjax_train.log): JAX's distributed runtime joins the hosts into one program over all
chips (on TPU VMs it finds the coordinator itself). All but `plan` need the gcloud CLI, authenticated, with a
default project.
"""

import argparse
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
LOG_FILE = "~/cxrjax_train.log"
UV_VERSION = "0.13.9"
# Where `install` puts uv on a worker: outside the clone, one folder per version, so that a rerun finds it.
UV_DIR = f"~/.local/share/cxrjax/uv-{UV_VERSION}"

# Accelerator type prefix -> (libtpu's name of the generation, TensorCores per chip as the type counts
# them, the TPU software version of Cloud TPU's table for JAX). v4 and v5p types count TensorCores (two per
# chip), v5litepod and v6e types count chips.
GENERATIONS = {
  "v4": ("v4", 2, "tpu-ubuntu2204-base"),
  "v5litepod": ("v5e", 1, "v2-alpha-tpuv5-lite"),
  "v5p": ("v5p", 2, "v2-alpha-tpuv5"),
  "v6e": ("v6e", 1, "v2-alpha-tpuv6e"),
}
# The slice shape an accelerator type of that many chips gets (Cloud TPU's tables of each generation):
# v5e and v6e are 2-D tori, v4 and v5p 3-D.
SHAPES_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16", 256: "16x16"}
SHAPES_3D = {
  4: "2x2x1",
  8: "2x2x2",
  16: "2x2x4",
  32: "2x4x4",
  64: "4x4x4",
  128: "4x4x8",
  256: "4x8x8",
  512: "8x8x8",
  1024: "8x8x16",
  2048: "8x16x16",
  4096: "16x16x16",
  6144: "16x16x24",
}
# libtpu describes v5e and v6e slices as hosts of 2x2 chips; Cloud TPU builds these types as one host of
# 8 chips, which `cxrjax compile --topology` cannot describe.
ONE_HOST_OF_8 = {"v5litepod-8", "v6e-8"}


class LaunchError(Exception):
  """A mistake in the flags: one line naming the flag, exit status 2."""


def pinned_jax_version(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> str:
  """The `jax==X` pin of pyproject.toml, so that the TPU workers run the JAX the project is tested with."""
  return _pin("jax", pyproject)


def pinned_libtpu_version(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> str:
  """The `libtpu==X` pin of pyproject.toml (its tpu-compile extra): the workers run the TPU compiler that
  `cxrjax compile` compiled for (jax[tpu] alone accepts any libtpu of its minor series)."""
  return _pin("libtpu", pyproject)


def python_version(pyproject: pathlib.Path = ROOT / "pyproject.toml") -> str:
  """The oldest Python of pyproject.toml's `requires-python = ">=X.Y"`: the one the workers' venv gets."""
  match = re.search(r'^requires-python\s*=\s*">=\s*([0-9]+\.[0-9]+)"', pyproject.read_text(), re.MULTILINE)
  if not match:
    raise SystemExit(f'{pyproject}: no requires-python = ">=X.Y" found')
  return match.group(1)


def _pin(package: str, pyproject: pathlib.Path) -> str:
  match = re.search(rf'"{package}==([0-9][^"]*)"', pyproject.read_text())
  if not match:
    raise SystemExit(f"{pyproject}: no {package}==VERSION pin found")
  return match.group(1)


def _generation(accelerator_type: str) -> tuple[str, int]:
  """(the type's prefix, its number); a LaunchError naming --type for a type of no generation known here."""
  match = re.fullmatch(r"(v4|v5litepod|v5p|v6e)-([0-9]+)", accelerator_type)
  if not match:
    raise LaunchError(
      f"--type={accelerator_type}: unknown accelerator type; expected v5litepod-N, v5p-N, v6e-N "
      "or v4-N (e.g. v5litepod-8)"
    )
  return match.group(1), int(match.group(2))


def software_version(accelerator_type: str) -> str:
  """The TPU VM software version Cloud TPU names for JAX on `accelerator_type`'s generation."""
  return GENERATIONS[_generation(accelerator_type)[0]][2]


def slice_shape(accelerator_type: str) -> tuple[str, str]:
  """`accelerator_type` ("v5litepod-8", "v5p-16", "v4-32", ...) -> (libtpu's generation, the slice's shape
  in chips): ("v5e", "2x4"), ("v5p", "2x2x2"), ("v4", "2x2x4"). A LaunchError naming --type otherwise."""
  prefix, number = _generation(accelerator_type)
  generation, cores_per_chip, _ = GENERATIONS[prefix]
  shapes = SHAPES_2D if generation in ("v5e", "v6e") else SHAPES_3D
  if number % cores_per_chip or number // cores_per_chip not in shapes:
    sizes = ", ".join(f"{prefix}-{chips * cores_per_chip}" for chips in shapes)
    raise LaunchError(f"--type={accelerator_type}: no slice shape known here for this size; known: {sizes}")
  return generation, shapes[number // cores_per_chip]


def plan_topology(accelerator_type: str) -> str:
  """The `cxrjax compile --topology` of the slice `create --type=accelerator_type` makes ("v5e:2x4")."""
  generation, shape = slice_shape(accelerator_type)
  if generation == "v4":
    raise LaunchError(
      f"--type={accelerator_type}: v4 slices cannot be planned (libtpu lists two devices per v4 "
      "chip, which jax.make_mesh refuses); plan the v5litepod, v5p or v6e type you would use"
    )
  if shape == "1x1":
    raise LaunchError(
      f"--type={accelerator_type}: one chip cannot be planned (libtpu describes slices of 2x2 "
      "chips and more); plan the 4-chip type"
    )
  return f"{generation}:{shape}"


def _flags_after_dashes(flags: list[str]) -> list[str]:
  return flags[1:] if flags and flags[0] == "--" else flags


def _git(*args: str) -> str:
  return subprocess.run(["git", "-C", str(ROOT), *args], check=True, capture_output=True, text=True).stdout.strip()


def _ssh(args: argparse.Namespace, command: str, worker: str = "all") -> list[str]:
  return [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "ssh",
    args.name,
    f"--zone={args.zone}",
    f"--worker={worker}",
    f"--command={command}",
  ]


def plan_command(args: argparse.Namespace) -> list[str]:
  flags = _flags_after_dashes(list(args.compile_flags))
  if not any(flag.startswith("--config=") for flag in flags):
    raise LaunchError("plan needs --config=... after `--` (the flags of cxrjax compile)")
  if any(flag.startswith("--topology") for flag in flags):
    raise LaunchError("--topology: plan compiles for the slice of --type; give --type instead")
  return ["cxrjax", "compile", f"--topology={plan_topology(args.type)}", *flags]


def create_command(args: argparse.Namespace) -> list[str]:
  default_version = software_version(args.type)  # Also refuses an unknown generation before gcloud runs.
  command = [
    "gcloud",
    "compute",
    "tpus",
    "tpu-vm",
    "create",
    args.name,
    f"--zone={args.zone}",
    f"--accelerator-type={args.type}",
    f"--version={args.version or default_version}",
  ]
  return command + (["--spot"] if args.spot else [])


def install_script(repo: str, commit: str) -> str:
  """What `install` runs on every worker (in the ssh user's home), as one line for `gcloud ... --command`.

  uv comes from PyPI through the system's pip (the python3-pip package where the image lacks it), into a
  folder of its own (`--target`: Debian-style systems refuse --user installs into their Python). `uv venv`
  finds an installed Python of the project's version or downloads a managed one; the venv is made afresh
  each time (uv installs from its cache: seconds), so that a rerun also replaces an older Python's venv."""
  uv = f"{UV_DIR}/bin/uv"
  return " && ".join(
    [
      "(python3 -m pip --version >/dev/null 2>&1 || (sudo apt-get -qq update && sudo DEBIAN_FRONTEND=noninteractive "
      "apt-get -qq -o DPkg::Lock::Timeout=600 install -y python3-pip >/dev/null))",
      f"(test -x {uv} || python3 -m pip install -q --target {UV_DIR} uv=={UV_VERSION})",
      f"(test -d cxrjax || git clone -q {shlex.quote(repo)} cxrjax)",
      "cd cxrjax",
      "git fetch -q origin",
      f"git checkout -q {shlex.quote(commit)}",
      f"{uv} venv -q --clear --python {python_version()} .venv",
      f"{uv} pip install -q --python .venv/bin/python 'jax[tpu]=={pinned_jax_version()}' "
      f"'libtpu=={pinned_libtpu_version()}' -e .",
    ]
  )


def install_command(args: argparse.Namespace) -> list[str]:
  repo = args.repo or _git("config", "--get", "remote.origin.url")
  commit = args.commit or _git("rev-parse", "HEAD")
  return _ssh(args, install_script(repo, commit))


def data_command(args: argparse.Namespace) -> list[str]:
  dest = shlex.quote(args.dest)
  return _ssh(args, f"mkdir -p {dest} && gcloud storage rsync --recursive {shlex.quote(args.source)} {dest}")


def train_command(args: argparse.Namespace) -> list[str]:
  flags = _flags_after_dashes(list(args.train_flags))
  if not any(flag.startswith("--config=") for flag in flags) or not any(
    flag.startswith("--workdir=") for flag in flags
  ):
    raise LaunchError("train needs --config=... and --workdir=... after `--`")
  train = " ".join(["cxrjax", "train", "--distributed=auto", *map(shlex.quote, flags)])
  return _ssh(args, f"cd cxrjax && . .venv/bin/activate && nohup {train} > {LOG_FILE} 2>&1 &")


def logs_command(args: argparse.Namespace) -> list[str]:
  return _ssh(args, f"tail -n +1 -f {LOG_FILE}", worker="0")


def delete_command(args: argparse.Namespace) -> list[str]:
  return ["gcloud", "compute", "tpus", "tpu-vm", "delete", args.name, f"--zone={args.zone}", "--quiet"]


COMMANDS = {
  "plan": plan_command,
  "create": create_command,
  "install": install_command,
  "data": data_command,
  "train": train_command,
  "logs": logs_command,
  "delete": delete_command,
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  steps = parser.add_subparsers(dest="step", required=True)
  for step, help_text in (
    ("plan", "compile a config here for the slice of --type: does it fit? (flags after --)"),
    ("create", "create the TPU VM or pod slice"),
    ("install", "install cxrjax at this commit on every worker"),
    ("data", "copy a prepared dataset from Cloud Storage to every worker"),
    ("train", "run `cxrjax train FLAGS` on every worker (flags after --)"),
    ("logs", "stream worker 0's training log"),
    ("delete", "delete the TPU VM"),
  ):
    sub = steps.add_parser(step, help=help_text, description=help_text)
    if step != "plan":  # plan creates nothing: no VM to name.
      sub.add_argument("--name", required=True, help="TPU VM name")
      sub.add_argument("--zone", required=True, help="e.g. us-west4-a")
    sub.add_argument("--dry-run", action="store_true", help="print the command, run nothing")
    if step in ("plan", "create"):
      sub.add_argument(
        "--type",
        required=True,
        help="accelerator type, e.g. v5litepod-8, v5p-16, v6e-8, v4-32 "
        "(v5litepod and v6e count chips, v5p and v4 TensorCores: two per chip)",
      )
    if step == "plan":
      sub.add_argument(
        "compile_flags",
        nargs=argparse.REMAINDER,
        help="-- --config=... [--batch-size N] [--program P] (cxrjax compile's flags)",
      )
    elif step == "create":
      sub.add_argument(
        "--version",
        default="",
        help="TPU VM software version (default: the one Cloud TPU names "
        "for JAX on the type's generation, e.g. v2-alpha-tpuv5-lite for v5litepod)",
      )
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


def _cxrjax() -> str | None:
  """The `cxrjax` command beside the Python running this script (its venv), else on PATH."""
  beside = pathlib.Path(sys.executable).parent / "cxrjax"
  return str(beside) if beside.is_file() else shutil.which("cxrjax")


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    command = COMMANDS[args.step](args)
    executable = _cxrjax() if args.step == "plan" and not args.dry_run else command[0]
    if executable is None:
      raise LaunchError(
        "plan runs `cxrjax compile` here, and no cxrjax is installed beside this Python or on "
        "PATH (pip install -e '.[tpu-compile]')"
      )
  except LaunchError as error:
    print(f"launch/tpu.py {args.step}: error: {error}", file=sys.stderr, flush=True)
    return 2
  print(shlex.join(command), flush=True)
  if args.dry_run:
    return 0
  if args.step == "plan" and args.type in ONE_HOST_OF_8:
    print(
      f"(a {args.type} is one host of 8 chips; libtpu describes {command[2].split('=')[1]} as 2 hosts of 4, "
      "so `serve` is compiled for 4 chips)",
      flush=True,
    )
  return subprocess.run([executable, *command[1:]]).returncode


if __name__ == "__main__":
  sys.exit(main())
