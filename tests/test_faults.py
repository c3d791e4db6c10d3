"""Runs killed with SIGKILL resume with nothing lost: training (while a checkpoint is being written, and
at a random moment), a damaged checkpoint, and `prepare` killed halfway; training stopped by SIGTERM (a
preempted TPU VM) checkpoints, exits, and resumes exactly.

The kills are real: a child process is ended by SIGKILL, either from inside at an exact moment (a
patched function of the child sends it to itself: mid-write of a checkpoint, mid-build of a dataset) or
from this process at a random time. What the child leaves on disk is then what a crash leaves.
"""

import errno
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cxrjax import cli
from cxrjax.core import files
from cxrjax.jobs import train
from cxrjax.run import workdir as workdir_lib
from cxrjax.data import iu_xray, prepare
from configs import demo
from tests.data.test_prepare import make_openi_layout

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 8
OVERRIDES = {"train.num_steps": NUM_STEPS, "train.checkpoint_every": 1, "train.eval_every": 3, "train.log_every": 1}


def _config():
  config = demo.get_config("smoke")
  for dotted, value in OVERRIDES.items():
    section, field = dotted.split(".")
    config[section][field] = value
  return config


def _train_argv(workdir) -> list[str]:
  return [
    "train",
    "--config=configs/demo.py:smoke",
    f"--workdir={workdir}",
    *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
  ]


def _child(code: str, argv: list[str]) -> subprocess.Popen:
  """`cli.main(argv)` in a new Python process after `code` (which may arm a self-kill)."""
  script = (
    "import os, signal, sys\n" + textwrap.dedent(code) + "\nfrom cxrjax import cli\nsys.exit(cli.main(sys.argv[1:]))\n"
  )
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.Popen(
    [sys.executable, "-c", script, *argv],
    cwd=REPO,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
  )


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
  """metrics.jsonl without its wall-clock fields (throughput)."""
  records = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if not k.endswith("_per_s") and k != "flops_utilisation"} for r in records]


def _state(workdir, checkpoint):
  return jax.device_get(workdir_lib.load_run(workdir, checkpoint, optimizer_state=True).state)


def _assert_same_run(straight, other):
  """Both checkpoints and every logged number equal those of the uninterrupted run."""
  for checkpoint in (workdir_lib.LATEST, workdir_lib.BEST):
    a, b = _state(straight, checkpoint), _state(other, checkpoint)
    assert int(a.step) == int(b.step)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(x, y)
  assert _metrics(straight) == _metrics(other)  # The stopped runs' extra lines are gone, none doubled.
  assert not [p for p in other.rglob("*") if ".tmp" in p.name], "temporary files left behind"


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
  """The uninterrupted run that every interrupted one must end as."""
  workdir = tmp_path_factory.mktemp("straight")
  train.train_and_evaluate(_config(), workdir)
  return workdir


def test_training_killed_at_several_moments_ends_exactly_as_an_uninterrupted_run(straight, tmp_path, capfd):
  killed = tmp_path / "killed"

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
  _assert_same_run(straight, killed)


def _fail_once(monkeypatch, step: int, error: BaseException) -> list[int]:
  """Makes the next restore of checkpoint `step` raise `error` (a read that fails once); returns the
  list of the steps whose restore failed."""
  restore, failed = ocp.CheckpointManager.restore, []

  def failing_restore(self, at_step, *args, **kwargs):
    if at_step == step and not failed:
      failed.append(at_step)
      raise error
    return restore(self, at_step, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "restore", failing_restore)
  return failed


def test_a_transient_read_error_on_the_newest_checkpoint_stops_training_and_deletes_nothing(
  straight, tmp_path, capfd, monkeypatch
):
  """An object store that times out once on a healthy newest checkpoint: `train` stops with one line
  naming it, keeps every checkpoint (before: it was skipped as damaged, then deleted, and training went
  back a step); the same command run again resumes from it."""
  copy = tmp_path / "copy"
  shutil.copytree(straight, copy)
  newest = max(_steps(copy))
  failed = _fail_once(monkeypatch, newest, TimeoutError("read of manifest.ocdbt timed out"))
  capfd.readouterr()
  assert cli.main(_train_argv(copy)) == 2
  err = capfd.readouterr().err
  assert failed == [newest] and "Traceback" not in err
  line = [line for line in err.splitlines() if line.startswith("cxrjax train: error: ")]
  assert (
    line
    and f"checkpoints/latest/{newest}: cannot be read now (TimeoutError: read of manifest.ocdbt timed out)" in line[0]
    and "nothing was skipped or deleted" in line[0]
  ), err
  assert "using the one before" not in err
  assert _steps(copy) == _steps(straight) and _steps(copy, "best") == _steps(straight, "best")
  assert cli.main(_train_argv(copy)) == 0
  assert f"resumed from {copy}/checkpoints/latest at step {newest}" in capfd.readouterr().out
  _assert_same_run(straight, copy)


def test_a_run_resumes_with_other_reader_settings(straight, tmp_path, capfd):
  """More read threads on resume change how the examples are read, not which: accepted, and the run ends
  as the uninterrupted one (a changed image size is refused naming it: tests/test_reliability.py)."""
  copy = tmp_path / "copy"
  shutil.copytree(straight, copy)
  capfd.readouterr()
  assert cli.main(_train_argv(copy) + ["--config.data.read_threads=3"]) == 0
  assert f"resumed from {copy}/checkpoints/latest at step {NUM_STEPS}" in capfd.readouterr().out
  assert json.loads((copy / "config.json").read_text())["data"]["read_threads"] == 3
  _assert_same_run(straight, copy)


