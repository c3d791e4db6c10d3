"""Evaluation over two processes (each with 2 simulated CPU devices, collectives over gloo) scores every
study of the split exactly once, in order, and writes the same predictions as one process."""

import json
import pathlib
import socket
import subprocess
import sys

import pytest

from cxrjax import evaluate, train
from configs import demo

WORKER = pathlib.Path(__file__).with_name("multiprocess_worker.py")


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  config = demo.get_config("smoke")
  config.data.num_test = 7  # Not a multiple of the processes, the devices or the eval batch (8).
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(config, workdir)
  evaluate.evaluate(str(workdir), "test", meteor=False, baselines_too=False)
  single = (workdir / "eval/test/predictions.jsonl").read_text()
  (workdir / "eval/test/predictions.jsonl").unlink()
  (workdir / "eval/test/metrics.json").unlink()
  return workdir, single


def test_two_processes_score_every_study_once_and_write_what_one_process_writes(run):
  workdir, single = run
  port = str(_free_port())
  workers = [subprocess.Popen([sys.executable, str(WORKER), str(index), port, str(workdir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for index in (0, 1)]
  outputs = []
  for worker in workers:
    stdout, stderr = worker.communicate(timeout=600)
    assert worker.returncode == 0, stderr[-3000:]
    outputs.append(json.loads(stdout.strip().splitlines()[-1]))
  assert [o["process"] for o in outputs] == [0, 1] and all(o["devices"] == 4 for o in outputs)
  assert all(o["num_studies"] == 7 for o in outputs)  # Every process scores the gathered split.
  assert outputs[0]["BLEU-4"] == outputs[1]["BLEU-4"]
  assert (workdir / "eval/test/predictions.jsonl").read_text() == single
  assert len(single.splitlines()) == 7
