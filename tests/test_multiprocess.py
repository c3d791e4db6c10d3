"""Training and evaluation over two processes on one machine (4 simulated CPU devices each, collectives
over gloo), compared with one process on 8 devices: the same global batches give the same parameters; a
SIGTERM to one process (a preempted host) stops both at one step with a checkpoint, and the `cxrjax train
--distributed` command resumes it with every process's own data position; evaluation scores every study
once, written by process 0. The same on a mesh that interleaves the processes as a multi-host TPU slice's
does: each prediction beside its own study, and each process reading the training rows its devices hold.
`cxrjax score --distributed` (text, CheXbert and BERTScore on real IU X-ray reports, tiny random models)
gives one process's scores, written and printed by process 0 alone."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cxrjax import evaluators
from cxrjax.jobs import evaluate, score, train
from cxrjax.core import sharding
from cxrjax.run import workdir as workdir_lib
from configs import chestxray14_agcnn, demo
from tests.core.test_sharding import SLICE_PROCESS_ORDER
from tests.jobs.test_score import (  # noqa: F401 (fixtures: pytest finds them by name)
  BERTSCORE_LAYER,
  NUM_STUDIES,
  _config as _score_config,
  _write_jsonl,
  bert_dir,
  labeler_dir,
  predictions,
  studies,
)

WORKER = pathlib.Path(__file__).with_name("multiprocess_worker.py")
CXRJAX = pathlib.Path(sys.executable).with_name("cxrjax")  # The console script of this environment.
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def _two_processes(command, status: int = 0) -> list[str]:
  """Runs command(process_id, port) as processes 0 and 1, each with 4 CPU devices, expecting exit `status`;
  their last stdout lines."""
  port = str(_free_port())
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  workers = [
    subprocess.Popen(command(index, port), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for index in (0, 1)
  ]
  lines = []
  for worker in workers:
    stdout, stderr = worker.communicate(timeout=600)
    assert worker.returncode == status, stderr[-3000:]
    lines.append(stdout.strip().splitlines()[-1] if stdout.strip() else "")
  return lines


def _config():
  config = demo.get_config("smoke")  # 4 steps of global batch 8, checkpoints at 2 and 4.
  config.data.num_test = 7  # Not a multiple of the processes, the devices or the eval batch (8).
  return config


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
  assert jax.device_count() == 8 and jax.process_count() == 1
  workdir = tmp_path_factory.mktemp("one")
  train.train_and_evaluate(_config(), workdir)
  return workdir


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
  """Preempted (SIGTERM) after a step or two; then `cxrjax train --distributed=...` resumes it to the end."""
  workdir = tmp_path_factory.mktemp("two")
  _two_processes(
    lambda index, port: [sys.executable, str(WORKER), str(index), port, str(workdir), "preempted"],
    status=train.PREEMPTED_STATUS,
  )
  manager = workdir_lib.checkpoint_manager(workdir, workdir_lib.LATEST, create=False)
  stopped = manager.latest_step()
  data = manager.restore(stopped, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data
  manager.close()
  assert 1 <= stopped < _config().train.num_steps
  _two_processes(
    lambda index, port: [
      str(CXRJAX),
      "train",
      "--config=configs/demo.py:smoke",
      f"--workdir={workdir}",
      f"--distributed=localhost:{port},2,{index}",
      "--config.data.num_test=7",
    ]
  )
  return workdir, stopped, data


def _validations(workdir):
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in records if r["split"] == "val"]


def test_two_processes_train_resume_and_end_as_one_process_on_eight_devices(one_process, two_processes):
  workdir, stopped, data = two_processes
  # Each process saved its own iterator position; both are at the stopping step's batch of the run's stream.
  assert data["process_count"] == 2 and len(data["processes"]) == 2
  assert all(state["next_index"] == stopped for state in data["processes"])
  one = workdir_lib.load_run(one_process, workdir_lib.LATEST, optimizer_state=True).state
  two = workdir_lib.load_run(workdir, workdir_lib.LATEST, optimizer_state=True).state
  assert int(one.step) == int(two.step) == 4
  # The gradients' sums run in another order (gloo's all-reduce between the processes), so values agree to
  # float rounding, except that AdamW divides by sqrt(nu): a parameter whose gradient is near zero (here one
  # batch-norm scale) can move by a fraction of the learning rate, and the batch statistics after it by
  # that fraction. The moments and the rest agree closely.
  learning_rate = _config().optimizer.learning_rate
  one, two = jax.device_get(one), jax.device_get(two)
  for name, tolerance in (
    ("params", dict(rtol=0, atol=0.1 * learning_rate)),
    ("batch_stats", dict(rtol=2e-4, atol=1e-6)),
    ("opt_state", dict(rtol=2e-4, atol=1e-7)),
  ):
    for (path, first), second in zip(
      jax.tree_util.tree_leaves_with_path(getattr(one, name)), jax.tree.leaves(getattr(two, name)), strict=True
    ):
      np.testing.assert_allclose(second, first, **tolerance, err_msg=name + jax.tree_util.keystr(path))
  differing = [float(np.max(np.abs(a - b))) for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(two.params))]
  assert sum(d > 1e-6 for d in differing) <= 2, differing  # The others agree to float rounding.
  # Validation (each process decodes its share of the split) scores the same at the same steps.
  two_scores, one_scores = _validations(workdir), _validations(one_process)
  assert [r["step"] for r in two_scores] == [r["step"] for r in one_scores] == [4]
  for name, value in one_scores[0].items():
    if isinstance(value, float):
      np.testing.assert_allclose(two_scores[0][name], value, rtol=1e-5, err_msg=name)


def test_two_processes_score_every_study_once_and_write_what_one_process_writes(two_processes):
  workdir = two_processes[0]
  evaluate.evaluate(str(workdir), "test", meteor=False, baselines_too=False)
  single = (workdir / "eval/test/predictions.jsonl").read_text()
  for name in ("predictions.jsonl", "metrics.json"):
    (workdir / "eval/test" / name).unlink()
  summaries = [
    json.loads(s)
    for s in _two_processes(
      lambda index, port: [sys.executable, str(WORKER), str(index), port, str(workdir), "evaluate"]
    )
  ]
  assert [s["process"] for s in summaries] == [0, 1] and all(s["devices"] == 8 for s in summaries)
  assert all(s["num_studies"] == 7 for s in summaries)  # Every process scores the gathered split.
  assert summaries[0]["bleu4"] == summaries[1]["bleu4"]
  assert (workdir / "eval/test/predictions.jsonl").read_text() == single
  assert len(single.splitlines()) == 7
  assert sorted(p.name for p in (workdir / "eval/test").iterdir()) == ["metrics.json", "predictions.jsonl"]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
  """A smoke AG-CNN with all three branches (the attention-guided crop too), trained in one process."""
  workdir = tmp_path_factory.mktemp("agcnn")
  config = chestxray14_agcnn.get_config("smoke,phantom,stage=3")
  config.data.num_test = 7
  # One row per device whether 1 process or 2 evaluate (8 devices either way): the same per-device program,
  # so the probabilities agree to the CSV's last digit.
  config.eval.batch_size = 4
  train.train_and_evaluate(config, workdir)
  return workdir


def _worker(job: str, workdir, order=SLICE_PROCESS_ORDER) -> list[dict]:
  layout = ",".join(str(process) for process in order)
  return [
    json.loads(line)
    for line in _two_processes(
      lambda index, port: [sys.executable, str(WORKER), str(index), port, str(workdir), job, layout]
    )
  ]


@pytest.mark.parametrize("run, predictions", [("one_process", "predictions.jsonl"), ("classifier", "predictions.csv")])
def test_a_mesh_that_interleaves_the_processes_writes_what_one_process_writes(run, predictions, request):
  # The two processes' devices alternate along 'data' as on a v5p:2x2x2 slice: each process's predictions
  # come back scattered through the gathered global arrays, not as one block after the other's.
  workdir = request.getfixturevalue(run)
  out = workdir / "eval/test"
  evaluate.evaluate(str(workdir), "test", meteor=False, baselines_too=False)
  single = (out / predictions).read_text().splitlines()
  for name in (predictions, "metrics.json"):
    (out / name).unlink()
  summaries = _worker("evaluate", workdir)
  assert all(s["devices"] == 8 and s["num_studies"] == 7 for s in summaries)
  two = (out / predictions).read_text().splitlines()
  mismatched = sum(a != b for a, b in zip(two, single))
  assert two == single, f"{mismatched} of {len(single)} lines differ:\n" + "\n".join(two)


def test_each_process_reads_the_training_rows_its_devices_hold_on_an_interleaved_mesh(tmp_path):
  summaries = _worker("batches", tmp_path)
  for process, summary in enumerate(summaries):
    assert summary["mesh_processes"] == list(SLICE_PROCESS_ORDER)
    # One row per device (the smoke config's batch of 8 over 8 devices): the rows where its devices are.
    assert summary["rows"] == [row for row, owner in enumerate(SLICE_PROCESS_ORDER) if owner == process]
    assert summary["devices_hold_their_rows"] and summary["global_batch_is_one_process_batch"], summary
    assert summary["misplaced_rows"] == 0


def test_a_checkpoint_two_processes_save_restores_in_one_process(tmp_path):
  # The trainer's save from both processes of an interleaved mesh: replica-parallel parts of a large
  # replicated array, one replica's copy of a small one, each process's rows of a split one. One process
  # on 8 devices restores every element.
  summaries = _worker("save", tmp_path)
  assert [s["saved_step"] for s in summaries] == [3, 3]
  with np.load(tmp_path / "values.npz", allow_pickle=False) as saved:
    values = dict(saved)
  replicated = sharding.replicated(sharding.create_mesh(None))
  spec = lambda shape, dtype=np.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=replicated)
  target = workdir_lib.TrainState(
    step=spec((), np.int32),
    params={"large": spec(values["large"].shape), "small": spec(values["small"].shape)},
    batch_stats={"split": spec(values["split"].shape)},
    opt_state=None,
  )
  manager = workdir_lib.checkpoint_manager(tmp_path, workdir_lib.LATEST, create=False)
  state, _, meta = workdir_lib.restore(manager, target)
  manager.close()
  assert int(state.step) == 3 and meta == {"step": 3}
  restored = {**jax.device_get(state.params), **jax.device_get(state.batch_stats)}
  for name, value in values.items():
    np.testing.assert_array_equal(restored[name], value, err_msg=name)


def test_two_processes_score_a_predictions_file_as_one_process(tmp_path, predictions, labeler_dir, bert_dir):
  ids, references, generated = predictions
  path = _write_jsonl(tmp_path / "predictions.jsonl", ids, references, generated)
  config = _score_config(labeler_dir[0], bert_dir)  # Batches of 8: one row per device.
  eight = score.score_file(str(path), config, out=str(tmp_path / "eight.json"), progress=False)
  eight = json.loads((tmp_path / "eight.json").read_text())
  assert eight["devices"] == 8
  # `python -m cxrjax.cli`, not the console script: this checkout's code, whichever one the environment installed.
  outs = [tmp_path / f"process{index}" for index in (0, 1)]
  for out in outs:
    out.mkdir()
  lines = _two_processes(
    lambda index, port: [
      sys.executable,
      "-m",
      "cxrjax.cli",
      "score",
      str(path),
      "--evaluators=text,chexbert,bertscore",
      f"--labeler={labeler_dir[0]}",
      f"--bertscore-model={bert_dir}",
      f"--bertscore-layer={BERTSCORE_LAYER}",
      "--no-meteor",
      "--batch-size=8",
      f"--out={outs[index] / 'metrics.json'}",
      f"--distributed=localhost:{port},2,{index}",
    ]
  )
  # Process 1 writes nothing, and prints no summary (its last line, if any, is gloo's).
  assert not lines[1].startswith("{") and not list(outs[1].iterdir())
  summary, two = json.loads(lines[0]), json.loads((outs[0] / "metrics.json").read_text())
  assert summary["devices"] == two["devices"] == 8 and summary["num_studies"] == NUM_STUDIES
  # The same programs on the same 8 devices, whichever process holds them: the same bits.
  assert two["scores"] == eight["scores"] and two["provenance"] == eight["provenance"]
  assert summary["scores"] == {key: eight["scores"][key] for key in summary["scores"]}
  # Without a mesh (one device, the same batches) the text and CheXbert scores are equal, BERTScore to float
  # rounding (XLA:CPU may round products of 1 row and of 8 differently).
  built = evaluators.from_config(config, mesh=None)
  alone = evaluators.run(built, evaluators.Predictions(ids, references, generated))["scores"]
  assert sorted(alone) == sorted(two["scores"])
  for key, value in alone.items():
    if key.startswith("BERTScore/"):
      assert two["scores"][key] == pytest.approx(value, rel=0, abs=1e-6), key
    else:
      assert two["scores"][key] == value, key