def _tiny_state(step: int) -> workdir_lib.TrainState:
  return workdir_lib.TrainState(
    step=jnp.asarray(step, jnp.int32),
    params={"w": jnp.arange(256.0) * step},
    batch_stats={},
    opt_state={"m": jnp.ones(16) * step},
  )


@pytest.fixture
def tiny_checkpoints(tmp_path):
  """(manager of checkpoints/latest holding steps 1 and 2 of a tiny state, the restore target)."""
  manager = workdir_lib.checkpoint_manager(tmp_path, workdir_lib.LATEST)
  for step in (1, 2):
    workdir_lib.save(manager, _tiny_state(step), {"next_index": step}, {"step": step})
  manager.wait_until_finished()
  manager.close()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), _tiny_state(0))
  manager = workdir_lib.checkpoint_manager(tmp_path, workdir_lib.LATEST)
  yield manager, target
  manager.close()


def _cut_arrays(folder):
  for path in (folder / "state").rglob("*"):
    if path.is_file() and path.stat().st_size > 64 and "metadata" not in path.name.lower():
      path.write_bytes(path.read_bytes()[:16])


def _remove_array_data(folder):
  for path in (folder / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.unlink()


DAMAGE = {
  "array files cut short": _cut_arrays,
  "array files removed": _remove_array_data,
  "tree metadata removed": lambda folder: (folder / "state" / "_METADATA").unlink(),
  "metadata not JSON": lambda folder: (folder / "meta" / "metadata").write_text('{"step": 2, "be'),
  "metadata removed": lambda folder: (folder / "meta" / "metadata").unlink(),
  "state item removed": lambda folder: shutil.rmtree(folder / "state"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped(damage, tiny_checkpoints, tmp_path, capsys):
  manager, target = tiny_checkpoints
  DAMAGE[damage](tmp_path / "checkpoints" / "latest" / "2")
  state, data_state, meta = workdir_lib.restore_newest(manager, target)
  assert int(state.step) == 1 and data_state == {"next_index": 1} and meta == {"step": 1}
  np.testing.assert_array_equal(state.params["w"], np.arange(256.0))
  assert "latest/2: cannot be restored" in capsys.readouterr().err


@pytest.mark.parametrize(
  "error, says",
  [
    (OSError(errno.EIO, "Input/output error"), "OSError: [Errno 5] Input/output error"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "ConnectionResetError"),
    (MemoryError(), "MemoryError"),
    # As orbax reports a failed array read: a bare Exception raised from tensorstore's ValueError.
    (
      Exception("Encountered error while reading array index: (slice(0, 256, 1),)"),
      "ValueError: UNAVAILABLE: HTTP response code: 503",
    ),
  ],
)
def test_a_read_error_that_is_not_damage_is_raised_and_skips_nothing(
  error, says, tiny_checkpoints, capsys, monkeypatch
):
  manager, target = tiny_checkpoints
  if says.startswith("ValueError"):
    error.__cause__ = ValueError("UNAVAILABLE: HTTP response code: 503 with body: backend error")
  failed = _fail_once(monkeypatch, 2, error)
  with pytest.raises(workdir_lib.WorkdirError, match="nothing was skipped or deleted") as raised:
    workdir_lib.restore_newest(manager, target)
  assert failed == [2] and f"latest/2: cannot be read now ({says}" in str(raised.value)
  assert "cannot be restored" not in capsys.readouterr().err
  assert sorted(manager.all_steps()) == [1, 2]
  state, _, meta = workdir_lib.restore_newest(manager, target)  # The store answers again.
  assert int(state.step) == 2 and meta == {"step": 2}


def test_an_unexpected_error_while_restoring_is_raised_as_it_is(tiny_checkpoints, monkeypatch):
  """Neither damage nor a known read failure (e.g. a bug): raised with its traceback, nothing skipped."""
  manager, target = tiny_checkpoints
  _fail_once(monkeypatch, 2, RuntimeError("a bug"))
  with pytest.raises(RuntimeError, match="a bug"):
    workdir_lib.restore_newest(manager, target)
  assert sorted(manager.all_steps()) == [1, 2]


def test_training_stopped_by_sigterm_at_a_random_step_resumes_exactly(straight, tmp_path):
  """SIGTERM from this process at a random step: the child checkpoints at the next step boundary and
  exits with PREEMPTED_STATUS and a one-line message; the same command run again ends exactly as the
  uninterrupted run, and the SIGTERM handler it installs is put back afterwards."""
  preempted = tmp_path / "preempted"
  child = _child("", _train_argv(preempted))
  # After checkpoint `after` (the handler is installed), within the time of the rest of the run (the
  # validations at steps 3 and 6 take longer than the randomised wait).
  after = random.Random().randint(1, NUM_STEPS - 3)
  deadline = time.time() + 300
  while after not in _steps(preempted) and child.poll() is None and time.time() < deadline:
    time.sleep(0.002)
  time.sleep(random.Random().uniform(0.0, 0.05))
  child.send_signal(signal.SIGTERM)
  status, stderr = child.wait(timeout=120), child.stderr.read()
  assert status == train.PREEMPTED_STATUS, stderr
  message = stderr.strip().splitlines()[-1]
  assert message.startswith("preempted (SIGTERM): stopped after step ") and "Traceback" not in stderr
  stopped = int(message.split("after step ")[1].split()[0])
  assert after <= stopped < NUM_STEPS and max(_steps(preempted)) == stopped
  assert f"{preempted}/checkpoints/latest/{stopped} written; run the same command again to resume" in message

  handler = signal.getsignal(signal.SIGTERM)
  assert cli.main(_train_argv(preempted)) == 0
  assert signal.getsignal(signal.SIGTERM) is handler
  _assert_same_run(straight, preempted)


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
