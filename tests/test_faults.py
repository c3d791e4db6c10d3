"""Runs killed with SIGKILL resume with nothing lost: training (while a checkpoint is being written, and
at a random moment), a damaged checkpoint, and `prepare` killed halfway.

The kills are real: a child process is ended by SIGKILL, either from inside at an exact moment (a
patched function of the child sends it to itself: mid-write of a checkpoint, mid-build of a dataset) or
from this process at a random time. What the child leaves on disk is then what a crash leaves.
"""

import json
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from cxrjax import cli, files, train, workdir as workdir_lib
from cxrjax.data import iu_xray, prepare
from configs import demo
from tests.data.test_prepare import make_openi_layout

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 8
OVERRIDES = {"train.num_steps": NUM_STEPS, "train.checkpoint_every": 1, "train.eval_every": 3,
             "train.log_every": 1}


def _config():
  config = demo.get_config("smoke")
  for dotted, value in OVERRIDES.items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config


def _train_argv(workdir) -> list[str]:
  return ["train", "--config=configs/demo.py:smoke", f"--workdir={workdir}",
          *(f"--config.{k}={v}" for k, v in OVERRIDES.items())]


def _child(code: str, argv: list[str]) -> subprocess.Popen:
  """`cli.main(argv)` in a new Python process after `code` (which may arm a self-kill)."""
  script = "import os, signal, sys\n" + textwrap.dedent(code) + \
      "\nfrom cxrjax import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.Popen([sys.executable, "-c", script, *argv], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# The child kills itself when orbax is about to rename checkpoints/latest/<step>'s temporary folder to its
# final name: every file of the checkpoint is written, none is visible yet.
KILL_WHILE_WRITING = """
from orbax.checkpoint._src.path import atomicity
finalize = atomicity.AtomicRenameTemporaryPath.finalize
async def killing_finalize(self, *args, **kwargs):
  final = self.get_final()
  if final.parent.name == "latest" and final.name == "{step}":
    os.kill(os.getpid(), signal.SIGKILL)
  return await finalize(self, *args, **kwargs)
atomicity.AtomicRenameTemporaryPath.finalize = killing_finalize
"""


def _steps(workdir, name="latest") -> list[int]:
  folder = pathlib.Path(workdir) / "checkpoints" / name
  return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.is_dir() else []


def _metrics(workdir):
  records = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in records]


def _state(workdir, checkpoint):
  return jax.device_get(workdir_lib.load_run(workdir, checkpoint).state)


def test_training_killed_at_several_moments_ends_exactly_as_an_uninterrupted_run(tmp_path, capfd):
  straight, killed = tmp_path / "straight", tmp_path / "killed"
  train.train_and_evaluate(_config(), straight)

  # 1. Killed while checkpoint 4 is being written: its temporary folder is left, complete but unnamed.
  child = _child(KILL_WHILE_WRITING.format(step=4), _train_argv(killed))
  assert child.wait(timeout=300) == -signal.SIGKILL, child.stderr.read()
  assert _steps(killed) == [2, 3]
  assert any(".orbax-checkpoint-tmp" in p.name for p in (killed / "checkpoints" / "latest").iterdir())

  # 2. Killed at a random moment after it has checkpointed step 4 again (it resumed at 3), within the
  #    time the rest of the run takes (its first validation compiles at step 6).
  child = _child("", _train_argv(killed))
  deadline = time.time() + 300
  while 4 not in _steps(killed) and child.poll() is None and time.time() < deadline:
    time.sleep(0.002)
  time.sleep(random.Random().uniform(0.0, 0.15))
  child.send_signal(signal.SIGKILL)
  assert child.wait(timeout=60) == -signal.SIGKILL, "the run ended before the kill"
  stderr = child.stderr.read()
  assert "incomplete checkpoint" in stderr and "latest/4.orbax-checkpoint-tmp" in stderr, stderr
  reached = max(_steps(killed))
  assert 4 <= reached <= NUM_STEPS

  # 3. The newest checkpoint is then damaged (its array files cut short): it is skipped with a warning
  #    naming it, and the one before it is used.
  newest = killed / "checkpoints" / "latest" / str(reached)
  for path in newest.rglob("*"):
    if path.is_file() and "state" in path.parts and path.stat().st_size > 64:
      path.write_bytes(path.read_bytes()[:16])
  capfd.readouterr()
  assert cli.main(_train_argv(killed)) == 0
  err = capfd.readouterr().err
  assert f"{newest}: cannot be restored" in err and "using the one before" in err, err

  for checkpoint in (workdir_lib.LATEST, workdir_lib.BEST):
    a, b = _state(straight, checkpoint), _state(killed, checkpoint)
    assert int(a.step) == int(b.step)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(x, y)
  assert _metrics(straight) == _metrics(killed)  # The killed runs' extra lines are gone, none doubled.
  assert not [p for p in killed.rglob("*") if ".tmp" in p.name], "temporary files left behind"


# The child kills itself while the TFDS builder encodes the 6th image: the dataset is half written.
KILL_WHILE_PREPARING = """
from cxrjax.data import tfds_common
gray_png, calls = tfds_common.gray_png, []
def killing_gray_png(*args, **kwargs):
  calls.append(1)
  if len(calls) == 6:
    os.kill(os.getpid(), signal.SIGKILL)
  return gray_png(*args, **kwargs)
tfds_common.gray_png = killing_gray_png
"""


def _records(data_dir):
  records = {}
  for split in iu_xray.TFDS_SPLITS:
    source = iu_xray.IUXraySource(data_dir, "random", split)
    records[split] = [(source[i]["id"], source[i]["report"]) for i in range(len(source))]
  return records


def test_prepare_killed_halfway_then_run_again_builds_the_whole_dataset(tmp_path, shared_data):
  manual = make_openi_layout(shared_data / "iu_xray", tmp_path / "manual")
  data_dir = tmp_path / "data"
  argv = ["prepare", "iu_xray", "--manual-dir", str(manual), "--data-dir", str(data_dir), "--num-threads", "1"]
  child = _child(KILL_WHILE_PREPARING, argv)
  assert child.wait(timeout=300) == -signal.SIGKILL, child.stderr.read()
  dataset = iu_xray.dataset_dir(data_dir, "random")
  assert not (dataset / "dataset_info.json").exists(), "a half-built dataset looks complete"
  with pytest.raises(FileNotFoundError, match="not prepared"):
    iu_xray.IUXraySource(data_dir, "random", "train")  # Never served half built.

  assert cli.main(argv) == 0
  clean = tmp_path / "clean"
  prepare.prepare_iu_xray(manual, clean, num_threads=1)
  assert _records(data_dir) == _records(clean)
  vocabulary = iu_xray.vocabulary_path(data_dir, "random", "r2gen")
  assert vocabulary.read_text() == iu_xray.vocabulary_path(clean, "random", "r2gen").read_text()


def test_a_write_interrupted_midway_leaves_the_previous_file_whole(tmp_path):
  """files.py: what a crash mid-write leaves is the old file or the new one, never a part, and no
  temporary file."""
  path = tmp_path / "config.json"
  files.write_json(path, {"version": 1})
  with pytest.raises(RuntimeError):
    with files.open_atomic(path) as handle:
      handle.write('{"version": 2, "half')
      raise RuntimeError("killed")
  assert json.loads(path.read_text()) == {"version": 1}
  files.write_json(path, {"version": 2})
  assert json.loads(path.read_text()) == {"version": 2}
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
